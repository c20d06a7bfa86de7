"""Guest events over vsock: Firecracker forwards the guest's connection to the host (CID 2) on a port to the Unix
socket ``<uds_path>_<port>``, which the host agent listens on before InstanceStart. The console stays for the
kernel's messages and is the fallback when the guest kernel has no vsock."""

from __future__ import annotations

import json
from pathlib import Path

from smith.adapters.firecracker.events import EVENTS_PORT, events_socket
from smith.wire.guest import GuestEvent
from tests.agent.firecracker_support import SHAPE, Rig, guest_config, make_rig

LINES = 12_000  # far more than the console's pipe holds


def flood(lines: int = LINES) -> str:
    return f"i=0; while [ $i -lt {lines} ]; do echo line-$i-{'x' * 100}; i=$((i+1)); done"


def calls(rig: Rig, name: str, path: str) -> list[dict[str, object]]:
    return [c for c in rig.calls(name) if c["path"] == path]


def assert_whole(events: list[GuestEvent], lines: int = LINES) -> None:
    """Every line of the flood, in order, and the exit event last."""
    out = [e.line for e in events if e.type == "line" and e.stream == "stdout"]
    assert out == [f"line-{i}-{'x' * 100}" for i in range(lines)]
    seqs = [e.seq for e in events if e.type != "line" or e.stream != "system"]
    assert seqs == list(range(1, len(seqs) + 1))  # the guest agent's numbering, nothing missing or reordered
    assert events[-1].type == "exit" and events[-1].exit_code == 0


async def test_events_come_over_vsock_while_nobody_reads_the_console() -> None:
    for rig in make_rig():
        machine = await rig.vmm.boot(SHAPE, "vs1")
        try:
            await machine.assign(guest_config(flood()))
            stream = machine.events()
            events = [await anext(stream)]
            while events[-1].type != "started":  # the kernel's lines on the console come first
                events.append(await anext(stream))
            assert machine.console is not None and machine.console.over_channel
            await machine.console.close()  # from now on nobody reads the serial console
            events += [e async for e in stream]
        finally:
            await machine.stop()
        assert_whole(events)


async def test_a_guest_kernel_without_vsock_falls_back_to_the_console() -> None:
    for rig in make_rig("--guest-vsock", "no"):
        machine = await rig.vmm.boot(SHAPE, "vs2")
        try:
            assert calls(rig, "smith-vs2", "/vsock")  # the device is there; the guest cannot use it
            # What fits in the console's pipe: over the console, a reader that is not scheduled for a while can
            # still lose output to a guest that prints faster (the reason events move to vsock).
            await machine.assign(guest_config(flood(2000)))
            events = [e async for e in machine.events()]
            assert machine.console is not None and not machine.console.over_channel
        finally:
            await machine.stop()
        assert_whole(events, 2000)


async def test_without_a_vsock_device_events_use_the_console() -> None:
    for rig in make_rig(vsock=False):
        machine = await rig.vmm.boot(SHAPE, "vs3")
        try:
            assert not calls(rig, "smith-vs3", "/vsock")
            assert not events_socket(machine.jail.host("v.sock")).exists()
            await machine.assign(guest_config("echo over-the-console"))
            events = [e async for e in machine.events()]
            assert machine.console is not None and not machine.console.over_channel
        finally:
            await machine.stop()
        assert ("stdout", "over-the-console") in [(e.stream, e.line) for e in events]
        assert events[-1].type == "exit"


async def test_jailed_the_vsock_sockets_are_inside_the_chroot() -> None:
    for rig in make_rig(jailed=True):
        machine = await rig.vmm.boot(SHAPE, "vs4")
        try:
            (put,) = calls(rig, "smith-vs4", "/vsock")
            body = put["body"]
            assert isinstance(body, dict) and body["uds_path"] == "/v.sock"  # a path in the chroot
            listening = machine.jail.host(f"v.sock_{EVENTS_PORT}")
            assert listening.is_socket() and machine.jail.host("v.sock").is_socket()  # ours, and Firecracker's
            await machine.assign(guest_config("echo jailed"))
            events = [e async for e in machine.events()]
            assert machine.console is not None and machine.console.over_channel
        finally:
            await machine.stop()
        assert ("stdout", "jailed") in [(e.stream, e.line) for e in events] and events[-1].type == "exit"
        assert not listening.exists()


def test_the_guest_agent_and_the_host_agree_on_the_port() -> None:
    agent = Path(__file__).resolve().parents[2] / "src" / "smith" / "guest" / "agent.py"
    assert f"EVENTS_PORT = {EVENTS_PORT}" in agent.read_text()
    assert json.dumps(EVENTS_PORT)  # a plain int
