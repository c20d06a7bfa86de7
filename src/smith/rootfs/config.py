"""The ``rootfs.yaml`` a platform team keeps: where versions go, which one is the default, what each is made of.

::

    rootfs:
      output_dir: /var/lib/smith/rootfs     # relative paths are relative to this file
    default_version: ci-2026-12
    versions:
      - name: ci-2026-12
        description: bookworm + runner 2.321.0
        base_url: https://images.example.com/bookworm-ci.ext4   # or base_path: ./bookworm-ci.tar.zst
        sha256: 3b1f...                                         # of the base as downloaded
        overlay_dir: overlays/ci                                # copied over the base (optional)
        kernel: /boot/vmlinux-ci                                # optional: this version's own kernel
        size: 4G                                                # optional: grow the ext4 filesystem to this

    base:                                   # optional: what `smith rootfs base` builds
      suite: bookworm
      mirror: http://deb.debian.org/debian
      profile: minimal                      # or docker (build-essential, docker.io)
      runner: {path: actions-runner-linux-x64-2.321.0.tar.gz, sha256: 0f3c...}   # or url:
      output: bases/bookworm.ext4           # default <output_dir>/bases/<suite>-<profile>.ext4

A base is an ext4 image or a tar archive (``.tar``, ``.tar.gz``, ``.tar.xz``, ``.tar.zst``) of a root tree.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from smith.errors import ConfigError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_UNITS = {"": 1 << 20, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str | int) -> int:
    """Bytes in ``512M``, ``2G``, ``2GiB`` or a bare number of MiB."""
    if isinstance(text, int):
        return text << 20
    match = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)(i?b)?\s*", text.lower())
    if not match:
        raise ValueError(f"not a size: {text!r} (write 512M, 2G, or a number of MiB)")
    return int(match.group(1)) * _UNITS[match.group(2)]


class Version(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    base_url: str | None = None
    base_path: Path | None = None
    sha256: str
    overlay_dir: Path | None = None
    kernel: Path | None = None
    size: str | int | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME.match(value):
            raise ValueError("a version name is letters, digits, '.', '_' or '-' (at most 64), e.g. ci-2026-12")
        return value

    @field_validator("sha256")
    @classmethod
    def _sha(cls, value: str) -> str:
        value = value.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{64}", value):
            raise ValueError("sha256 is 64 hex digits (sha256sum's output)")
        return value

    @field_validator("size")
    @classmethod
    def _size(cls, value: str | int | None) -> str | int | None:
        if value is not None:
            parse_size(value)
        return value

    @model_validator(mode="after")
    def _one_base(self) -> Version:
        if (self.base_url is None) == (self.base_path is None):
            raise ValueError("give exactly one of base_url and base_path")
        return self

    @property
    def size_bytes(self) -> int | None:
        return None if self.size is None else parse_size(self.size)


JOB_PACKAGES = (
    "bash", "coreutils", "git", "curl", "ca-certificates", "python3", "nodejs", "tar", "zstd", "gzip", "sudo",
    "iproute2", "procps",
)  # fmt: skip
# What the runner (.NET) loads, by suite: the ICU and OpenSSL packages are renamed between releases.
RUNNER_PACKAGES = {
    "bookworm": ("libicu72", "libssl3", "libkrb5-3", "zlib1g", "liblttng-ust1"),
    "trixie": ("libicu76", "libssl3t64", "libkrb5-3", "zlib1g", "liblttng-ust1t64"),
}
PROFILES: dict[str, tuple[str, ...]] = {"minimal": (), "docker": ("build-essential", "docker.io")}


class RunnerTarball(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str | None = None
    path: Path | None = None
    sha256: str
    version: str | None = None  # default: from the file name (actions-runner-linux-x64-2.321.0.tar.gz)

    @model_validator(mode="after")
    def _one(self) -> RunnerTarball:
        if (self.url is None) == (self.path is None):
            raise ValueError("give exactly one of url and path for the runner tarball")
        if not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ValueError("the runner tarball's sha256 is 64 hex digits")
        return self

    @property
    def source(self) -> str | Path:
        return self.url or self.path or ""

    def runner_version(self) -> str:
        if self.version:
            return self.version
        match = re.search(r"(\d+\.\d+\.\d+)", Path(str(self.source)).name)
        return match.group(1) if match else "unknown"


class BaseSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    suite: str = "bookworm"
    mirror: str = "http://deb.debian.org/debian"
    profile: str = "minimal"
    runner: RunnerTarball | None = None
    output: Path | None = None  # default: <output_dir>/bases/<suite>-<profile>.ext4
    size: str | None = None

    @model_validator(mode="after")
    def _known(self) -> BaseSpec:
        if self.profile not in PROFILES:
            raise ValueError(f"profile is one of {', '.join(PROFILES)}")
        if self.suite not in RUNNER_PACKAGES:
            raise ValueError(
                f"suite is one of {', '.join(RUNNER_PACKAGES)} (the runner's libraries are named per suite)"
            )
        return self

    def packages(self) -> list[str]:
        runner = RUNNER_PACKAGES[self.suite] if self.runner else ()
        return sorted({*JOB_PACKAGES, *PROFILES[self.profile], *runner})


class Output(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    output_dir: Path


class RootfsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rootfs: Output
    default_version: str | None = None
    versions: list[Version] = Field(default_factory=list)
    base: BaseSpec | None = None  # `smith rootfs base`

    @model_validator(mode="after")
    def _names(self) -> RootfsConfig:
        names = [v.name for v in self.versions]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"version names must be unique: {', '.join(sorted(dup))}")
        if self.default_version is not None and self.default_version not in names:
            raise ValueError(f"default_version {self.default_version!r} is not among the versions")
        return self

    @property
    def output_dir(self) -> Path:
        return self.rootfs.output_dir

    def version(self, name: str) -> Version:
        for v in self.versions:
            if v.name == name:
                return v
        known = ", ".join(v.name for v in self.versions) or "none"
        raise ConfigError(f"no version {name!r} in the config (known: {known})")


def load(path: Path) -> RootfsConfig:
    """The config in ``path``, its relative paths made relative to the file's folder; ConfigError if invalid."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    try:
        config = RootfsConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{path}: {where}: {first['msg']}") from exc
    here = path.resolve().parent

    def rel(p: Path | None) -> Path | None:
        return None if p is None else (p if p.is_absolute() else here / p)

    base = config.base
    if base is not None:
        runner = base.runner
        if runner is not None and runner.path is not None:
            runner = runner.model_copy(update={"path": rel(runner.path)})
        base = base.model_copy(update={"output": rel(base.output), "runner": runner})
    versions = [
        v.model_copy(update={"base_path": rel(v.base_path), "overlay_dir": rel(v.overlay_dir), "kernel": rel(v.kernel)})
        for v in config.versions
    ]
    out = Output(output_dir=rel(config.output_dir) or here)
    return config.model_copy(update={"rootfs": out, "versions": versions, "base": base})
