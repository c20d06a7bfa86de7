"""FirecrackerVMM against the fake Firecracker launched as a binary: boot order, unwinding, MMDS, guest run."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from smith.adapters.firecracker.client import FirecrackerAPIError
from smith.adapters.firecracker.vmm import STATE_FILE, FirecrackerConfig, FirecrackerMachine, FirecrackerVMM
from smith.domain.vms import VMShape
from smith.errors import ConfigError, InvalidInput, PayloadTooLarge, VMError
from smith.testing.network import MemoryNetwork
from smith.wire.agent import ServiceAccess
from smith.wire.guest import GuestEvent
from tests.agent.firecracker_support import SECRET, SHAPE, Rig, guest_config, make_rig, size_of, spawn

BOOT_SEQUENCE = [
    ("GET", "/"),  # wait_for_socket
    ("PUT", "/logger"),
    ("PUT", "/metrics"),
    ("PUT", "/machine-config"),
    ("PUT", "/boot-source"),
    ("PUT", "/drives/scratch"),  # no root drive: the image is an initramfs
    ("PUT", "/network-interfaces/eth0"),
    ("PUT", "/mmds/config"),
    ("PUT", "/vsock"),  # guest events over vsock (the host listens on <uds_path>_<port> first)
    ("PUT", "/actions"),
]


@pytest.fixture
def rig() -> Iterator[Rig]:
    yield from make_rig()


def sequence(rig: Rig, name: str) -> list[tuple[str, str]]:
    return [(c["method"], c["path"]) for c in rig.calls(name)]


def body(rig: Rig, name: str, method: str, path: str) -> Any:
    return next(c["body"] for c in rig.calls(name) if (c["method"], c["path"]) == (method, path))


def is_socket(path: str) -> bool:
    return Path(path).is_socket()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def assert_nothing_left(rig: Rig, machine_pid: int | None = None) -> None:
    assert rig.leftovers() == [], "a jail directory was left behind"
    assert rig.network.in_use == {}, "a network slot was not released"
    if machine_pid is not None:
        assert not alive(machine_pid), "the firecracker process is still running"


async def test_boot_sequence_is_exactly_firecrackers_order(rig: Rig) -> None:
    machine = await rig.vmm.boot(SHAPE, "vm1")
    try:
        assert sequence(rig, "smith-vm1") == BOOT_SEQUENCE
        assert all(c["status"] in (200, 204) for c in rig.calls("smith-vm1"))
        assert body(rig, "smith-vm1", "PUT", "/machine-config") == {"vcpu_count": 2, "mem_size_mib": 512, "smt": False}
        drives = [c["body"] for c in rig.calls("smith-vm1") if c["path"].startswith("/drives/")]
        assert len(drives) == 1 and not drives[0]["is_root_device"] and not drives[0]["is_read_only"]
        assert size_of(drives[0]["path_on_host"]) == SHAPE.disk_mib * 1024 * 1024
        boot = body(rig, "smith-vm1", "PUT", "/boot-source")
        assert Path(boot["initrd_path"]).read_bytes()[:6] == b"070701"
        assert body(rig, "smith-vm1", "PUT", "/mmds/config") == {
            "network_interfaces": ["eth0"],
            "version": "V2",
            "ipv4_address": "169.254.169.254",
        }
        slot = rig.network.in_use["vm1"]
        assert body(rig, "smith-vm1", "PUT", "/network-interfaces/eth0") == {
            "iface_id": "eth0",
            "host_dev_name": slot.tap,
            "guest_mac": slot.mac,
        }
        assert body(rig, "smith-vm1", "PUT", "/actions") == {"action_type": "InstanceStart"}
        info = await machine.api.describe_instance()
        assert (info.state, info.id) == ("Running", "smith-vm1")
    finally:
        await machine.stop()


async def test_jailer_command_is_recorded_when_running_unjailed(rig: Rig) -> None:
    machine = await rig.vmm.boot(SHAPE, "vm2")
    try:
        assert machine.command[0] == str(rig.vmm.config.firecracker_bin)  # the fake ran directly
        jailer = machine.jailer_command
        assert jailer[:3] == [str(rig.vmm.config.jailer_bin), "--id", "smith-vm2"]
        assert jailer[jailer.index("--cgroup-version") + 1] == "2"
        assert "cpu.max=250000 100000" in jailer  # 2 vCPUs and half a CPU for Firecracker's own threads
        assert jailer[jailer.index("--") + 1 :] == [
            "--api-sock",
            "/run/firecracker.socket",
            "--http-api-max-payload-size",
            "2097152",
            "--mmds-size-limit",
            "2097152",
        ]
    finally:
        await machine.stop()


@pytest.mark.parametrize("step", FirecrackerVMM.STEPS)
async def test_a_failure_at_any_step_unwinds_everything_before_it(
    rig: Rig, step: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from smith.adapters.firecracker import vmm as vmm_module

    seen: dict[str, Any] = {}

    async def broken(self: Any) -> None:
        seen["pid"] = self.machine.process.pid if self.machine.process else None
        seen["undo"] = self.machine.cleanup.names
        raise VMError(f"injected failure at {step}")

    monkeypatch.setattr(vmm_module._Boot, step, broken)
    with pytest.raises(VMError, match=f"injected failure at {step}"):
        await rig.vmm.boot(SHAPE, "vm3")
    done = FirecrackerVMM.STEPS[: FirecrackerVMM.STEPS.index(step)]
    makers = {"chroot": "chroot", "network": "network", "process": "process", "socket": "socket", "vsock": "events"}
    expected_undo = [undo for made_by, undo in makers.items() if made_by in done]
    assert seen["undo"] == expected_undo
    assert_nothing_left(rig, seen["pid"])


async def test_firecracker_refusal_unwinds_and_keeps_the_fault_message() -> None:
    for rig in make_rig("--fail", "PUT /drives/scratch=Unable to create the virtio block device: disk full"):
        with pytest.raises(FirecrackerAPIError) as info:
            await rig.vmm.boot(SHAPE, "vm4")
        assert info.value.fault_message == "Unable to create the virtio block device: disk full"
        assert sequence(rig, "smith-vm4")[-1] == ("PUT", "/drives/scratch")
        assert_nothing_left(rig)


async def test_a_binary_that_dies_at_once_is_reported_with_its_stderr(rig: Rig) -> None:
    bad = rig.base / "firecracker-broken"
    bad.write_text("#!/bin/sh\necho 'Error: could not open /dev/kvm' >&2\nexit 1\n")
    bad.chmod(0o755)
    config = replace(rig.vmm.config, firecracker_bin=bad)
    vmm = FirecrackerVMM(config, rig.network)
    with pytest.raises(VMError, match=r"exited with code 1.*could not open /dev/kvm"):
        await vmm.boot(SHAPE, "vm5")
    assert not (rig.base / "jails" / "firecracker-broken").exists() or not any(
        (rig.base / "jails" / "firecracker-broken").iterdir()
    )
    assert rig.network.in_use == {}


async def test_no_network_slot_means_nothing_is_made(rig: Rig) -> None:
    vmm = FirecrackerVMM(rig.vmm.config, MemoryNetwork(fail=True))
    with pytest.raises(VMError, match="no network slot"):
        await vmm.boot(SHAPE, "vm6")
    assert rig.leftovers() == []


async def test_assign_puts_the_config_only_in_mmds(rig: Rig) -> None:
    cfg = guest_config("true", secret=True).model_copy(
        update={"cache": ServiceAccess(url="http://c", token="tok-CACHE")}
    )
    machine = await rig.vmm.boot(SHAPE, "vm7")
    try:
        await machine.assign(cfg)
        with pytest.raises(VMError, match="already has a job"):
            await machine.assign(cfg)
    finally:
        await machine.stop()
    put = body(rig, "smith-vm7", "PUT", "/mmds")
    envelope = put["smith"]["config"]  # with the host's clock and a seed: a restored clone has the snapshot's
    assert envelope["config"] == cfg.model_dump(mode="json")
    assert abs(envelope["now"] - time.time()) < 3600 and len(bytes.fromhex(envelope["seed"])) == 32
    args = body(rig, "smith-vm7", "PUT", "/boot-source")["boot_args"]
    assert machine.boot_args == args
    for call in rig.calls("smith-vm7"):
        if (call["method"], call["path"]) != ("PUT", "/mmds"):
            text = str(call["body"])
            assert SECRET not in text and "tok-CACHE" not in text, call


async def test_the_guest_gets_its_address_gateway_and_a_resolver_on_the_command_line(rig: Rig) -> None:
    # The Debian kernel has no ip= autoconfiguration: the image's init reads smith.ip/gw/dns. Without them the
    # guest never reaches MMDS and the job never starts.
    machine = await rig.vmm.boot(SHAPE, "vm7b")
    try:
        await machine.assign(guest_config("echo addressed"))
        lines = [e.line async for e in machine.events() if e.type == "line"]
    finally:
        await machine.stop()
    assert "addressed" in lines
    args = body(rig, "smith-vm7b", "PUT", "/boot-source")["boot_args"].split()
    assert "smith.ip=172.30.0.2/30" in args and "smith.gw=172.30.0.1" in args
    dns = next(a.split("=", 1)[1] for a in args if a.startswith("smith.dns="))
    assert not ipaddress.ip_address(dns).is_loopback  # never the host's 127.0.0.53 stub
    assert not any(a.startswith("ip=") for a in args)


async def test_the_credentials_leave_mmds_once_the_guest_has_read_them(rig: Rig) -> None:
    cfg = guest_config("echo running", secret=True).model_copy(
        update={"cache": ServiceAccess(url="http://c", token="tok-CACHE")}
    )
    machine = await rig.vmm.boot(
        SHAPE,
        "vm7c",
    )
    try:
        await machine.assign(cfg)
        types = []
        async for event in machine.events():
            types.append(event.type)
            if event.type == "line" and event.line == "running":
                mmds = await machine.api.get_mmds()
                assert SECRET not in str(mmds) and "tok-CACHE" not in str(mmds)
        assert "exit" in types
    finally:
        await machine.stop()
    puts = [c["body"] for c in rig.calls("smith-vm7c") if (c["method"], c["path"]) == ("PUT", "/mmds")]
    assert len(puts) == 2 and puts[1] == {}


async def test_the_guest_runs_the_job_and_its_events_come_back(rig: Rig) -> None:
    cfg = guest_config("echo hello; echo oops >&2; echo token=tok-CACHE; exit 3").model_copy(
        update={"cache": ServiceAccess(url="http://c", token="tok-CACHE")}
    )
    machine = await rig.vmm.boot(SHAPE, "vm8")
    pid = machine.process.pid if machine.process else 0
    try:
        await machine.assign(cfg)
        events: list[GuestEvent] = [e async for e in machine.events()]
    finally:
        await machine.stop()
    system = [e.line for e in events if e.type == "line" and e.stream == "system"]
    assert any("Linux version" in line for line in system)  # kernel noise on the console, passed through
    job = [(e.stream, e.line) for e in events if e.type == "line" and e.stream != "system"]
    stdout = [line for stream, line in job if stream == "stdout"]
    assert stdout == ["hello", "token=***"]  # in order within a stream; the cache token masked by the guest
    assert [line for stream, line in job if stream == "stderr"] == ["oops"]
    assert events[-1].type == "exit" and events[-1].exit_code == 3
    assert [e.type for e in events if e.type != "line"] == ["started", "exit"]
    assert_nothing_left(rig, pid)


async def test_stop_is_graceful_then_idempotent(rig: Rig) -> None:
    machine = await rig.vmm.boot(SHAPE, "vm9")
    proc = machine.process
    assert proc is not None
    jail_dir = machine.jail.dir
    await machine.stop()
    assert proc.returncode == 0  # exited on Ctrl+Alt+Del (reboot=k), not killed
    assert ("PUT", "/actions") in sequence(rig, "smith-vm9")[-1:]
    assert rig.calls("smith-vm9")[-1]["body"] == {"action_type": "SendCtrlAltDel"}
    assert not jail_dir.exists()
    await machine.stop()  # again: nothing to do, no error
    with pytest.raises(VMError, match="stopped"):
        await machine.assign(guest_config())
    assert_nothing_left(rig)


async def test_stop_kills_a_vm_that_ignores_ctrl_alt_del(rig: Rig) -> None:
    machine = await rig.vmm.boot(SHAPE, "vm10")
    proc = machine.process
    assert proc is not None
    machine.stop_timeout = 0.2
    os.kill(proc.pid, signal.SIGSTOP)  # a hung VMM: the API cannot answer either
    machine.api._http.timeout = httpx.Timeout(0.2)
    await machine.stop()
    assert proc.returncode == -signal.SIGKILL
    assert_nothing_left(rig)


async def test_snapshot_then_restore_a_warm_vm(rig: Rig) -> None:
    source = await rig.vmm.boot(SHAPE, "tmpl")
    snap = await rig.vmm.snapshot(source, rig.base / "snapshots" / "tmpl")
    assert snap.vmstate.exists() and snap.mem.exists()
    assert (await source.api.describe_instance()).state == "Running"  # resumed after the snapshot
    await source.stop()
    assert sequence(rig, "smith-tmpl")[len(BOOT_SEQUENCE) :] == [
        ("PATCH", "/vm"),
        ("PUT", "/snapshot/create"),
        ("PATCH", "/vm"),
        ("GET", "/"),  # the test's describe_instance
        ("PUT", "/actions"),  # SendCtrlAltDel from stop()
    ]
    assert body(rig, "smith-tmpl", "PUT", "/snapshot/create")["snapshot_type"] == "Full"

    clone = await rig.vmm.boot_from_snapshot(SHAPE, "clone1", snap)
    try:
        assert sequence(rig, "smith-clone1") == [
            ("GET", "/"),
            ("PUT", "/logger"),
            ("PUT", "/metrics"),
            ("PUT", "/snapshot/load"),
        ]
        load = body(rig, "smith-clone1", "PUT", "/snapshot/load")
        assert load["resume_vm"] is True and load["mem_backend"]["backend_type"] == "File"
        assert load["network_overrides"] == [{"iface_id": "eth0", "host_dev_name": rig.network.in_use["clone1"].tap}]
        assert load["vsock_override"] == {"uds_path": str(clone.jail.host("v.sock"))}  # not the template's
        assert (await clone.api.describe_instance()).state == "Running"
        await clone.assign(guest_config("echo from-the-clone"))
        events = [e async for e in clone.events()]
        assert ("stdout", "from-the-clone") in [(e.stream, e.line) for e in events]
        assert clone.console is not None and clone.console.over_channel  # the clone's events came over vsock
    finally:
        await clone.stop()
    assert snap.vmstate.exists()  # the snapshot outlives its clones
    assert_nothing_left(rig)


async def test_cleanup_leftovers_removes_a_crashed_agents_vm(rig: Rig) -> None:
    # A VM left by a crashed agent: its jail, state file and a still-running process with its name.
    name = "smith-crashed"
    vm_dir = rig.base / "jails" / "firecracker" / name
    (vm_dir / "root" / "run").mkdir(parents=True)
    slot = await rig.network.acquire("crashed")
    proc = spawn("sh", "-c", "sleep 300; :", name)
    try:
        (vm_dir / STATE_FILE).write_text(json.dumps({"vm_id": "crashed", "pid": proc.pid, "slot": asdict(slot)}))
        other = rig.base / "jails" / "firecracker" / "not-ours"
        other.mkdir()
        removed = await rig.vmm.cleanup_leftovers()
        assert removed == [name]
        assert proc.wait(timeout=10) == -signal.SIGKILL
        assert not vm_dir.exists() and other.exists()  # only our prefix is touched
        assert rig.network.in_use == {} and rig.network.released == [slot]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_cleanup_leftovers_does_not_kill_a_reused_pid(rig: Rig) -> None:
    vm_dir = rig.base / "jails" / "firecracker" / "smith-old"
    vm_dir.mkdir(parents=True)
    proc = spawn("sleep", "300")  # an unrelated process got the PID
    try:
        (vm_dir / STATE_FILE).write_text(json.dumps({"vm_id": "old", "pid": proc.pid}))
        assert await rig.vmm.cleanup_leftovers() == ["smith-old"]
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


async def test_an_empty_vm_id_is_refused_before_anything_is_made(rig: Rig) -> None:
    with pytest.raises(InvalidInput, match="empty"):
        await rig.vmm.boot(SHAPE, "")
    assert_nothing_left(rig)


async def test_any_vm_id_gets_a_valid_unique_jailer_id(rig: Rig) -> None:
    ids = ["warm-ubuntu_22.04-ab12cd34", "job-" + "x" * 80, "job-" + "x" * 80 + "y"]
    machines = [await rig.vmm.boot(SHAPE, vm_id) for vm_id in ids]
    try:
        names = [m.name for m in machines]
        assert all(re.fullmatch(r"smith-[A-Za-z0-9-]{1,58}", n) for n in names), names
        assert all(len(str(m.jail.host("/run/firecracker.socket"))) <= 107 for m in machines)
        assert len(set(names)) == 3  # long ids that share a prefix stay distinct
        assert names[0].startswith("smith-warm-ubuntu-22-04-")
        assert [m.id for m in machines] == ids  # the Machine keeps the agent's id
    finally:
        for m in machines:
            await m.stop()
    assert_nothing_left(rig)


def test_config_is_checked(tmp_path: Path) -> None:
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(b"MZ\x00\x00compressed")
    rootfs = tmp_path / "rootfs.ext4"
    rootfs.write_bytes(b"")
    network = MemoryNetwork()
    with pytest.raises(ConfigError, match="not an uncompressed ELF vmlinux"):
        FirecrackerVMM(FirecrackerConfig(kernel=kernel, rootfs=rootfs, chroot_base=tmp_path), network)
    with pytest.raises(ConfigError, match="does not exist"):
        FirecrackerVMM(FirecrackerConfig(kernel=tmp_path / "none", rootfs=rootfs, chroot_base=tmp_path), network)
    kernel.write_bytes(b"\x7fELF")
    with pytest.raises(ConfigError, match="'firecracker' in the Firecracker binary"):
        FirecrackerVMM(
            FirecrackerConfig(kernel=kernel, rootfs=rootfs, chroot_base=tmp_path, firecracker_bin=Path("/bin/fc")),
            network,
        )
    with pytest.raises(ConfigError, match="prefix"):
        FirecrackerVMM(FirecrackerConfig(kernel=kernel, rootfs=rootfs, chroot_base=tmp_path, prefix="a_b"), network)


def test_a_chroot_base_too_long_for_the_socket_is_a_config_error(tmp_path: Path) -> None:
    for rig in make_rig():
        config = replace(rig.vmm.config, chroot_base=tmp_path / ("d" * 100))
        with pytest.raises(ConfigError, match="would not fit a Unix socket"):
            FirecrackerVMM(config, rig.network)


async def test_several_vms_at_once(rig: Rig) -> None:
    shape = VMShape("small", 1, 128, disk_mib=8)
    machines: list[FirecrackerMachine] = list(await asyncio.gather(*(rig.vmm.boot(shape, f"par{i}") for i in range(3))))
    try:
        assert len({m.slot.tap for m in machines if m.slot}) == 3
        for m in machines:
            await m.assign(guest_config(f"echo {m.id}"))
        outputs = [[e.line for e in [x async for x in m.events()] if e.stream == "stdout"] for m in machines]
        assert outputs == [[m.id] for m in machines]
    finally:
        await asyncio.gather(*(m.stop() for m in machines))
    assert_nothing_left(rig)


async def test_a_script_over_firecrackers_default_limit_fits_the_raised_one(rig: Rig) -> None:
    machine = await rig.vmm.boot(SHAPE, "vm14")
    try:
        # 100 kB: over Firecracker's default 51200, under the guest's 128 KiB argument limit (bash -c script)
        script = "# " + "x" * 100_000 + "\necho big-script-ran"
        await machine.assign(guest_config(script))
        lines = [e.line for e in [x async for x in machine.events()] if e.stream == "stdout"]
        assert lines == ["big-script-ran"]
    finally:
        await machine.stop()
    assert "--http-api-max-payload-size" in machine.command


async def test_a_config_too_big_for_mmds_is_refused_and_the_vm_stays_usable() -> None:
    for rig in make_rig(api_payload_limit=51200):
        machine = await rig.vmm.boot(SHAPE, "vm12")
        try:
            huge = guest_config("true").model_copy(update={"env": {"BIG": "x" * 60_000}})
            with pytest.raises(PayloadTooLarge, match="at most 51200"):
                await machine.assign(huge)
            await machine.assign(guest_config("echo still-fine"))  # the refusal did not use up the VM
            lines = [e.line for e in [x async for x in machine.events()] if e.stream == "stdout"]
            assert lines == ["still-fine"]
        finally:
            await machine.stop()


async def test_a_cancelled_boot_leaves_nothing(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    from smith.adapters.firecracker import vmm as vmm_module

    reached = asyncio.Event()

    async def hang(self: Any) -> None:
        reached.set()
        await asyncio.sleep(3600)

    monkeypatch.setattr(vmm_module._Boot, "drives", hang)
    task = asyncio.ensure_future(rig.vmm.boot(SHAPE, "vm13"))
    await reached.wait()
    assert rig.leftovers() and rig.network.in_use  # half-booted: jail and slot exist
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert_nothing_left(rig)


async def test_jailed_boot_uses_paths_inside_the_chroot_and_runs_a_job() -> None:
    for rig in make_rig(jailed=True):
        machine = await rig.vmm.boot(SHAPE, "jvm")
        try:
            assert machine.command == machine.jailer_command  # launched through the (fake) jailer
            jailer = json.loads((rig.records / "smith-jvm.jailer.json").read_text())
            assert jailer["rest"][:2] == ["--api-sock", "/run/firecracker.socket"]
            assert sequence(rig, "smith-jvm") == BOOT_SEQUENCE
            assert body(rig, "smith-jvm", "PUT", "/boot-source")["kernel_image_path"] == "/vmlinux"
            drives = [c["body"]["path_on_host"] for c in rig.calls("smith-jvm") if c["path"].startswith("/drives/")]
            assert drives == ["/scratch.img"]
            assert body(rig, "smith-jvm", "PUT", "/boot-source")["initrd_path"] == "/initrd.cpio"
            assert body(rig, "smith-jvm", "PUT", "/logger")["log_path"] == "/firecracker.log"
            await machine.assign(guest_config("echo jailed"))
            lines = [e.line for e in [x async for x in machine.events()] if e.stream == "stdout"]
            assert lines == ["jailed"]
        finally:
            await machine.stop()
        assert_nothing_left(rig)


async def test_jailed_snapshot_restores_into_another_vms_chroot() -> None:
    for rig in make_rig(jailed=True):
        source = await rig.vmm.boot(SHAPE, "jsrc")
        snap = await rig.vmm.snapshot(source, rig.base / "snap")
        assert body(rig, "smith-jsrc", "PUT", "/snapshot/create")["snapshot_path"] == "/snapshot.vmstate"
        await source.stop()
        clone = await rig.vmm.boot_from_snapshot(SHAPE, "jdst", snap)
        try:
            load = body(rig, "smith-jdst", "PUT", "/snapshot/load")
            assert (load["snapshot_path"], load["mem_backend"]["backend_path"]) == (
                "/snapshot.vmstate",
                "/snapshot.mem",
            )
            assert (await clone.api.describe_instance()).state == "Running"
        finally:
            await clone.stop()
        assert_nothing_left(rig)


async def test_a_jailer_that_fails_leaves_nothing() -> None:
    for rig in make_rig(jailed=True):
        bad = replace(rig.vmm.config, jailer_bin=Path("/bin/false"))
        with pytest.raises(VMError, match="exited with code 1"):
            await FirecrackerVMM(bad, rig.network).boot(SHAPE, "jbad")
        assert_nothing_left(rig)


async def test_vsock_is_configured_before_start_when_enabled() -> None:
    for rig in make_rig():
        machine = await rig.vmm.boot(SHAPE, "vs")
        try:
            calls = sequence(rig, "smith-vs")
            assert calls[-2:] == [("PUT", "/vsock"), ("PUT", "/actions")]
            vsock = body(rig, "smith-vs", "PUT", "/vsock")
            assert vsock["guest_cid"] >= 3
            assert is_socket(vsock["uds_path"])  # Firecracker made it (unjailed: a host path)
        finally:
            await machine.stop()
        assert_nothing_left(rig)


async def test_a_vms_limits_are_its_size_and_firecracker_keeps_its_seccomp(rig: Rig) -> None:
    """The VM's size bounds the job: vCPUs and RAM in the machine config and the jail's cgroup, a scratch disk
    of disk_mib, the shared root read-only; Firecracker's default seccomp filters are never switched off and
    the jail user is not root."""
    mib = 1024 * 1024
    machine = await rig.vmm.boot(SHAPE, "lim")
    try:
        jailer = machine.jailer_command
        memory_max = int(next(a for a in jailer if a.startswith("memory.max=")).split("=")[1])
        assert SHAPE.memory_mib * mib < memory_max <= (SHAPE.memory_mib + 64 + SHAPE.memory_mib * 3 // 100) * mib
        assert f"cpu.max={SHAPE.vcpus * 100_000 + 50_000} 100000" in jailer  # + room for Firecracker's threads
        assert not [a for a in jailer if "seccomp" in a]
        config = body(rig, "smith-lim", "PUT", "/machine-config")
        assert (config["vcpu_count"], config["mem_size_mib"]) == (SHAPE.vcpus, SHAPE.memory_mib)
        drives = {c["body"]["drive_id"]: c["body"] for c in rig.calls("smith-lim") if c["path"].startswith("/drives/")}
        assert "rootfs" not in drives and drives["scratch"]["is_read_only"] is False  # the root: a read-only initrd
        assert Path(drives["scratch"]["path_on_host"]).stat().st_size == SHAPE.disk_mib * mib  # unjailed: host path
    finally:
        await machine.stop()
    assert FirecrackerConfig(kernel=Path("k"), rootfs=Path("r"), chroot_base=Path("c")).uid not in (0, os.geteuid())
