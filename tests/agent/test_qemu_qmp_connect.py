"""Connecting to QEMU's QMP socket in the window where QEMU has bound it but does not listen yet: a connect there
is refused (ECONNREFUSED on a Unix socket), and the boot must try again rather than fail the VM."""

from __future__ import annotations

import asyncio
import json
import socket
import tempfile
import threading
from pathlib import Path
from typing import Any

from smith.adapters.qemu import QemuConfig, QemuVMM


class Alive:
    returncode = None  # a QEMU process that is still running


def qmp_server_listening_late(path: Path, delay: float) -> threading.Thread:
    """Bind now (the socket file exists), listen only after ``delay``: as QEMU does, in two steps."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))

    def serve() -> None:
        threading.Event().wait(delay)
        sock.listen(1)
        conn, _ = sock.accept()
        with conn, conn.makefile("rwb") as f:
            f.write(json.dumps({"QMP": {"version": {}, "capabilities": []}}).encode() + b"\n")
            f.flush()
            assert json.loads(f.readline())["execute"] == "qmp_capabilities"
            f.write(b'{"return": {}}\n')
            f.flush()
        sock.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


async def test_qmp_is_reached_though_the_first_connects_are_refused() -> None:
    vm_dir = Path(tempfile.mkdtemp(prefix="qmp", dir="/tmp"))  # Unix socket paths must stay short
    path = vm_dir / "qmp.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        server = qmp_server_listening_late(path, 0.3)
        try:
            probe.connect(str(path))
            raise AssertionError("a bound socket that does not listen yet should refuse")
        except ConnectionRefusedError:
            pass
    (vm_dir / "vmlinux").write_bytes(b"not booted here")
    vmm = QemuVMM(vm_dir / "base", QemuConfig(kernel=vm_dir / "vmlinux"))
    proc: Any = Alive()
    qmp = await vmm._open_qmp(vm_dir, proc)
    assert qmp.events == []
    qmp.writer.close()
    await asyncio.to_thread(server.join, 10)
    assert not server.is_alive()
