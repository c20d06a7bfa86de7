"""The guest image builder: cpio format, vmlinux extraction, module order, the cache key."""

from __future__ import annotations

import io
import lzma
from pathlib import Path

import pytest

from smith.errors import ConfigError
from smith.images import build as images


def parse_cpio(data: bytes) -> dict[str, tuple[int, bytes]]:
    """A small newc reader, independent of the writer, to check what the kernel would unpack."""
    out: dict[str, tuple[int, bytes]] = {}
    pos = 0
    while True:
        assert data[pos : pos + 6] == b"070701"
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name_start = pos + 110
        name = data[name_start : name_start + namesize - 1].decode()
        pos = name_start + namesize
        pos += (-pos) % 4
        body = data[pos : pos + size]
        pos += size
        pos += (-pos) % 4
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, body)


def test_cpio_round_trip() -> None:
    buf = io.BytesIO()
    entries = [("etc", images.DIR, None), ("etc/x", images.FILE, b"hello"), ("bin", images.LINK, "usr/bin")]
    images.write_cpio(buf, entries)
    got = parse_cpio(buf.getvalue())
    assert got["etc/x"] == (images.FILE, b"hello")
    assert got["bin"] == (images.LINK, b"usr/bin") and got["etc"][0] == images.DIR
    assert len(buf.getvalue()) % 4 == 0


def test_vmlinux_is_found_inside_a_bzimage() -> None:
    elf = b"\x7fELF" + b"kernel" * 1000
    bz = b"MZ" + b"\0" * 500 + b"\xfd7zXZ\x00 not a real stream" + lzma.compress(elf) + b"trailer"
    assert images.extract_vmlinux(bz) == elf
    with pytest.raises(ConfigError, match="cannot find an ELF kernel"):
        images.extract_vmlinux(b"MZ" + b"\0" * 100)


def test_modules_come_after_their_dependencies(tmp_path: Path) -> None:
    (tmp_path / "modules.dep").write_text(
        "kernel/a/virtio_mmio.ko: kernel/a/virtio.ko kernel/a/virtio_ring.ko\n"
        "kernel/a/virtio.ko: kernel/a/virtio_ring.ko\n"
        "kernel/a/virtio_ring.ko:\n"
        "kernel/b/virtio-rng.ko: kernel/a/virtio.ko kernel/a/virtio_ring.ko\n"
    )
    files = images.module_files(tmp_path, ["virtio_mmio", "virtio-rng", "not_there"])
    names = [p.name for p in files]
    assert names == ["virtio_ring.ko", "virtio.ko", "virtio_mmio.ko", "virtio-rng.ko"]


def test_missing_inputs_name_the_packages(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no such file"):
        images.find_inputs(kernel=tmp_path / "vmlinuz-none")


def test_real_image_is_built_once_and_cached(tmp_path: Path) -> None:
    try:
        inputs = images.find_inputs()
    except ConfigError as exc:
        pytest.skip(f"no image inputs here: {exc.message}")
    first = images.build_image(tmp_path, inputs)
    second = images.build_image(tmp_path, inputs)
    assert first.built and not second.built and first.key == second.key
    assert first.vmlinux.read_bytes()[:4] == b"\x7fELF"
    files = parse_cpio(first.initrd.read_bytes())
    assert files["init"][0] == images.EXEC and b"/smith/agent.py" in files["init"][1]
    assert "smith/agent.py" in files and "usr/bin/python3" in files and "usr/bin/busybox" in files
    order = files["usr/lib/modules/modules.order"][1].decode().split()
    assert order.index("kernel/drivers/virtio/virtio.ko") < order.index("kernel/drivers/virtio/virtio_mmio.ko")
    vsock = [m for m in order if "/vmw_vsock/" in m]  # guest events over Firecracker's vsock: the modules, in order
    if vsock:  # a kernel with vsock built in has none to load
        assert [m.rsplit("/", 1)[1].split(".ko")[0] for m in vsock] == [
            "vsock",
            "vmw_vsock_virtio_transport_common",
            "vmw_vsock_virtio_transport",
        ]
    assert images.cached_image(tmp_path) == second


def test_the_image_holds_nothing_of_the_hosts_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The builder copies from the host (busybox, python and its stdlib, modules): nothing else may come along,
    not the host's accounts, keys or the agent's settings, not even when they are in the builder's environment;
    the guest has no password and no ssh."""
    try:
        inputs = images.find_inputs()
    except ConfigError as exc:
        pytest.skip(f"no image inputs here: {exc.message}")
    secret = "smith-image-secret-7f3a9c"
    for name in ("SMITH_JWT_SECRET", "SMITH_AGENT_TOKEN", "PYTHONPATH", "PYTHONSTARTUP"):
        monkeypatch.setenv(name, secret)
    files = parse_cpio(images.build_image(tmp_path, inputs).initrd.read_bytes())
    assert not [name for name, (_, body) in files.items() if secret.encode() in body]
    etc = {name for name in files if name.startswith("etc/")}
    assert etc == {"etc/passwd", "etc/group", "etc/hosts"}
    words = ("ssh", "shadow", ".env", "site-packages", "dist-packages", "smith/settings", "smith/agent/")
    assert not [name for name in files if any(w in name.lower() for w in words)]
    for row in files["etc/passwd"][1].decode().splitlines():
        assert row.split(":")[1] in ("x", "*", "!"), row  # no password hash; no shadow file to hold one
    assert not [name for name in files if name.startswith(("root/", "home/"))]


def test_the_image_holds_every_module_the_guest_agent_imports_even_inside_functions() -> None:
    """The guest agent imports some modules only where it uses them (a faster start); the image must still hold
    them, or a job that needs one (the cache's hosts entry, a steps-mode archive, MMDS) crashes the agent."""
    import shutil as sh
    import sys

    from smith.images.build import guest_imports, python_files

    assert {"urllib.parse", "urllib.request", "tarfile", "base64"} <= set(guest_imports())
    python = Path(sh.which("python3") or sys.executable)
    names = {(p.parent.name, p.name) for p in python_files(python)}
    assert ("urllib", "parse.py") in names and ("", "tarfile.py") not in names
    assert any(n == "tarfile.py" for _, n in names)


def test_an_elf_kernel_with_everything_built_in_gets_no_modules(tmp_path: Path) -> None:
    """`smith image kernel`'s vmlinux: booted as is (no bzImage to unpack), and the image has no modules, so
    init loads none (init.sh skips the loop when there is no modules.order)."""
    try:
        debian = images.find_inputs()
    except ConfigError as exc:
        pytest.skip(f"no image inputs here: {exc.message}")
    vmlinux = tmp_path / "k1" / "vmlinux"
    vmlinux.parent.mkdir()
    vmlinux.write_bytes(b"\x7fELF" + b"\0" * 60 + b"smith kernel")
    (vmlinux.parent / "config").write_text("# CONFIG_ACPI is not set\n")  # QEMU reads it beside the image's vmlinux
    inputs = images.find_inputs(kernel=vmlinux)
    assert inputs.modules_dir is None and inputs.busybox == debian.busybox
    image = images.build_image(tmp_path / "data", inputs)
    assert image.vmlinux.read_bytes() == vmlinux.read_bytes() and image.kernel_version == "elf-k1"
    assert (image.dir / "config").read_text() == (vmlinux.parent / "config").read_text()
    files = parse_cpio(image.initrd.read_bytes())
    assert not [name for name in files if name.startswith("usr/lib/modules/")]
    assert b"[ -s /lib/modules/modules.order ] &&" in files["init"][1]
    assert image.key != images.build_image(tmp_path / "data", debian).key


def test_the_image_holds_the_guest_agent_precompiled_and_init_runs_it(tmp_path: Path) -> None:
    """Python never caches a script's bytecode: the agent goes in compiled by the image's python, and that
    bytecode runs (same magic number); init prefers it to the source."""
    import subprocess

    try:
        inputs = images.find_inputs()
    except ConfigError as exc:
        pytest.skip(f"no image inputs here: {exc.message}")
    files = parse_cpio(images.build_image(tmp_path, inputs).initrd.read_bytes())
    pyc = tmp_path / "agent.pyc"
    pyc.write_bytes(files["smith/agent.pyc"][1])
    res = subprocess.run([str(inputs.python), "-I", "-S", str(pyc), "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "--config-port" in res.stdout, res.stderr
    assert b"[ -f /smith/agent.pyc ] && agent_py=/smith/agent.pyc" in files["init"][1]


def test_the_guest_agent_starts_without_importing_what_only_some_jobs_need(tmp_path: Path) -> None:
    """Under emulation every import costs each VM's boot (QEMU translates the C code it runs), and an import after a
    restore from a snapshot delays the job's first line: socket, urllib.parse, shutil and typing are imported only
    where a job uses them (typing never), argparse not at all. A script job without a cache runs without them, in a
    VM's mode (--set-hosts)."""
    import json
    import subprocess
    import sys

    config = {"job": {"id": "j1", "run": "echo hi"}}
    vm_mode = ["--set-hosts", "--hosts-file", str(tmp_path / "hosts")]
    res = subprocess.run(
        [sys.executable, "-I", "-S", "-X", "importtime", str(images.GUEST_AGENT), "--workdir", str(tmp_path), *vm_mode],
        input=json.dumps(config) + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0 and '"hi"' in res.stdout, res.stderr[-2000:]
    loaded = {line.rsplit("|", 1)[-1].strip() for line in res.stderr.splitlines() if line.startswith("import time:")}
    assert "json" in loaded and "subprocess" in loaded  # the import list was read
    unneeded = {"socket", "typing", "urllib.parse", "argparse", "shutil"}  # argparse: the agent parses by hand
    assert not loaded & unneeded, loaded & unneeded


def test_the_image_keeps_its_kernels_config_so_qemu_knows_whether_it_has_acpi(tmp_path: Path) -> None:
    """Debian's kernel finds microvm's virtio devices through ACPI (its virtio_mmio module takes no device=
    parameter): its image keeps /boot/config-<release>, and QEMU leaves ACPI on for it."""
    from smith.adapters.qemu import machine_for

    try:
        inputs = images.find_inputs()
    except ConfigError as exc:
        pytest.skip(f"no image inputs here: {exc.message}")
    assert inputs.modules_dir is not None
    if not (inputs.kernel.parent / f"config-{inputs.modules_dir.name}").is_file():
        pytest.skip("no /boot/config-<release> for this kernel")
    image = images.build_image(tmp_path, inputs)
    assert "\nCONFIG_ACPI=y" in (image.dir / "config").read_text()
    assert "acpi=off" not in machine_for(image.vmlinux)
