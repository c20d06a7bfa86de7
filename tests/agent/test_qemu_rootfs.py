"""A rootfs version built from a rootfs.yaml and booted under QEMU: root disk + per-VM qcow2 layer + scratch.

The base is made here from this machine's git, node, python3 and dash with their libraries (no network). Needs
qemu-system-x86_64, qemu-img, e2fsprogs and the initramfs inputs (linux-image-amd64, busybox-static).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from smith.adapters.qemu import QemuConfig, QemuVMM
from smith.cli import app
from smith.domain.vms import VMShape
from smith.images.build import GuestImage, python_files, shared_libs
from smith.rootfs import store
from smith.wire.agent import JobSpec
from smith.wire.guest import GuestConfig, GuestEvent
from tests.agent.test_qemu import image  # noqa: F401  (the module-scoped guest image fixture)
from tests.rootfs.support import sha256, write_config

TOOLS = ("qemu-system-x86_64", "qemu-img", "debugfs", "mkfs.ext4", "git", "node", "dash", "od")
pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(
        any(shutil.which(t) is None for t in TOOLS),
        reason=f"needs {', '.join(TOOLS)} (qemu-system-x86, qemu-utils, e2fsprogs, git, nodejs, dash)",
    ),
]
SHAPE = VMShape("rootfs-test", 1, 512, disk_mib=300)


def host_base(root: Path) -> Path:
    """A tiny root tree: merged /usr with git, node, python3 (the guest agent's stdlib), sh; their libraries."""
    for top in ("bin", "lib", "lib64", "sbin"):
        (root / "usr" / top).mkdir(parents=True, exist_ok=True)
        (root / top).symlink_to(f"usr/{top}")
    for d in ("etc", "tmp", "work", "root", "dev", "proc", "sys", "run"):
        (root / d).mkdir(exist_ok=True)
    (root / "tmp").chmod(0o1777)
    python = Path(shutil.which("python3") or "python3").resolve()
    binaries = [Path(shutil.which(t) or t).resolve() for t in ("git", "node", "dash", "cat", "head", "od")] + [python]
    for binary in binaries:
        shutil.copy2(binary, root / "usr/bin" / binary.name)
    (root / "usr/bin/python3").symlink_to(python.name)
    (root / "usr/bin/sh").symlink_to("dash")
    py = python_files(python)
    for path in [*shared_libs([*binaries, *(p for p in py if p.suffix == ".so")]), *py]:
        dest = root / str(path).lstrip("/")
        if dest.parts[len(root.parts)] in ("lib", "lib64", "bin"):
            dest = root / "usr" / str(path).lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path.resolve(), dest)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    return root


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the rootfs.yaml, its output_dir) with versions v1 and v2 built; v1 active."""
    top = tmp_path_factory.mktemp("rootfs")
    tree = host_base(top / "tree")
    base = top / "base.tar"
    subprocess.run(["tar", "-C", str(tree), "-cf", str(base), "."], check=True)
    versions = []
    for name in ("v1", "v2"):
        (top / name / "etc").mkdir(parents=True)
        (top / name / "etc" / "smith-version").write_text(f"{name}\n")
        versions.append({"name": name, "base_path": str(base), "sha256": sha256(base), "overlay_dir": name})
    cfg = write_config(top / "rootfs.yaml", top / "out", versions, default="v1")
    result = CliRunner().invoke(app, ["rootfs", "build", "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    return cfg, top / "out"


@pytest.fixture
def base_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sr", dir="/tmp"))  # short: Unix socket paths must fit
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def vmm(image: GuestImage, rootfs: tuple[Path, Path], base_dir: Path) -> QemuVMM:  # noqa: F811
    """QEMU VMs booting the active version of the test's rootfs."""
    return QemuVMM(base_dir, QemuConfig(kernel=image.vmlinux, initrd=image.initrd, accel="tcg", rootfs_dir=rootfs[1]))


def job(run: str) -> GuestConfig:
    return GuestConfig(job=JobSpec(id="r1", runner_class="rootfs-test", vcpus=1, memory_mib=512, run=run))


async def output(machine: object) -> tuple[list[str], int | None]:
    events: list[GuestEvent] = [e async for e in machine.events()]  # type: ignore[attr-defined]
    lines = [e.line for e in events if e.type == "line" and e.stream in ("stdout", "stderr")]
    exits = [e.exit_code for e in events if e.type == "exit"]
    return lines, exits[0] if exits else None


SCRIPT = """
cat /etc/smith-version
git init -q --template= repo && cd repo && echo hello > f && git add f
git -c user.name=smith -c user.email=smith@example.com commit -qm first
git log --format=%s
node -e 'console.log("node says", 6 * 7)'
python3 -c 'import os; s = os.statvfs("/work"); print("work MiB", s.f_blocks * s.f_frsize >> 20)'
echo scribble > /usr/bin/git
"""


@pytest.mark.slow
async def test_a_built_rootfs_boots_runs_git_and_node_and_activation_spares_running_vms(
    vmm: QemuVMM, rootfs: tuple[Path, Path], base_dir: Path
) -> None:
    cfg, out = rootfs
    store.activate(out, "v1")
    first = await vmm.boot(SHAPE, "a")
    try:
        assert first.image == "v1"
        # Activated while `first` runs: the next VM boots v2, `first` keeps v1.
        result = CliRunner().invoke(app, ["rootfs", "activate", "--config", str(cfg), "v2"])
        assert result.exit_code == 0, result.output
        second = await vmm.boot(SHAPE, "b")
        try:
            assert second.image == "v2"
            await first.assign(job(SCRIPT))
            await second.assign(job("cat /etc/smith-version; cat /usr/bin/git | head -c 4 | od -c | head -1"))
            (lines1, code1), (lines2, code2) = await asyncio.gather(output(first), output(second))
        finally:
            await second.stop()
    finally:
        await first.stop()
    assert code1 == 0, lines1
    assert lines1[:4] == ["v1", "first", "node says 42", lines1[3]]
    assert 270 <= int(lines1[3].split()[-1]) <= 300  # the scratch disk of the shape's disk_mib is /work
    assert code2 == 0 and lines2[0] == "v2", lines2
    assert "E   L   F" in lines2[1]  # first's write to /usr/bin/git stayed in its own layer
    # The shared images were never written, and nothing of either VM is left.
    for name in ("v1", "v2"):
        built = store.built(out, name)
        assert built is not None and sha256(built.rootfs) == built.manifest["rootfs"]["sha256"]
    assert not list(base_dir.glob("qemu-*"))


def test_the_manifest_records_what_went_in(rootfs: tuple[Path, Path]) -> None:
    _, out = rootfs
    manifest = json.loads((out / "versions" / "v1" / "manifest.json").read_text())
    assert manifest["base"]["format"] == "tar" and manifest["inputs"]["overlay_sha256"]
    assert set(manifest["inputs"]["guest"]) == {"agent.py", "init", "busybox"}


@pytest.mark.slow
async def test_vms_with_disks_restore_from_a_template_of_the_active_version(
    vmm: QemuVMM, rootfs: tuple[Path, Path], base_dir: Path
) -> None:
    _, out = rootfs
    store.activate(out, "v1")
    snapshot = await vmm.prepare_snapshot(SHAPE)
    assert snapshot.rootfs == "v1" and set(snapshot.layers) == {"smith-root", "smith-scratch"}
    machines = [await vmm.boot(SHAPE, f"r{i}") for i in range(2)]
    try:
        assert [m.restored for m in machines] == [True, True]
        for m in machines:
            await m.assign(job("cat /etc/smith-version; test ! -e /work/f; echo mine > /work/f; cat /work/f"))
        results = await asyncio.gather(*(output(m) for m in machines))
    finally:
        for m in machines:
            await m.stop()
    for lines, code in results:  # each restored VM has its own root and scratch layers
        assert code == 0 and lines[:2] == ["v1", "mine"], lines
    # Another version activated: the template is not used for it, VMs boot cold from the new one, and a
    # template of the new version is started in the background.
    store.activate(out, "v2")
    machine = await vmm.boot(SHAPE, "after")
    try:
        assert not machine.restored and machine.image == "v2"
        key = (SHAPE.vcpus, SHAPE.memory_mib)
        assert key in vmm._refreshing or vmm.snapshots[key].rootfs == "v2"  # started (or, racing us, done)
    finally:
        await machine.stop()
        await vmm.close()
    assert not vmm._refreshing and not list(base_dir.glob("qemu-*"))
    assert sha256(store.built(out, "v1").rootfs) == store.built(out, "v1").manifest["rootfs"]["sha256"]  # type: ignore[union-attr]
