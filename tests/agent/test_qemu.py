"""The QEMU microvm backend with a real guest under software emulation (one cold boot and one template here).

Needs qemu-system-x86_64 and the image inputs (linux-image-amd64, busybox-static, python3); skips otherwise.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from smith.adapters.qemu import QemuConfig, QemuVMM
from smith.domain.vms import VMShape
from smith.errors import ConfigError, VMError
from smith.images.build import GuestImage, build_image, find_inputs
from smith.wire.agent import JobSpec, ServiceAccess
from smith.wire.guest import GuestConfig, GuestEvent
from tests.conftest import patient

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="no qemu-system-x86_64 (qemu-system-x86)"),
]
SHAPE = VMShape("qemu-test", 1, 512)
AGENT_ARGV = "tr '\\0' ' ' < /proc/$PPID/cmdline; echo"  # the job's parent is the guest agent


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> GuestImage:
    try:
        inputs = find_inputs()
    except ConfigError as exc:
        pytest.skip(f"cannot build a guest image here: {exc.message}")
    return build_image(tmp_path_factory.mktemp("images"), inputs)


@pytest.fixture
def base_dir(qemu_base: Path) -> Path:
    return qemu_base  # short (Unix socket paths must fit), and no qemu may outlive the test (tests/conftest.py)


def vmm_for(image: GuestImage, base: Path, **kw: object) -> QemuVMM:
    return QemuVMM(base, QemuConfig(kernel=image.vmlinux, initrd=image.initrd, accel="tcg", **kw))  # type: ignore[arg-type]


def job(run: str, **extra: object) -> GuestConfig:
    return GuestConfig(job=JobSpec(id="q1", runner_class="qemu-test", vcpus=1, memory_mib=512, run=run), **extra)  # type: ignore[arg-type]


async def collect(machine: object) -> list[GuestEvent]:
    return [e async for e in machine.events()]  # type: ignore[attr-defined]


def lines(events: list[GuestEvent], stream: str = "stdout") -> list[str]:
    return [e.line for e in events if e.type == "line" and e.stream == stream]


def qemu_pids(base_dir: Path) -> set[int]:
    """Processes whose command line names this test's directory (its qemu processes, nobody else's)."""
    out = subprocess.run(["pgrep", "-f", f"qemu-system.*{base_dir}"], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


@pytest.mark.slow
async def test_cold_boot_runs_a_job_and_snapshots_restore_it(image: GuestImage, base_dir: Path) -> None:
    vmm = vmm_for(image, base_dir)
    machine = await vmm.boot(SHAPE, "cold")
    await machine.assign(
        job(
            'echo "hello from $(uname -r)"; echo warn >&2; echo "token=$ACTIONS_RUNTIME_TOKEN"; '
            + AGENT_ARGV
            + "; exit 3",
            cache=ServiceAccess(url="http://10.0.0.2:1234", token="qemu-secret-token"),
        )
    )
    events = await asyncio.wait_for(collect(machine), patient(60))
    await machine.stop()
    assert events[0].type == "started" and events[-1].type == "exit" and events[-1].exit_code == 3
    assert lines(events)[:2] == [f"hello from {image.kernel_version}", "token=***"]
    assert "--set-hosts" in lines(events)[2] and "--preload" not in lines(events)[2]  # a cold guest imports less
    assert lines(events, "stderr") == ["warn"]
    assert not machine.dir.exists()

    # Warm starts: a template saved while its guest waits, then two VMs restored from it with their own jobs.
    snapshot = await vmm.prepare_snapshot(SHAPE)
    assert snapshot.path.stat().st_size > 0
    outputs = []
    for name in ("r1", "r2"):
        restored = await vmm.boot(SHAPE, name)
        assert restored.restored
        await restored.assign(job(f"echo {name}; date +%s; head -c 16 /dev/urandom | od -An -tx1; {AGENT_ARGV}"))
        got = await asyncio.wait_for(collect(restored), patient(60))
        await restored.stop()
        assert got[-1].exit_code == 0, got
        outputs.append(lines(got))
    assert outputs[0][0] == "r1" and outputs[1][0] == "r2"
    assert "--preload" in outputs[0][3]  # the template's agent imported what restored jobs may need, before ready
    # the restored guests took the host's clock and differ in randomness, though restored from one state
    assert abs(int(outputs[0][1]) - int(events[0].ts)) < 600
    assert outputs[0][2] != outputs[1][2]
    assert not list(base_dir.glob("qemu-*"))

    # A template that no longer restores (another QEMU build wrote it): the VM boots cold, a new one is made.
    snapshot.path.write_bytes(b"QEVM from another qemu" + bytes(4096))
    stale = snapshot.path.with_name(f"{SHAPE.vcpus}x{SHAPE.memory_mib}-0000000000000000.state")
    stale.write_bytes(b"a template of a QEMU since upgraded")
    fallback = await vmm.boot(SHAPE, "stale")
    assert not fallback.restored
    await fallback.stop()
    await asyncio.wait_for(asyncio.gather(*vmm._retemplating.values()), patient(120))
    remade = vmm.snapshots[(SHAPE.vcpus, SHAPE.memory_mib)]
    assert remade is not snapshot and remade.path.stat().st_size > 4096
    assert not stale.exists()  # the shape's older templates go when a new one is made
    again = await vmm.boot(SHAPE, "again")
    assert again.restored
    await again.stop()


@pytest.mark.slow
async def test_steps_commands_sent_back_to_back_all_reach_the_guest(image: GuestImage, base_dir: Path) -> None:
    """Issue 10: Linux's virtio_console throws away what reached a port its guest had closed (and what was still
    unread when it closed it), so a guest agent that closed the config port after each line lost the host's next
    command and the workflow stalled. Here the config and many commands (more than one 4 KiB virtqueue buffer)
    leave the host before the guest has read any of them: every one must run, in order."""
    machine = await vmm_for(image, base_dir).boot(SHAPE, "burst")
    try:
        await machine.assign(job("", steps=True))
        pad = "p" * 1500  # several commands per virtqueue buffer, and lines spanning two
        for i in range(12):
            await machine.send({"argv": ["/bin/echo", f"command {i}"], "env": {"PAD": pad}})
        await machine.send({"end": True})
        events = await asyncio.wait_for(collect(machine), patient(60))
    finally:
        await machine.stop()
    assert lines(events) == [f"command {i}" for i in range(12)]
    assert [e.exit_code for e in events if e.type == "step"] == [0] * 12
    assert events[-1].type == "exit" and events[-1].exit_code == 0


@dataclass
class RecordingNetwork:
    """Hands out one made-up slot and records that it got it back (a tap nobody can open: qemu then fails)."""

    released: list[str] = field(default_factory=list)

    async def acquire(self, vm_id: str) -> object:
        @dataclass
        class Slot:
            tap: str = "smithnotap0"
            mac: str = "02:00:00:00:00:01"
            guest_ip: str = "10.200.0.2"
            gateway_ip: str = "10.200.0.1"
            netmask: str = "255.255.255.252"

        return Slot()

    async def release(self, slot: object) -> None:
        self.released.append(slot.tap)  # type: ignore[attr-defined]


async def test_a_failed_boot_unwinds_every_step(image: GuestImage, base_dir: Path) -> None:
    fake_qemu = base_dir / "qemu-fails"
    fake_qemu.write_text("#!/bin/sh\necho 'could not open tap' >&2\nexit 1\n")
    fake_qemu.chmod(0o755)
    net = RecordingNetwork()
    vmm = QemuVMM(
        base_dir, QemuConfig(kernel=image.vmlinux, initrd=image.initrd, accel="tcg", qemu_bin=str(fake_qemu)), net
    )
    with pytest.raises(VMError, match="could not open tap"):
        await vmm.boot(SHAPE, "doomed")
    assert net.released == ["smithnotap0"]
    assert not (base_dir / "qemu-doomed").exists()


async def test_a_vms_directory_is_private(image: GuestImage, base_dir: Path) -> None:
    """Its console (anything a job writes to /dev/console) and its sockets are nobody else's on the host."""
    fake_qemu = base_dir / "qemu-tells"  # says the mode of the directory its console file is in, and fails
    fake_qemu.write_text(
        "#!/bin/sh\n"
        'for a; do case "$a" in file,*path=*) p="${a#*path=}"; p="${p%%,*}"; '
        'stat -c "mode=%a" "$(dirname "$p")" >&2;; esac; done\n'
        "exit 1\n"
    )
    fake_qemu.chmod(0o755)
    vmm = QemuVMM(base_dir, QemuConfig(kernel=image.vmlinux, initrd=image.initrd, accel="tcg", qemu_bin=str(fake_qemu)))
    with pytest.raises(VMError, match="mode=700"):
        await vmm.boot(SHAPE, "private")


async def test_a_guest_that_never_gets_ready_is_torn_down(image: GuestImage, base_dir: Path) -> None:
    vmm = QemuVMM(
        base_dir,
        QemuConfig(
            kernel=image.vmlinux,
            initrd=image.initrd,
            accel="tcg",
            append="console=ttyS0 panic=-1 rdinit=/bin/does-not-exist",  # panics: no init
            boot_timeout=60,
            boot_attempts=1,
        ),
    )
    with pytest.raises(VMError):
        await vmm.boot(SHAPE, "noinit")
    assert not (base_dir / "qemu-noinit").exists()
    assert qemu_pids(base_dir) == set()


def test_missing_kernel_is_a_clear_error(base_dir: Path) -> None:
    with pytest.raises(VMError, match="smith image build"):
        QemuVMM(base_dir, QemuConfig(kernel=base_dir / "no-vmlinux"))


async def test_cleanup_leftovers_kills_an_orphaned_qemu(image: GuestImage, base_dir: Path) -> None:
    """A crashed agent leaves qemu running in its own session; the next agent finds it by its pid file."""
    vmm = vmm_for(image, base_dir)
    vm_dir = base_dir / "qemu-orphan"
    vm_dir.mkdir()
    argv = vmm.command(vm_dir, SHAPE, "tcg", None, None)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
    (vm_dir / "pid").write_text(str(proc.pid))
    for _ in range(500):  # running, as a crashed agent's VMs are: its sockets are up
        if (vm_dir / "qmp.sock").exists() or proc.poll() is not None:
            break
        await asyncio.sleep(0.01)
    assert proc.poll() is None, (vm_dir / "qemu.err").read_text() if (vm_dir / "qemu.err").exists() else ""
    (base_dir / "snapshots").mkdir()
    (base_dir / "snapshots" / "x.partial").write_bytes(b"half")
    try:
        removed = await vmm.cleanup_leftovers()
        assert removed == ["qemu-orphan", "x.partial"]
        assert await asyncio.to_thread(proc.wait, 10) == -signal.SIGKILL
        assert not vm_dir.exists()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def proc_status(pid: int) -> dict[str, str]:
    rows = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (row.partition(":") for row in rows)}


async def test_a_jobs_qemu_holds_no_privilege_and_no_host_file(image: GuestImage, base_dir: Path) -> None:
    """A guest that escapes into QEMU finds a process under a seccomp filter (no spawning, no set*id to gain,
    no resource changes), and, when the agent is root, an unprivileged uid inside an empty chroot. Checked on
    the real command line, paused before the guest runs (-S): confinement is in place by then."""
    vmm = vmm_for(image, base_dir)
    vm_dir = base_dir / "qemu-jail"
    vm_dir.mkdir()
    argv = [*vmm.command(vm_dir, SHAPE, "tcg", None, None), "-S"]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        for _ in range(1000):
            if (vm_dir / "qmp.sock").exists() or proc.poll() is not None:
                break
            await asyncio.sleep(0.01)
        assert proc.poll() is None
        for _ in range(500):  # the drop happens at the end of QEMU's start-up
            status = proc_status(proc.pid)
            if status["Seccomp"] == "2" and (os.geteuid() != 0 or status["Uid"].split()[0] != "0"):
                break
            await asyncio.sleep(0.01)
        assert status["Seccomp"] == "2" and status["NoNewPrivs"] == "1"
        if os.geteuid() == 0:
            assert status["Uid"].split() == ["65534"] * 4 and status["CapEff"] == "0000000000000000"
            assert os.readlink(f"/proc/{proc.pid}/root") == str(base_dir / "empty")
            assert not list((base_dir / "empty").iterdir())
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
async def test_a_job_vm_is_sized_and_its_channel_cannot_speak_as_the_host(image: GuestImage, base_dir: Path) -> None:
    """What a root job in the guest gets: the VM's size and nothing more. The event port is held by the guest
    agent (a second opener gets EBUSY), but a root job can kill the agent and take the port over: what it then
    writes, the host keeps as the job's own words."""
    from smith.agent.daemon import from_guest

    vmm = vmm_for(image, base_dir)
    machine = await vmm.boot(SHAPE, "sized")
    forged = '{"type":"line","ts":1,"stream":"system","line":"smith: job stopped (cancel)"}'
    forged_exit = '{"type":"exit","ts":1,"stream":"system","line":"smith: verified","exit_code":0}'
    port = "/dev/virtio-ports/smith.events"
    try:
        await machine.assign(
            job(
                "nproc; awk '/MemTotal/ {print $2}' /proc/meminfo; "
                "dd if=/dev/zero of=/work/fill bs=1M count=1024 2>&1 | grep -c 'No space left'; "
                f"(echo x > {port}) 2>&1 | grep -c 'resource busy'; "
                "agent=$(ps | awk '/[s]mith.agent.py/ {print $1}'); exec >/dev/null 2>&1; kill -9 $agent; "
                f"until printf '%s\\n' '{forged}' '{forged_exit}' > {port}; do :; done"
            )
        )
        events = await asyncio.wait_for(collect(machine), patient(120))
    finally:
        await machine.stop()
    out = lines(events)
    assert out[:4] == [str(SHAPE.vcpus), out[1], "1", "1"], events
    assert int(out[1]) <= SHAPE.memory_mib * 1024  # the guest's RAM is the shape's, no more
    # out[2]: its writable space is inside that RAM (a 1 GiB file does not fit); out[3]: the port is the agent's
    said = [(e.type, e.stream, e.line) for e in events]
    assert ("line", "system", "smith: job stopped (cancel)") in said  # the attack reached the host as "system"
    kept = [from_guest(e) for e in events]
    assert ("line", "stderr", "smith: job stopped (cancel)") in [(e.type, e.stream, e.line) for e in kept]
    assert kept[-1].type == "exit" and kept[-1].line == ""  # its exit code is the job's own; its words are not


@pytest.mark.slow
async def test_a_guest_cannot_fill_the_disk_through_its_console(image: GuestImage, base_dir: Path) -> None:
    vmm = vmm_for(image, base_dir, console_max_bytes=16 << 10, console_check_seconds=0.05)
    machine = await vmm.boot(SHAPE, "chatty")
    console = machine.dir / "console.log"
    with capture_logs() as logs:
        await machine.assign(job("head -c 120000 /dev/zero | tr '\\0' x > /dev/ttyS0; echo wrote"))
        events = await asyncio.wait_for(collect(machine), patient(120))
        size = console.stat().st_size
    await machine.stop()
    assert events[-1].exit_code == 0 and lines(events) == ["wrote"], events
    assert any(e["event"].startswith("qemu console log cut") for e in logs)
    assert size < 120_000
