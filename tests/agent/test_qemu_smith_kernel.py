"""Smith's own guest kernel (`smith image kernel`: everything built in, no ACPI, no modules) boots the image
under QEMU and runs a job: init loads no module, the virtio devices come from the command line (acpi=off).

Building the kernel takes minutes, so this runs only where `smith image kernel` built one in the default data
dir (~/.local/share/smith, or $XDG_DATA_HOME/smith; read only); skips otherwise.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from smith.adapters.qemu import QemuConfig, QemuVMM
from smith.domain.vms import VMShape
from smith.errors import ConfigError
from smith.images.build import build_image, find_inputs
from smith.images.kernel import current_kernel
from smith.settings import default_data_dir
from smith.wire.agent import JobSpec
from smith.wire.guest import GuestConfig

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="no qemu-system-x86_64 (qemu-system-x86)"),
]


@pytest.fixture
def base_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sk", dir="/tmp"))  # short: Unix socket paths must fit
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
async def test_smiths_kernel_boots_the_image_and_runs_a_job_with_no_modules(base_dir: Path) -> None:
    kernel = current_kernel(default_data_dir())
    if kernel is None:
        pytest.skip("no Smith kernel built in the default data dir (`smith image kernel`)")
    try:
        image = build_image(base_dir / "data", find_inputs(kernel=kernel.vmlinux))
    except ConfigError as exc:
        pytest.skip(f"cannot build a guest image here: {exc.message}")
    vmm = QemuVMM(base_dir / "q", QemuConfig(kernel=image.vmlinux, initrd=image.initrd, accel="tcg"))
    machine = await vmm.boot(VMShape("k", 1, 256), "k1")
    try:
        run = "cat /proc/modules 2>/dev/null | wc -l; ls /dev/virtio-ports; ls /dev/hwrng"
        await machine.assign(GuestConfig(job=JobSpec(id="k1", runner_class="k", vcpus=1, memory_mib=256, run=run)))
        events = [e async for e in machine.events()]
        argv = (machine.dir / "cmdline").read_text()
    finally:
        await machine.stop()
    out = [e.line for e in events if e.type == "line" and e.stream == "stdout"]
    assert events[-1].type == "exit" and events[-1].exit_code == 0, events
    assert out[0].strip() == "0"  # no module loaded (the kernel has no module support)
    assert "smith.config" in out and "smith.events" in out and "/dev/hwrng" in out
    assert "acpi=off" in argv and "virtio_mmio" not in argv  # QEMU adds the devices to the kernel's command line
