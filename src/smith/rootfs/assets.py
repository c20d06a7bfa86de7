"""``smith assets fetch DIR``: kernel and rootfs files for Firecracker, from a URL list with checksums, or the
kernel from this machine's Debian ``linux-image-amd64`` (offline: unpacked to the ELF ``vmlinux`` Firecracker
boots, as ``smith image build`` does).

The list is YAML::

    assets:
      - {name: vmlinux, url: https://example.com/vmlinux-6.1, sha256: 5e1f...}
      - {name: rootfs.ext4, url: https://example.com/bookworm.ext4, sha256: 77aa...}

Each file is downloaded (resumable, retried) and verified before it gets its name in DIR; ``assets.json`` in
DIR records what is there, where from, and each sha256.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from smith.errors import ConfigError
from smith.rootfs.fetch import OnBytes, fetch, sha256_file


class Asset(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    url: str
    sha256: str

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", value):
            raise ValueError("an asset name is a plain file name")
        return value

    @field_validator("sha256")
    @classmethod
    def _sha(cls, value: str) -> str:
        if not re.fullmatch(r"[0-9a-f]{64}", value.lower()):
            raise ValueError("sha256 is 64 hex digits")
        return value.lower()


class AssetList(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    assets: list[Asset]


def load_list(path: Path) -> list[Asset]:
    try:
        return AssetList.model_validate(yaml.safe_load(path.read_text())).assets
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except (yaml.YAMLError, ValidationError) as exc:
        raise ConfigError(f"{path}: not an asset list ({str(exc).splitlines()[0]})") from exc


def fetch_assets(assets: list[Asset], dest: Path, on_bytes: OnBytes | None = None) -> dict[str, dict[str, str]]:
    dest.mkdir(parents=True, exist_ok=True)
    done = {}
    for asset in assets:
        fetch(asset.url, dest / asset.name, asset.sha256, on_bytes=on_bytes)
        done[asset.name] = {"source": asset.url, "sha256": asset.sha256}
    _record(dest, done)
    return done


def debian_kernel(dest: Path, kernel: Path | None = None) -> dict[str, dict[str, str]]:
    """``vmlinux`` (and ``vmlinuz``) from the installed Debian kernel: no network."""
    from smith.images.build import extract_vmlinux, find_inputs

    inputs = find_inputs(kernel=kernel)
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / ".vmlinux.partial"
    tmp.write_bytes(extract_vmlinux(inputs.kernel.read_bytes()))
    tmp.replace(dest / "vmlinux")
    done = {"vmlinux": {"source": f"{inputs.kernel} (unpacked)", "sha256": sha256_file(dest / "vmlinux")}}
    _record(dest, done)
    return done


def _record(dest: Path, done: dict[str, dict[str, str]]) -> None:
    path = dest / "assets.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    known.update(done)
    tmp = path.with_suffix(".partial")
    tmp.write_text(json.dumps(known, indent=2) + "\n")
    tmp.replace(path)
