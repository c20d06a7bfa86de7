"""Throwaway network namespaces, a userspace "VM" on a tap, and sockets opened inside a namespace.

Only namespaces created here are touched; nothing is sent outside them. A socket belongs to the network
namespace it was created in, so ``socket_in`` creates it from a short-lived thread that has joined the
namespace (setns affects only the calling thread) and hands it back to the test.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import select
import shutil
import socket
import struct
import subprocess
import threading
import uuid
from collections.abc import Callable
from typing import TypeVar

import pytest

from smith.domain.vms import Slot

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)


def skip_unless_root() -> pytest.MarkDecorator:
    missing = [b for b in ("ip", "nft", "sysctl") if shutil.which(b) is None]
    if os.geteuid() != 0:
        return pytest.mark.skip(reason="needs root: creates network namespaces, bridges and taps")
    if missing:
        return pytest.mark.skip(reason=f"needs {', '.join(missing)} (apt install iproute2 nftables procps)")
    if not os.path.exists("/dev/net/tun"):
        return pytest.mark.skip(reason="needs /dev/net/tun for tap devices")
    return pytest.mark.root


def sh(*argv: str, check: bool = True) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


def new_netns(tag: str) -> str:
    name = f"smtest-{tag}-{uuid.uuid4().hex[:8]}"
    sh("ip", "netns", "add", name)
    sh("ip", "-n", name, "link", "set", "lo", "up")
    return name


def del_netns(name: str) -> None:
    sh("ip", "netns", "del", name, check=False)


def netns_list() -> list[str]:
    return [line.split()[0] for line in sh("ip", "netns", "list").splitlines() if line.strip()]


def links(netns: str) -> list[str]:
    return [link["ifname"] for link in json.loads(sh("ip", "-n", netns, "-j", "link", "show") or "[]")]


def nft_tables(netns: str) -> list[str]:
    return [line.strip() for line in sh("ip", "netns", "exec", netns, "nft", "list", "tables").splitlines() if line]


def _setns(netns: str) -> None:
    fd = os.open(f"/var/run/netns/{netns}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)


def run_in(netns: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` on a fresh thread that has joined ``netns``; sockets it creates live there."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            _setns(netns)
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def socket_in(netns: str, kind: int = socket.SOCK_STREAM, *, for_address: str = "") -> socket.socket:
    family = socket.AF_INET6 if ":" in for_address else socket.AF_INET
    return run_in(netns, lambda: socket.socket(family, kind))


def _open_tap(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


class GuestWire:
    """A userspace VM NIC: opens the slot's tap in the host namespace (as Firecracker would) and relays
    frames to a tap ``eth0`` inside the VM's namespace, configured with the slot's MAC and addresses."""

    def __init__(self, host_ns: str, vm_ns: str, slot: Slot) -> None:
        self.host_ns, self.vm_ns, self.slot = host_ns, vm_ns, slot
        self._stop_r, self._stop_w = os.pipe()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._relay, daemon=True)

    def start(self) -> GuestWire:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        s, ns = self.slot, self.vm_ns
        sh("ip", "-n", ns, "link", "set", "eth0", "address", s.mac, "up")
        sh("ip", "-n", ns, "addr", "add", f"{s.guest_ip}/{s.prefix}", "dev", "eth0")
        sh("ip", "-n", ns, "route", "add", "default", "via", s.gateway_ip)
        return self

    def _relay(self) -> None:
        fds: list[int] = []
        try:
            _setns(self.host_ns)
            fds.append(_open_tap(self.slot.tap))
            _setns(self.vm_ns)
            fds.append(_open_tap("eth0"))
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            for fd in fds:
                os.close(fd)
            return
        self._ready.set()
        host, guest = fds
        peer = {host: guest, guest: host}
        try:
            while True:
                readable, _, _ = select.select([host, guest, self._stop_r], [], [])
                if self._stop_r in readable:
                    return
                for fd in readable:
                    try:
                        frame = os.read(fd, 65536)
                        os.write(peer[fd], frame)
                    except OSError:
                        continue  # a frame the other side refused (device down): drop it, as a NIC would
        finally:
            os.close(host)
            os.close(guest)

    def stop(self) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join(10)
        os.close(self._stop_r)
        os.close(self._stop_w)


def tcp_connect(netns: str, host: str, port: int, *, timeout: float = 1.0, source: str | None = None) -> str:
    """Connect from ``netns``; return "ok" with the server's first line, or the error's class name."""
    sock = socket_in(netns, for_address=host)
    sock.settimeout(timeout)
    try:
        if source is not None:
            sock.bind((source, 0))
        sock.connect((host, port))
        return "ok " + sock.recv(256).decode().strip()
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        return type(exc).__name__
    finally:
        sock.close()


class Server:
    """A TCP server in a namespace that answers each connection with a line: '<name> <peer address>'."""

    def __init__(self, netns: str, host: str, port: int, name: str) -> None:
        self.name = name
        self.peers: list[str] = []
        self.sock = socket_in(netns, for_address=host)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, address = self.sock.accept()
                peer = address[0]
            except OSError:
                return
            self.peers.append(peer)
            with conn:
                conn.sendall(f"{self.name} {peer}\n".encode())

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(5)


ETH_P_ALL = 0x0003


class Sniffer:
    """Every frame that reaches ``ifname`` inside ``netns`` (as a guest in promiscuous mode would see it)."""

    def __init__(self, netns: str, ifname: str = "eth0") -> None:
        def make() -> socket.socket:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            sock.bind((ifname, 0))
            return sock

        self.sock = run_in(netns, make)
        self.sock.setblocking(False)

    def frames(self) -> list[bytes]:
        got: list[bytes] = []
        while True:
            try:
                got.append(self.sock.recv(65536))
            except BlockingIOError:
                return got

    def close(self) -> None:
        self.sock.close()


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def send_frame(netns: str, ifname: str, frame: bytes) -> None:
    """Write one raw Ethernet frame out of ``ifname`` inside ``netns`` (what a root job in a guest can do)."""

    def send() -> None:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
            sock.bind((ifname, 0))
            sock.send(frame)

    run_in(netns, send)


def arp_reply(src_mac: str, claimed_ip: str, dst_mac: str, dst_ip: str, *, op: int = 2) -> bytes:
    """An ARP reply saying ``claimed_ip is at src_mac``, sent from ``src_mac`` (``op=1``: a request for
    ``dst_ip``, with ``dst_mac`` the broadcast address)."""
    body = struct.pack("!HHBBH", 1, 0x0800, 6, 4, op)
    target = "00:00:00:00:00:00" if op == 1 else dst_mac
    body += mac_bytes(src_mac) + socket.inet_aton(claimed_ip) + mac_bytes(target) + socket.inet_aton(dst_ip)
    return mac_bytes(dst_mac) + mac_bytes(src_mac) + struct.pack("!H", 0x0806) + body


def arp_answers(frames: list[bytes], asked_ip: str) -> list[bytes]:
    """ARP replies among ``frames`` that claim ``asked_ip``."""
    ip = socket.inet_aton(asked_ip)
    return [f for f in frames if f[12:14] == b"\x08\x06" and f[20:22] == b"\x00\x02" and f[28:32] == ip]
