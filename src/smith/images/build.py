"""Build a small guest image for tests and development: a Debian kernel and a busybox + python3 initramfs.

Inputs come from Debian packages installed on this machine (``linux-image-amd64``, ``busybox-static``,
``python3``): the kernel's ``vmlinuz``, its virtio/ext4 modules, busybox, and python3 with only the standard
library modules the guest agent needs (and their shared libraries). Out come, under
``<data_dir>/images/<key>/``:

- ``vmlinuz``   the compressed kernel, as Debian ships it (QEMU boots it; with an ELF kernel: that ELF),
- ``vmlinux``   the same kernel unpacked to an ELF (Firecracker 1.16 on x86_64 boots only this; QEMU boots it
                faster too, no decompression under emulation),
- ``initrd.cpio`` the root filesystem (newc cpio, uncompressed: unpacking is faster than decompressing in TCG),
- ``manifest.json`` what went in and the key; written last, so a directory without it is an unfinished build.

``key`` is a hash of every input (file contents, the module list, the init script, the guest agent, this
builder's version), so an image is built once per machine and rebuilt when any input changes. Building takes
about a second: no debootstrap, no mount, no root needed.

The kernel may instead be an ELF ``vmlinux`` with everything built in (``smith image kernel``, images/kernel.py):
then the image holds no modules and init loads none. The guest agent goes in precompiled too (``agent.pyc``,
by the image's own python): a script's bytecode is never cached, and compiling it under emulation costs each
boot about a tenth of a second.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from smith.errors import ConfigError

BUILDER_VERSION = "2"
HERE = Path(__file__).resolve().parent
GUEST_AGENT = HERE.parent / "guest" / "agent.py"
INIT = HERE / "init.sh"
APT_PACKAGES = ("linux-image-amd64", "busybox-static", "python3", "qemu-system-x86")

# Kernel modules the guest needs, in the order they are loaded (dependencies are added before each).
MODULES = (
    "virtio_mmio",
    "virtio_console",
    "virtio-rng",
    "virtio_blk",
    "virtio_net",
    "crc32c_generic",
    "ext4",
    "vmw_vsock_virtio_transport",  # guest events over Firecracker's vsock (Debian: CONFIG_VIRTIO_VSOCKETS=m)
)
# Standard-library modules in the image besides what the guest agent imports: a few a job script may use.
PY_MODULES = (
    "encodings.utf_8",
    "encodings.latin_1",
    "encodings.ascii",
    "encodings.idna",
    "socket",
    "selectors",
    "signal",
    "base64",
    "hashlib",
    "random",
    "shutil",
    "tempfile",
    "select",
    "fcntl",
    "struct",
)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ImageInputs:
    kernel: Path
    modules_dir: Path | None  # None: an ELF kernel with everything built in
    busybox: Path
    python: Path


@dataclass(frozen=True)
class GuestImage:
    dir: Path
    key: str
    vmlinuz: Path
    vmlinux: Path
    initrd: Path
    kernel_version: str
    built: bool  # False: it came from the cache

    def as_dict(self) -> dict[str, str | bool]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def find_inputs(kernel: Path | None = None, python: Path | None = None) -> ImageInputs:
    """The installed Debian files the image is made of; a ConfigError naming the apt packages if missing."""
    missing = []
    if kernel is None:
        found = sorted(Path("/boot").glob("vmlinuz-*"), key=lambda p: _version_key(p.name[len("vmlinuz-") :]))
        kernel = found[-1] if found else None
    if kernel is None:
        missing.append("a kernel in /boot/vmlinuz-* (apt-get install linux-image-amd64)")
    elif not kernel.is_file():
        missing.append(f"the kernel {kernel} (no such file)")
    elif not os.access(kernel, os.R_OK):
        missing.append(f"{kernel} is not readable by this user")
    modules_dir: Path | None = Path("/lib/modules") / (kernel.name.removeprefix("vmlinuz-") if kernel else "")
    if kernel is not None and kernel.is_file() and os.access(kernel, os.R_OK) and is_elf(kernel):
        modules_dir = None  # everything built in (`smith image kernel`)
    if kernel is not None and modules_dir is not None and not (modules_dir / "modules.dep").is_file():
        missing.append(f"kernel modules in {modules_dir} (they come with the kernel's package)")
    busybox = static_busybox()
    if busybox is None:
        missing.append("a static busybox (apt-get install busybox-static)")
    python = python or Path("/usr/bin/python3")
    if not python.exists():
        missing.append("/usr/bin/python3 (apt-get install python3)")
    if missing:
        raise ConfigError("cannot build the guest image, missing: " + "; ".join(missing))
    assert kernel is not None and busybox is not None
    return ImageInputs(kernel=kernel, modules_dir=modules_dir, busybox=busybox, python=python.resolve())


def build_image(
    data_dir: Path,
    inputs: ImageInputs | None = None,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> GuestImage:
    """The cached image for these inputs, building it first if it is not there (or ``force``)."""
    say = progress or (lambda _msg: None)
    inputs = inputs or find_inputs()
    say("resolving inputs")
    modules = module_files(inputs.modules_dir, MODULES) if inputs.modules_dir else []
    py_files = python_files(inputs.python)
    key = image_key(inputs, modules, py_files)
    out = data_dir / "images" / key
    kernel_version = _kernel_version(inputs)
    image = GuestImage(
        dir=out,
        key=key,
        vmlinuz=out / "vmlinuz",
        vmlinux=out / "vmlinux",
        initrd=out / "initrd.cpio",
        kernel_version=kernel_version,
        built=False,
    )
    if (out / "manifest.json").exists() and not force:
        return image
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=out.parent))
    try:
        started = time.monotonic()
        say("copying the kernel")
        shutil.copyfile(inputs.kernel, tmp / "vmlinuz")
        say("unpacking vmlinux")
        raw = inputs.kernel.read_bytes()
        (tmp / "vmlinux").write_bytes(raw if raw.startswith(b"\x7fELF") else extract_vmlinux(raw))
        config = kernel_config_file(inputs)
        if config is not None:  # QEMU reads it (ACPI or not, HZ)
            shutil.copyfile(config, tmp / "config")
        say("compiling the guest agent")
        compile_agent(inputs.python, tmp / "agent.pyc")
        say(f"writing the initramfs ({len(modules)} modules, {len(py_files)} python files)")
        entries = list(rootfs_entries(inputs, modules, py_files, (tmp / "agent.pyc").read_bytes()))
        with (tmp / "initrd.cpio").open("wb") as f:
            write_cpio(f, entries)
        manifest = {
            "key": key,
            "kernel": str(inputs.kernel),
            "kernel_version": kernel_version,
            "modules": [str(m.relative_to(inputs.modules_dir)) for m in modules if inputs.modules_dir],
            "python": str(inputs.python),
            "python_files": len(py_files),
            "busybox": str(inputs.busybox),
            "initrd_bytes": (tmp / "initrd.cpio").stat().st_size,
            "build_seconds": round(time.monotonic() - started, 3),
            "builder_version": BUILDER_VERSION,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say("done")
    return GuestImage(**{**asdict(image), "built": True})


def cached_image(data_dir: Path) -> GuestImage | None:
    """The image for this machine's current inputs if it was built already, else None (builds nothing)."""
    try:
        inputs = find_inputs()
    except ConfigError:
        return None
    modules = module_files(inputs.modules_dir, MODULES) if inputs.modules_dir else []
    key = image_key(inputs, modules, python_files(inputs.python))
    out = data_dir / "images" / key
    if not (out / "manifest.json").exists():
        return None
    return GuestImage(out, key, out / "vmlinuz", out / "vmlinux", out / "initrd.cpio", _kernel_version(inputs), False)


def kernel_config_file(inputs: ImageInputs) -> Path | None:
    """The kernel's build config: ``config`` beside an ELF kernel (`smith image kernel`), Debian's
    /boot/config-<release> beside its vmlinuz."""
    if inputs.modules_dir is None:
        path = inputs.kernel.parent / "config"
    else:
        path = inputs.kernel.parent / f"config-{inputs.modules_dir.name}"
    return path if path.is_file() else None


def is_elf(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"\x7fELF"


def _kernel_version(inputs: ImageInputs) -> str:
    """Debian's release (its modules directory's name), or for an ELF kernel its build's directory name."""
    return inputs.modules_dir.name if inputs.modules_dir else f"elf-{inputs.kernel.parent.name}"


def compile_agent(python: Path, out: Path) -> None:
    """The guest agent's bytecode, compiled by the python that runs it in the guest (same magic number)."""
    code = "import py_compile, sys; py_compile.compile(sys.argv[1], cfile=sys.argv[2], doraise=True)"
    try:
        res = subprocess.run(
            [str(python), "-I", "-S", "-c", code, str(GUEST_AGENT), str(out)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"cannot run {python}: {exc}") from exc
    if res.returncode != 0:
        raise ConfigError(f"{python} cannot compile the guest agent: {res.stderr.strip()[-500:]}")


# -- inputs -------------------------------------------------------------------------------------------------


def module_files(modules_dir: Path, wanted: Iterable[str]) -> list[Path]:
    """The wanted modules' files with their dependencies first (from modules.dep), each once."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        target, _, rest = line.partition(":")
        deps[target] = rest.split()
        by_name[_mod_name(target)] = target
    order: list[str] = []

    def visit(rel: str) -> None:
        if rel in order:
            return
        for dep in reversed(deps.get(rel, [])):  # modules.dep lists the deepest dependency last
            visit(dep)
        order.append(rel)

    for name in wanted:
        rel = by_name.get(name.replace("-", "_"))
        if rel is None:  # built into this kernel, or absent: nothing to load
            continue
        visit(rel)
    return [modules_dir / rel for rel in order]


def _mod_name(rel: str) -> str:
    name = rel.rsplit("/", 1)[-1]
    name = re.sub(r"\.ko(\.(xz|zst|gz))?$", "", name)
    return name.replace("-", "_")


def guest_imports(path: Path = GUEST_AGENT) -> list[str]:
    """Every module the guest agent imports anywhere, at the top or inside a function (it imports some only
    where they are used, to start faster): the image must hold them all."""
    import ast

    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return sorted(found - {"__future__"})


def python_files(python: Path) -> list[Path]:
    """Files python needs to import PY_MODULES and every module of the guest agent in isolated mode: sources,
    their .pyc, extension modules."""
    code = (
        "import importlib, importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('smith_guest_agent', {str(GUEST_AGENT)!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        f"for m in {[*PY_MODULES, *guest_imports()]!r}: importlib.import_module(m)\n"
        "files = {getattr(m, '__file__', None) for m in list(sys.modules.values())}\n"
        "print(json.dumps(sorted(f for f in files if f)))\n"
    )
    try:
        res = subprocess.run([str(python), "-I", "-S", "-c", code], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"cannot run {python}: {exc}") from exc
    if res.returncode != 0:
        raise ConfigError(f"{python} cannot import the guest agent's modules: {res.stderr.strip()[-500:]}")
    files: set[Path] = set()
    for name in json.loads(res.stdout):
        path = Path(name)
        files.add(path)
        if path.suffix == ".py":
            pyc = path.parent / "__pycache__" / f"{path.stem}.cpython-{_py_tag(python)}.pyc"
            if pyc.exists():
                files.add(pyc)
    # The landmark python looks for to find its prefix, and encodings' package file.
    stdlib = next(p.parent for p in files if p.name == "os.py")
    files.add(stdlib / "os.py")
    return sorted(files)


def _py_tag(python: Path) -> str:
    match = re.search(r"python(\d)\.(\d+)", python.name)
    return f"{match.group(1)}{match.group(2)}" if match else "311"


def shared_libs(binaries: Iterable[Path]) -> set[Path]:
    """Every shared library (and the dynamic loader) the given ELF files load, per ldd."""
    libs: set[Path] = set()
    for binary in binaries:
        try:
            res = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConfigError(f"ldd failed on {binary}: {exc}") from exc
        for line in res.stdout.splitlines():
            match = re.search(r"(/\S+)\s+\(0x", line)
            if match:
                libs.add(Path(match.group(1)))
    return libs


def image_key(inputs: ImageInputs, modules: list[Path], py_files: list[Path]) -> str:
    h = hashlib.sha256()
    h.update(BUILDER_VERSION.encode())
    for path in (inputs.kernel, inputs.busybox, inputs.python, GUEST_AGENT, INIT, *modules):
        h.update(str(path).encode() + b"\0")
        h.update(_file_digest(path))
    for path in py_files:  # the stdlib changes with python's package, whose binary is hashed above
        h.update(str(path).encode() + b"\0")
    return h.hexdigest()[:16]


def _file_digest(path: Path) -> bytes:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").digest()


def static_busybox() -> Path | None:
    """The host's static busybox (``busybox-static``), or None."""
    return next((Path(p) for p in ("/bin/busybox", "/usr/bin/busybox") if _is_static(Path(p))), None)


def _is_static(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        res = subprocess.run(["ldd", str(path)], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "not a dynamic executable" in (res.stdout + res.stderr) or "statically linked" in res.stdout


def _version_key(version: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", version)]


# -- the kernel ------------------------------------------------------------------------------------------------


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The ELF kernel inside a bzImage: find the compressed payload by its magic and unpack it."""
    for magic, unpack in (
        (b"\xfd7zXZ\x00", _unxz),
        (b"\x1f\x8b\x08", _gunzip),
        (b"\x28\xb5\x2f\xfd", _unzstd),
    ):
        start = bzimage.find(magic)
        while start != -1:
            with contextlib.suppress(Exception):
                out = unpack(bzimage[start:])
                if out.startswith(b"\x7fELF"):
                    return out
            start = bzimage.find(magic, start + 1)
    raise ConfigError("cannot find an ELF kernel inside the bzImage (xz, gzip and zstd payloads were tried)")


def _unxz(data: bytes) -> bytes:
    return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)


def _gunzip(data: bytes) -> bytes:
    return zlib.decompressobj(wbits=31).decompress(data)


def _unzstd(data: bytes) -> bytes:
    zstd = shutil.which("zstd")
    if zstd is None:
        raise ConfigError("the kernel is zstd-compressed: apt-get install zstd")
    res = subprocess.run([zstd, "-dc"], input=data, capture_output=True, timeout=60)
    return res.stdout


# -- the root filesystem ---------------------------------------------------------------------------------------

# (path in the image, mode, content or a symlink target)
Entry = tuple[str, int, bytes | str | None]

DIR = 0o040755
FILE = 0o100644
EXEC = 0o100755
LINK = 0o120777


def rootfs_entries(
    inputs: ImageInputs, modules: list[Path], py_files: list[Path], agent_pyc: bytes | None = None
) -> Iterable[Entry]:
    """Everything in the initramfs. Debian's merged /usr: /bin, /sbin, /lib, /lib64 are links into /usr."""
    dirs = {"dev", "proc", "sys", "tmp", "run", "work", "root", "etc", "usr", "usr/bin", "usr/sbin", "usr/lib"}
    files: dict[str, tuple[int, bytes | str]] = {}
    for top in ("bin", "sbin", "lib", "lib64"):
        files[top] = (LINK, f"usr/{top}")
    files["init"] = (EXEC, INIT.read_bytes())
    files["usr/bin/busybox"] = (EXEC, inputs.busybox.read_bytes())
    files["usr/bin/sh"] = (LINK, "busybox")  # init installs the other applets; a sandbox needs sh at least
    files["smith/agent.py"] = (FILE, GUEST_AGENT.read_bytes())
    if agent_pyc is not None:  # init runs this one when it is there
        files["smith/agent.pyc"] = (FILE, agent_pyc)
    files["etc/passwd"] = (FILE, b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
    files["etc/group"] = (FILE, b"root:x:0:\nnogroup:x:65534:\n")
    files["etc/hosts"] = (FILE, b"127.0.0.1 localhost smith-guest\n")
    files["usr/bin/python3"] = (EXEC, inputs.python.read_bytes())
    for path in py_files:
        files[_in_usr(path)] = (EXEC if path.suffix == ".so" else FILE, path.read_bytes())
    elves = [inputs.python, *(p for p in py_files if p.suffix == ".so")]
    for lib in shared_libs(elves):
        files[_in_usr(lib)] = (EXEC, lib.resolve().read_bytes())
    order = []
    for mod in modules:
        assert inputs.modules_dir is not None
        rel = mod.relative_to(inputs.modules_dir)
        data = mod.read_bytes()
        if mod.suffix == ".xz":
            data, rel = lzma.decompress(data), rel.with_suffix("")
        elif mod.suffix == ".zst":
            data, rel = _unzstd(data), rel.with_suffix("")
        files[f"usr/lib/modules/{rel}"] = (FILE, data)
        order.append(str(rel))
    if order:  # none with a kernel that has everything built in
        files["usr/lib/modules/modules.order"] = (FILE, ("\n".join(order) + "\n").encode())
    for name in files:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    for d in sorted(dirs):
        yield d, DIR, None
    for name in sorted(files):
        mode, content = files[name]
        yield name, mode, content


def _in_usr(path: Path) -> str:
    rel = str(path).lstrip("/")
    top = rel.split("/", 1)[0]
    return f"usr/{rel}" if top in ("bin", "sbin", "lib", "lib64") else rel


def unpack_cpio(archive: Path, dest: Path) -> None:
    """Unpack an image's initramfs into a directory (a root for the sandbox backend)."""
    data = archive.read_bytes()
    pos = 0
    while data[pos : pos + 6] == b"070701":
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name = data[pos + 110 : pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += (-pos) % 4
        body = data[pos : pos + size]
        pos += size + (-size) % 4
        if name == "TRAILER!!!":
            return
        target = dest / name
        if mode & 0o170000 == 0o040000:
            target.mkdir(parents=True, exist_ok=True)
            target.chmod(mode & 0o7777)
        elif mode & 0o170000 == 0o120000:
            target.symlink_to(body.decode())
        else:
            target.write_bytes(body)
            target.chmod(mode & 0o7777)
    raise ConfigError(f"{archive} is not a newc cpio archive")


def write_cpio(f: object, entries: Iterable[Entry]) -> None:
    """Write a newc ("070701") cpio archive, the format the kernel unpacks as an initramfs. Owner: root."""
    write = f.write  # type: ignore[attr-defined]
    ino = 1
    for name, mode, content in [*entries, ("TRAILER!!!", 0, None)]:
        data = content.encode() if isinstance(content, str) else (content or b"")
        nlink = 2 if mode == DIR else 1
        fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0)
        header = b"070701" + b"".join(b"%08X" % v for v in fields)
        write(header + name.encode() + b"\0")
        write(b"\0" * ((-(110 + len(name) + 1)) % 4))
        write(data)
        write(b"\0" * ((-len(data)) % 4))
        ino += 1
