"""A preflight of GitHub's runner in an image's tree: will ``/opt/actions-runner`` start in a VM of this image?

Two checks, each with a clear failure (``RunnerPreflightFailed``, a ``ConfigError``):

* **Libraries resolve** (no execution, any user): every ELF file under the runner's ``bin/`` (``Runner.Listener``
  and the .NET runtime's ``*.so``) has each library it links (``DT_NEEDED``) in the image's library folders
  (``/lib``, ``/usr/lib``, their multiarch folders, ``/etc/ld.so.conf.d``), its own folder or its ``RUNPATH``.
  A runner with the .NET runtime (``bin/libcoreclr.so``) also needs what .NET opens at run time, which no ELF
  names: ICU, OpenSSL, GSSAPI (Kerberos) and zlib. Only the image's own files count, never the host's.
* **It runs**: ``bin/Runner.Listener --version`` inside the tree (bubblewrap: the tree as ``/``, no network;
  else ``chroot``), which must exit 0 and print the version the manifest records. Needs root and a runner of
  this machine's architecture; otherwise it is skipped and the result says why.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

from smith.errors import ConfigError

RUNNER_DIR = "opt/actions-runner"
LIB_DIRS = ("lib", "lib64", "usr/lib", "usr/lib64", "usr/local/lib")
# What .NET dlopens (no ELF names them), with the Debian packages that carry them.
DOTNET_OPENS = {
    "ICU (libicu72 on bookworm, libicu76 on trixie)": ("libicuuc.so.*",),
    "OpenSSL (libssl3)": ("libssl.so.3", "libssl.so.1.1"),
    "GSSAPI (libkrb5-3, libgssapi-krb5-2)": ("libgssapi_krb5.so.2",),
    "zlib (zlib1g)": ("libz.so.1",),
}
_MACHINES = {62: "x86_64", 183: "aarch64"}  # ELF e_machine


class RunnerPreflightFailed(ConfigError):
    """GitHub's runner in the image would not start."""


def preflight(tree: Path, version: str | None) -> dict[str, Any]:
    """Check the runner under ``tree``; what was checked (``{"checked": False, "why": ...}`` without a runner)."""
    bin_dir = tree / RUNNER_DIR / "bin"
    if not (bin_dir / "Runner.Listener").exists():
        return {"checked": False, "why": f"no /{RUNNER_DIR}/bin/Runner.Listener in the image"}
    missing = missing_libraries(tree, bin_dir)
    if missing:
        raise RunnerPreflightFailed(
            "GitHub's runner in the image would not start: missing " + "; ".join(missing) + " (add the packages to "
            "the image; `smith rootfs base` installs them)"
        )
    result: dict[str, Any] = {"checked": True, "libraries": "resolve"}
    why_not = _cannot_run(bin_dir / "Runner.Listener")
    if why_not:
        return {**result, "ran": False, "why": why_not}
    reported = run_version(tree)
    if version and reported != version:
        raise RunnerPreflightFailed(
            f"GitHub's runner in the image reports version {reported}, but the image records {version} "
            "(a runner tarball named for another version?)"
        )
    return {**result, "ran": True, "version": reported}


def missing_libraries(tree: Path, bin_dir: Path) -> list[str]:
    """``"<lib> (needed by bin/<file>)"`` for each library an ELF under ``bin_dir`` links and the image lacks."""
    dirs = _library_dirs(tree)
    missing: list[str] = []
    for path in sorted(bin_dir.iterdir()):
        if not path.is_file() or path.is_symlink():
            continue
        elf = read_elf(path)
        if elf is None:
            continue
        own = [path.parent, *(tree / p.replace("$ORIGIN", "/" + str(path.parent.relative_to(tree))).lstrip("/")
                              for p in elf["runpath"])]  # fmt: skip
        for name in elf["needed"]:
            if not any(os.path.lexists(d / name) for d in [*own, *dirs]):
                missing.append(f"{name} (needed by bin/{path.name})")
    if (bin_dir / "libcoreclr.so").exists():
        for what, patterns in DOTNET_OPENS.items():
            if not any(list(d.glob(p)) for d in dirs for p in patterns):
                missing.append(f"{what}, which .NET opens at run time")
    return missing


def _library_dirs(tree: Path) -> list[Path]:
    dirs = [tree / d for d in LIB_DIRS]
    for base in list(dirs):
        dirs += [p for p in base.glob("*-linux-gnu*") if p.is_dir()]
    for conf in sorted((tree / "etc/ld.so.conf.d").glob("*.conf")):
        for line in conf.read_text(errors="replace").splitlines():
            if line.strip().startswith("/"):
                dirs.append(tree / line.strip().lstrip("/"))
    return [d for d in dirs if d.is_dir()]


def read_elf(path: Path) -> dict[str, Any] | None:
    """A 64-bit little-endian ELF file's machine, ``DT_NEEDED`` and ``RUNPATH``/``RPATH``; None if not one."""
    with path.open("rb") as f:
        head = f.read(64)
        if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            return None
        data = head + f.read()
    machine = struct.unpack_from("<H", data, 18)[0]
    phoff, phentsize, phnum = struct.unpack_from("<Q", data, 32)[0], *struct.unpack_from("<HH", data, 54)
    loads, dynamic = [], None
    for i in range(phnum):
        p_type, _, p_offset, p_vaddr, _, p_filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
        if p_type == 1:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == 2:
            dynamic = (p_offset, p_filesz)
    out: dict[str, Any] = {"machine": _MACHINES.get(machine, str(machine)), "needed": [], "runpath": []}
    if dynamic is None:
        return out  # static
    entries = [struct.unpack_from("<qQ", data, dynamic[0] + i) for i in range(0, dynamic[1], 16)]
    strtab = next((v for t, v in entries if t == 5), None)
    offset = next((o + strtab - v for v, o, n in loads if strtab is not None and v <= strtab < v + n), None)
    if offset is None:
        return out

    def text(at: int) -> str:
        return data[offset + at : data.index(b"\0", offset + at)].decode(errors="replace")

    for tag, value in entries:
        if tag == 0:
            break
        if tag == 1:
            out["needed"].append(text(value))
        elif tag in (15, 29):
            out["runpath"] += [p for p in text(value).split(":") if p]
    return out


def _cannot_run(listener: Path) -> str | None:
    if os.geteuid() != 0:
        return "not run: needs root (the runner runs inside the image's tree)"
    if not (shutil.which("bwrap") or shutil.which("chroot")):
        return "not run: neither bwrap nor chroot is installed"
    elf = read_elf(listener)
    if elf is not None and elf["machine"] != platform.machine():
        return f"not run: the runner is built for {elf['machine']}, this machine is {platform.machine()}"
    return None


def run_version(tree: Path) -> str:
    """``bin/Runner.Listener --version`` inside the tree: the version it prints."""
    listener = f"/{RUNNER_DIR}/bin/Runner.Listener"
    if shutil.which("bwrap"):
        argv = ["bwrap", "--bind", str(tree), "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
                "--unshare-all", "--die-with-parent", "--chdir", f"/{RUNNER_DIR}", listener, "--version"]  # fmt: skip
    else:
        argv = ["chroot", str(tree), listener, "--version"]
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"}
    try:
        done = subprocess.run(argv, capture_output=True, env=env, timeout=120, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RunnerPreflightFailed("GitHub's runner in the image did not answer --version within 120 s") from exc
    out = (done.stdout + done.stderr).decode(errors="replace").strip()
    found = re.search(r"\b(\d+\.\d+\.\d+)\b", done.stdout.decode(errors="replace"))
    if done.returncode or found is None:
        raise RunnerPreflightFailed(
            f"GitHub's runner in the image does not start: Runner.Listener --version exited {done.returncode}: "
            f"{out[-600:] or '(no output)'}"
        )
    return found.group(1)
