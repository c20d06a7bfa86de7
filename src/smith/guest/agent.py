#!/usr/bin/env python3
"""Smith's guest agent: runs inside a VM or sandbox, runs one job, streams its output as JSON lines.

Stdlib only, one file: it is copied alone into guest images. It reads its config (a GuestConfig as JSON) from
stdin, a file, a virtio-serial port (QEMU) or Firecracker's MMDS (waiting for it: warm VMs boot before their job
exists), then either starts
GitHub's runner with the JIT config or runs the job's script, and writes one JSON object per line to its output:
``started`` first, a ``line`` per line of stdout/stderr (timestamp taken here, ``seq`` increasing), ``exit`` last.
Secrets from the config (runner credential, cache token) are masked as ``***`` in every line. The job's
environment is built from nothing (a fixed PATH, HOME, TMPDIR, LANG, CI, its id, its cache and runner variables,
the job's own ``env``): nothing of this process's environment reaches it.

On a port the host may wrap the config in an envelope, ``{"config": {...}, "now": <host epoch seconds>,
"seed": "<hex>"}``: a guest restored from a snapshot has a stale clock and the same random state as every
other copy, so the agent sets its clock (or offsets its timestamps) and mixes the seed into the
kernel's entropy pool before it starts the job. It sets the clock only with ``--set-clock`` (a VM's init
passes it): a sandbox shares the host's clock and must never move it. With ``--announce`` it writes
``{"smith": "ready"}`` once it waits for its config, so the host knows the guest is booted.

Under Firecracker (``--mmds``) the events go over vsock when the guest kernel has it: a stream to the host (CID 2)
on ``EVENTS_PORT``, which Firecracker forwards to a Unix socket the host agent listens on. It is flow-controlled
(the serial console drops what the host does not read in time); at the end the agent waits for the host to close
its end, so the exit event is known to have arrived. Without vsock (no module, no device, nobody listening) or if
the channel breaks, events go to ``--out`` (the console). ``--events-socket PATH`` is the same over a Unix socket.

Steps mode (``"steps": true`` in the config): the host drives a job one command at a time, as Smith's workflow
executor does. Each JSON line after the config on its stream (stdin, the port), or on the event channel when
there is one (Firecracker: vsock is two-way; MMDS is no stream), is a command, ``{"argv": [...],
"env": {...}, "cwd": ..., "timeout": s, "write": {path: text}, "untar": {"dest": ..., "data": base64},
"collect": [paths]}``: the agent writes the files, unpacks the archive, empties the ``collect`` files, runs
``argv`` (its ``line`` events as usual), then sends ``{"type": "step", "exit_code": n, "files": {path: text}}``
with what the command left in the ``collect`` files. ``{"end": true}`` or the end of input ends the job
(``exit`` 0). Everything else (expressions, workflow commands, masking of workflow secrets) stays on the host.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

# Imported where used, not here: every VM's start pays for each import (under emulation, QEMU translating the
# C code each one runs: seconds in all), so socket waits until a job needs it, shutil until a runner's directory
# is copied, typing never comes; argparse (a third of the imports) is replaced by the small parser below.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from typing import IO, Any, NoReturn

MAX_LINE = 64 * 1024
MMDS_IP = "169.254.169.254"
SCRIPT = ".smith-job.sh"  # the job's script, written into the work dir (no argv size limit)
EVENTS_PORT = 1024  # vsock port of the host's event channel (smith.adapters.firecracker.events)
VMADDR_CID_HOST = 2


class Output:
    def __init__(self, stream: IO[str], secrets: list[str], fallback: IO[str] | None = None) -> None:
        self.stream = stream
        self.fallback = fallback  # where events go if ``stream`` (the vsock channel) breaks
        self.secrets = [s for s in secrets if s and len(s) >= 4]
        self.seq = 0
        self.lock = threading.Lock()

    def mask(self, text: str) -> str:
        for s in self.secrets:
            if s in text:
                text = text.replace(s, "***")
        return text

    def emit(self, type_: str, **fields: Any) -> None:
        with self.lock:
            self.seq += 1
            event = {"type": type_, "ts": now(), "seq": self.seq, **fields}
            if "line" in event:
                event["line"] = self.mask(event["line"])
            text = json.dumps(event, ensure_ascii=False) + "\n"
            try:
                self.stream.write(text)
                self.stream.flush()
            except OSError:
                if self.fallback is None:
                    raise
                self.stream, self.fallback = self.fallback, None
                self.stream.write(text)
                self.stream.flush()


CLOCK_OFFSET = 0.0  # added to every timestamp when the guest cannot set its own clock


def now() -> float:
    return time.time() + CLOCK_OFFSET


def read_config(args: Args, port: int | None = None) -> dict[str, Any]:
    if port is not None:
        return read_port(port)
    if args.config_file:
        while True:  # the host writes the file atomically (rename), so it is whole once it exists
            try:
                with open(args.config_file, encoding="utf-8") as f:
                    return dict(json.load(f))
            except FileNotFoundError:
                time.sleep(0.01)
    if args.mmds:
        return read_mmds(args.mmds)
    first = sys.stdin.readline()  # one line, so that (steps mode) the commands after it stay unread
    try:
        return dict(json.loads(first))
    except ValueError:  # a config spread over several lines (a person typing it, or an older host)
        return dict(json.loads(first + sys.stdin.read()))


PORT_LINES: Iterator[bytes] | None = None  # the rest of the config port, for steps mode


def read_port(fd: int) -> dict[str, Any]:
    """One JSON line from a virtio-serial port (the lines after it stay for steps mode)."""
    global PORT_LINES
    PORT_LINES = port_lines(fd)
    return dict(json.loads(next(PORT_LINES)))


def open_port(path: str) -> int:
    while True:
        try:
            return os.open(path, os.O_RDONLY)
        except OSError:
            time.sleep(0.05)


def port_lines(fd: int) -> Iterator[bytes]:
    """Lines from a virtio-serial port, read unbuffered from one descriptor kept open for good: Linux's
    virtio_console throws away what reaches a port its guest has closed and what was still unread when it closed
    it, so closing it between lines loses the host's next command (issue 10). A read returns EOF while the host
    side is not connected: wait and read the same descriptor again."""
    buf = bytearray()
    while True:
        end = buf.find(b"\n")
        while end < 0:
            chunk = os.read(fd, 65536)
            if not chunk:
                time.sleep(0.02)
                continue
            if b"\n" in chunk:
                end = len(buf) + chunk.index(b"\n")
            buf += chunk
        line = bytes(buf[:end])
        del buf[: end + 1]
        yield line


def unwrap(message: dict[str, Any], set_clock: bool = False, set_net: bool = False) -> dict[str, Any]:
    """The config inside a host envelope (setting the clock, seeding entropy and, with ``set_net``, taking the
    network identity it names first), or the message itself."""
    global CLOCK_OFFSET
    if "config" not in message or "job" in message:
        return message
    net = message.get("net")
    if set_net and isinstance(net, dict):
        set_network(net)
    host_now = message.get("now")
    if isinstance(host_now, int | float):
        CLOCK_OFFSET = float(host_now) - time.time()
        if set_clock:  # only inside a VM (init passes --set-clock): never move a shared host's clock
            try:
                time.clock_settime(time.CLOCK_REALTIME, float(host_now))
                CLOCK_OFFSET = 0.0
            except (OSError, AttributeError):
                pass
    seed = message.get("seed")
    if isinstance(seed, str) and seed:
        with contextlib.suppress(ValueError):
            reseed(bytes.fromhex(seed))
    return dict(message["config"])


def set_network(net: dict[str, Any], run: Any = subprocess.run, iface: str = "eth0") -> None:
    """Take the address, MAC, gateway and resolver the host gives this VM (a clone restored from a snapshot still
    has its template's), unless it has them already (a cold boot got them on the kernel command line)."""
    try:
        with open(f"/sys/class/net/{iface}/address", encoding="ascii") as f:
            current = f.read().strip()
    except OSError:
        current = ""
    if current == str(net.get("mac", "")).lower():
        return
    steps = [
        ["ip", "link", "set", iface, "down"],
        ["ip", "link", "set", iface, "address", str(net["mac"])],
        ["ip", "link", "set", iface, "up"],
        ["ip", "addr", "flush", "dev", iface],
        ["ip", "addr", "add", str(net["ip"]), "dev", iface],
        ["ip", "route", "replace", "default", "via", str(net["gw"])],
        ["ip", "route", "replace", MMDS_IP, "dev", iface],
    ]
    for argv in steps:
        with contextlib.suppress(OSError):
            run(argv, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if net.get("dns"):
        with contextlib.suppress(OSError), open("/etc/resolv.conf", "w", encoding="ascii") as f:
            f.write(f"nameserver {net['dns']}\n")


RNDADDENTROPY = 0x40085203
RNDRESEEDCRNG = 0x5207


def reseed(seed: bytes) -> None:
    """Feed the host's seed to the kernel and reseed its CRNG now (as root), so that every copy of one
    snapshot draws different random numbers; unprivileged, the seed is only mixed in (no credit, no reseed)."""
    try:
        import fcntl
        import struct

        with open("/dev/urandom", "wb") as f:
            try:
                fcntl.ioctl(f.fileno(), RNDADDENTROPY, struct.pack("ii", len(seed) * 8, len(seed)) + seed)
                fcntl.ioctl(f.fileno(), RNDRESEEDCRNG)
            except OSError:
                f.write(seed)
    except (OSError, ImportError):
        pass


TOKEN_TTL = 21600  # seconds a MMDS V2 session token is valid (the most Firecracker allows)


def read_mmds(address: str, sleep: Any = time.sleep) -> dict[str, Any]:
    """MMDS V2: PUT a session token once (renewed before it expires or when refused), then GET the config; poll
    until the host has put it there, backing off from 50 ms to 1 s (a warm VM may wait for minutes, and
    Firecracker's MMDS serves at most 30 connections)."""
    import urllib.error  # here, not at the top: every guest's start pays for imports (20x under emulation)
    import urllib.request

    base = f"http://{address}"
    token, expires, delay = "", 0.0, 0.05
    while True:
        try:
            if not token or time.monotonic() > expires:
                req = urllib.request.Request(
                    f"{base}/latest/api/token", method="PUT", headers={"X-metadata-token-ttl-seconds": str(TOKEN_TTL)}
                )
                with urllib.request.urlopen(req, timeout=2) as r:
                    token = r.read().decode()
                expires = time.monotonic() + TOKEN_TTL - 60
            req = urllib.request.Request(
                f"{base}/smith/config", headers={"X-metadata-token": token, "Accept": "application/json"}
            )
            with urllib.request.urlopen(req, timeout=2) as r:
                body = r.read().decode()
            if body.strip():
                data = json.loads(body)
                return dict(json.loads(data) if isinstance(data, str) else data)
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                token = ""  # expired or unknown: a new one next time
        except (OSError, ValueError):
            pass
        sleep(delay)
        delay = min(delay * 2, 1.0)


def secrets_of(config: dict[str, Any]) -> list[str]:
    """What every line is masked for: the runner credential and the cache token."""
    out = [str((config.get("cache") or {}).get("token", ""))]
    if config.get("runner"):
        out.append(str(config["runner"].get("value", "")))
    return out


def steps(config: dict[str, Any], runner_dir: str) -> list[tuple[list[str], dict[str, str]]]:
    """The commands to run, one after the other, each with the environment it adds to the job's.

    A script job is one step. GitHub's runner gets its credential in ``ACTIONS_RUNNER_INPUT_*`` variables, which
    it reads, removes from its environment and masks: never on a command line (``/proc/*/cmdline`` is readable
    by every process). In registration mode the token reaches ``config.sh`` only, never ``run.sh`` nor the job's
    steps (a pull request could otherwise register a runner of its own)."""
    runner = config.get("runner")
    if not runner:
        shell = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"
        return [([shell, "-e", SCRIPT], {})]
    if runner.get("kind") == "jit":
        return [([f"{runner_dir}/run.sh"], {"ACTIONS_RUNNER_INPUT_JITCONFIG": str(runner["value"])})]
    labels = ",".join((config.get("job") or {}).get("labels") or [])
    configure = {
        "ACTIONS_RUNNER_INPUT_URL": str(runner.get("url", "")),
        "ACTIONS_RUNNER_INPUT_TOKEN": str(runner["value"]),
        "ACTIONS_RUNNER_INPUT_NAME": str(runner.get("runner_name", "")),
        "ACTIONS_RUNNER_INPUT_LABELS": labels,
    }
    return [([f"{runner_dir}/config.sh", "--unattended", "--ephemeral"], configure), ([f"{runner_dir}/run.sh"], {})]


# What GitHub's runner prints when it takes a job and when the job ends (Runner.Listener's terminal lines).
RUNNING_JOB = re.compile(r"^(?:\S+ \S+: )?Running job: (.*)$")
JOB_RESULT = re.compile(r"^(?:\S+ \S+: )?Job (.*) completed with result: (\w+)")
RESULTS = {"succeeded": "succeeded", "succeededwithissues": "succeeded", "canceled": "cancelled"}


class RunnerWatch:
    """Judges a runner job by what GitHub's runner did, not by its exit code (``run.sh`` exits 0 whenever its
    helper exits with anything but 2, e.g. when the runner refused to start)."""

    def __init__(self) -> None:
        self.job = ""
        self.result = ""

    def see(self, line: str) -> None:
        if m := RUNNING_JOB.match(line):
            self.job = m.group(1)
        elif m := JOB_RESULT.match(line):
            self.result = m.group(2)

    def outcome(self) -> str:
        """``no_job`` (the runner never ran one: the job may go to another runner), else the job's result."""
        if not self.job:
            return "no_job"
        return RESULTS.get(self.result.lower(), "failed")


BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "TMPDIR": "/tmp"}


def environment(config: dict[str, Any], workdir: str) -> dict[str, str]:
    """The job's environment, built from nothing: never this process's own (whatever started the guest agent,
    a VMM, a sandbox or a test, may hold credentials the job must not see)."""
    job = config.get("job") or {}
    env = dict(BASE_ENV, HOME=workdir, CI="true", SMITH_JOB_ID=str(job.get("id", "")))
    cache = config.get("cache")
    if cache:
        url = str(cache["url"]).rstrip("/") + "/"
        env.update(
            {
                "ACTIONS_CACHE_URL": url,
                "ACTIONS_RESULTS_URL": url,
                "ACTIONS_RUNTIME_TOKEN": cache["token"],
                "ACTIONS_CACHE_SERVICE_V2": "true",
            }
        )
    env.update({str(k): str(v) for k, v in (config.get("env") or {}).items()})
    return env


def hosts_entry(cache: dict[str, Any]) -> str | None:
    """The ``/etc/hosts`` line that sends the cache's download host (``download_host``, e.g.
    ``smith.blob.core.windows.net``: the cache client downloads in parallel only from such a host) to the cache
    URL's host address; None without one, or when that host does not resolve. Imports nothing for a job without
    one: in a VM restored from a snapshot, importing socket and urllib.parse took 0.3 s (QEMU translating their
    code again), before the job's first line."""
    name = str(cache.get("download_host") or "")
    if not name or not cache.get("url"):
        return None
    import socket
    import urllib.parse

    host = urllib.parse.urlsplit(str(cache.get("url") or "")).hostname
    if not host:
        return None
    try:
        address = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][4][0]
    except (OSError, IndexError):
        return None
    return f"{address} {name}\n"


def add_hosts_entry(config: dict[str, Any], path: str = "/etc/hosts") -> str | None:
    """Before the job starts (VMs: ``--set-hosts``): the cache's download host resolves to the cache. The line
    added, or None."""
    line = hosts_entry(config.get("cache") or {})
    if line is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    if line.split() not in [row.split() for row in text.splitlines()]:
        with open(path, "a", encoding="utf-8") as f:
            f.write(("" if not text or text.endswith("\n") else "\n") + line)
    return line


def oom_first(pid: int) -> None:
    """Right after the job's process started: when memory runs out, the job's processes are killed before this
    agent, so the job's end (and why) is still reported. Written from here rather than in the child before its
    exec: a ``preexec_fn`` makes python fork instead of vfork, which under emulation costs more than the job's
    first instant with the agent's score (a process it forks in that instant keeps that score)."""
    try:
        with open(f"/proc/{pid}/oom_score_adj", "w") as f:
            f.write("500")
    except OSError:
        pass


def pump(pipe: IO[bytes], name: str, q: queue.Queue[tuple[str, str] | None]) -> None:
    while True:
        chunk = pipe.readline(MAX_LINE)
        if not chunk:
            break
        text = chunk.decode("utf-8", errors="replace")
        if not chunk.endswith(b"\n") and len(chunk) >= MAX_LINE:
            text += " [smith: line cut at 64 KiB]"
            rest = chunk
            while rest and not rest.endswith(b"\n"):  # drop the rest of the over-long line
                rest = pipe.readline(MAX_LINE)
        q.put((name, text.rstrip("\r\n")))
    q.put(None)


class User:
    """Who runs the job: this process's own user, or (when the guest runs as root) the image's unprivileged
    runner user, since GitHub's runner refuses root."""

    def __init__(self, uid: int, gid: int, name: str) -> None:
        self.uid, self.gid, self.name = uid, gid, name

    def popen_args(self) -> dict[str, Any]:
        """Popen's arguments for running as this user: none for this process's own, which lets python vfork
        (no ``preexec_fn``, no user or group change)."""
        if self.uid == os.getuid():
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def runner_user(config: dict[str, Any], workdir: str) -> User:
    """The user GitHub's runner runs as; it owns the work dir. ``SetupError`` when a root guest has no such user."""
    if os.getuid() != 0:
        return User(os.getuid(), os.getgid(), "")
    import pwd

    name = str(config.get("runner_user") or "runner")
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise SetupError(f"this image has no user {name!r} to run GitHub's runner as (it refuses root)") from None
    if entry.pw_uid == 0:
        raise SetupError(f"the runner user {name!r} is root: GitHub's runner refuses to run as root")
    os.chown(workdir, entry.pw_uid, entry.pw_gid)
    return User(entry.pw_uid, entry.pw_gid, name)


class SetupError(Exception):
    pass


def writable_runner_dir(runner_dir: str, user: User, workdir: str, out: Output) -> str:
    """GitHub's runner writes into its own directory (the JIT config's files, ``_diag``, ``_work``): a directory
    the runner's user cannot write (a sandbox's read-only /runner, an image installed for root) is copied into the
    work dir first, owned by that user."""
    st = os.stat(runner_dir)
    if st.st_uid == user.uid or (os.getuid() == user.uid and os.access(runner_dir, os.W_OK)):
        return runner_dir
    copy = os.path.join(workdir, ".runner")
    out.emit("line", stream="system", line=f"smith: {runner_dir} is not the runner user's: copying it to {copy}")
    import shutil

    shutil.copytree(runner_dir, copy, symlinks=True)
    if user.uid != os.getuid():
        for root, dirs, files in os.walk(copy):
            for name in (root, *(os.path.join(root, n) for n in dirs + files)):
                os.lchown(name, user.uid, user.gid)
    return copy


def forward_diag(runner_dir: str, out: Output, limit: int = 20_000) -> None:
    """The runner's own logs (``_diag/*.log``) into the job's log, once it has ended: why a runner did not
    start, or lost its job, is there and nowhere else."""
    diag = os.path.join(runner_dir, "_diag")
    try:
        names = sorted(n for n in os.listdir(diag) if n.endswith(".log"))
    except OSError:
        return
    for name in names:
        try:
            with open(os.path.join(diag, name), encoding="utf-8", errors="replace") as f:
                for line in f:
                    if limit <= 0:
                        out.emit("line", stream="system", line="smith: runner _diag logs cut here")
                        return
                    limit -= 1
                    out.emit("line", stream="system", line=f"[_diag/{name}] {line.rstrip()}")
        except OSError:
            continue


def stop_if_idle(proc: subprocess.Popen[bytes], watch: RunnerWatch, seconds: float, out: Output) -> None:
    """GitHub's runner waits for a job for ever; one that gets none within ``seconds`` is stopped (SIGTERM, then
    SIGKILL), so that its VM is freed and its demand goes back to the queue."""
    try:
        proc.wait(timeout=seconds)
        return
    except subprocess.TimeoutExpired:
        pass
    if watch.job:
        return
    out.emit("line", stream="system", line=f"smith: GitHub gave the runner no job in {seconds:g}s: stopping it")
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 0.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace or None)
            return
        except subprocess.TimeoutExpired:
            continue


def run_step(
    argv: list[str],
    env: dict[str, str],
    user: User,
    workdir: str,
    out: Output,
    watch: RunnerWatch,
    idle_seconds: float = 0.0,
    timeout: float | None = None,
) -> int:
    """Run one command as ``user``, its output as ``line`` events (GitHub's runner's lines seen by ``watch``);
    stopped when idle (``idle_seconds``, a runner with no job) or killed (exit 124) after ``timeout`` seconds."""
    try:
        proc = subprocess.Popen(
            argv,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            **user.popen_args(),
        )
    except OSError as exc:
        out.emit("line", stream="system", line=f"smith: cannot start the job: {exc}")
        return 127
    oom_first(proc.pid)
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)

    timer = threading.Timer(timeout, kill) if timeout else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    q: queue.Queue[tuple[str, str] | None] = queue.Queue()
    threads = [
        threading.Thread(target=pump, args=(p, n, q), daemon=True)
        for p, n in ((proc.stdout, "stdout"), (proc.stderr, "stderr"))
    ]
    if idle_seconds:
        threads.append(threading.Thread(target=stop_if_idle, args=(proc, watch, idle_seconds, out), daemon=True))
    for t in threads:
        t.start()
    open_pipes = 2
    while open_pipes:
        item = q.get()
        if item is None:
            open_pipes -= 1
            continue
        if item[0] == "stdout":
            watch.see(item[1])
        out.emit("line", stream=item[0], line=item[1])
    code = proc.wait()
    if timer is not None:
        timer.cancel()
    if timed_out.is_set():
        out.emit("line", stream="system", line=f"smith: timed out after {timeout:g} s")
        return 124
    return code


def execute(argv: list[str], cwd: str, env: dict[str, str], out: Output, timeout: float | None = None) -> int:
    """One steps-mode command, as this process's user."""
    return run_step(argv, env, User(os.getuid(), os.getgid(), ""), cwd, out, RunnerWatch(), 0.0, timeout)


MAX_COLLECT = 1 << 20  # bytes read back per collected file


def serve_steps(config: dict[str, Any], out: Output, workdir: str, inbox: Callable[[], dict[str, Any] | None]) -> int:
    """Steps mode: run the host's commands one at a time until it says end (see the module docstring)."""
    import base64
    import tarfile

    out.emit("started", stream="system", line=f"job {(config.get('job') or {}).get('id', '')} starting (steps)")
    base = environment(config, workdir)
    while True:
        msg = inbox()
        if msg is None or msg.get("end"):
            return 0
        try:
            for path, text in (msg.get("write") or {}).items():
                full = os.path.join(workdir, path)
                os.makedirs(os.path.dirname(full), exist_ok=True)
                with open(full, "w", encoding="utf-8") as f:
                    f.write(text)
            untar = msg.get("untar")
            if untar:
                dest = os.path.join(workdir, untar["dest"])
                os.makedirs(dest, exist_ok=True)
                unpack(base64.b64decode(untar["data"]), dest)
            collect = [os.path.join(workdir, p) for p in msg.get("collect") or []]
            for path in collect:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                open(path, "w").close()
        except (OSError, ValueError, KeyError, tarfile.TarError) as exc:
            out.emit("line", stream="system", line=f"smith: cannot prepare the step: {exc}")
            out.emit("step", stream="system", exit_code=126, files={})
            continue
        code = 0
        if msg.get("argv"):
            env = dict(base, **{str(k): str(v) for k, v in (msg.get("env") or {}).items()})
            cwd = os.path.join(workdir, msg.get("cwd") or "")
            code = execute([str(a) for a in msg["argv"]], cwd, env, out, msg.get("timeout"))
        files = {}
        for rel, path in zip(msg.get("collect") or [], collect, strict=True):
            with contextlib.suppress(OSError), open(path, encoding="utf-8", errors="replace") as f:
                files[rel] = f.read(MAX_COLLECT)
        out.emit("step", stream="system", exit_code=code, files=files)


def unpack(data: bytes, dest: str) -> None:
    """The host's archive into ``dest``, refusing members that would land outside it."""
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        try:
            tar.extractall(dest, filter="tar")
        except TypeError:  # a Python without extraction filters (before 3.11.4)
            root = os.path.realpath(dest)
            for m in tar.getmembers():
                target = os.path.realpath(os.path.join(dest, m.name))
                if not (target == root or target.startswith(root + os.sep)) or m.isdev():
                    raise ValueError(f"archive member {m.name!r} outside the destination") from None
            tar.extractall(dest)  # noqa: S202


def inbox_for(args: Args) -> Callable[[], dict[str, Any] | None]:
    """Where steps-mode commands come from: the config's own channel (stdin or the port), read by a thread of its
    own so that the channel is drained whatever the agent is doing (running a step, writing events): the host's
    writes never wait for the guest's."""
    lines: queue.Queue[bytes | None] = queue.Queue()

    def read() -> None:
        try:
            if args.config_port:
                for line in PORT_LINES or ():
                    lines.put(line)
            else:
                for text in iter(sys.stdin.readline, ""):
                    lines.put(text.encode())
        finally:
            lines.put(None)

    threading.Thread(target=read, name="inbox", daemon=True).start()

    def next_message() -> dict[str, Any] | None:
        line = lines.get()
        if line is None:
            return None
        if not line.strip():
            return None if not args.config_port else {"end": True}
        return dict(json.loads(line))

    return next_message


def steps_over(config: dict[str, Any], out: Output, args: Args, channel: socket.socket | None) -> int:
    """Steps mode on a two-way channel: the event channel itself when there is one (vsock under Firecracker:
    the host writes its commands back on the connection the guest opened), else the config's own stream (stdin,
    the QEMU config port). MMDS and a config file are no streams: without the event channel, no steps."""
    if channel is not None:
        return serve_steps(config, out, args.workdir, channel_inbox(channel))
    if not (args.config_file or args.mmds):
        return serve_steps(config, out, args.workdir, inbox_for(args))
    out.emit("line", stream="system", line="smith: steps mode needs a two-way channel (vsock): the console is one-way")
    return 125


def channel_inbox(sock: socket.socket) -> Callable[[], dict[str, Any] | None]:
    """Steps-mode commands read from the event channel, one JSON line each; its end (or a break) ends the job."""
    reader = sock.makefile("rb")

    def next_message() -> dict[str, Any] | None:
        try:
            line = reader.readline()
            return dict(json.loads(line)) if line.strip() else None
        except (OSError, ValueError):  # a break, or a line cut short by one: the host is gone
            return None

    return next_message


def events_channel(args: Args) -> socket.socket | None:
    """The host's event channel: vsock to the host under Firecracker, or ``--events-socket``; None when there is
    none (the kernel has no vsock, the VM no vsock device, or nobody listens)."""
    if not (args.events_socket or args.mmds):
        return None
    import socket

    sock = None
    try:
        if args.events_socket:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(args.events_socket)
        elif args.mmds and hasattr(socket, "AF_VSOCK"):
            sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
            sock.settimeout(10)
            sock.connect((VMADDR_CID_HOST, EVENTS_PORT))
            sock.settimeout(None)
    except OSError:
        if sock is not None:
            sock.close()
        return None
    return sock


def close_channel(sock: socket.socket, stream: IO[str]) -> None:
    """Send the end and wait (bounded) for the host to close its end: then everything sent has arrived."""
    import socket

    try:
        stream.flush()
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(10)
        while sock.recv(4096):
            pass
    except OSError:
        pass
    finally:
        sock.close()


def run(config: dict[str, Any], out: Output, workdir: str) -> tuple[int, str | None]:
    """Run the job; its exit code and, for a runner job, its outcome as the runner saw it."""
    job = config.get("job") or {}
    if not config.get("runner"):
        path = os.path.join(workdir, SCRIPT)
        with open(path, "w", encoding="utf-8") as f:
            f.write(str(job.get("run") or ""))
        os.chmod(path, 0o700)
    out.emit("started", stream="system", line=f"job {job.get('id', '')} starting")
    watch = RunnerWatch()
    runner_dir = str(config.get("runner_dir") or "/opt/actions-runner")
    try:
        user = runner_user(config, workdir) if config.get("runner") else User(os.getuid(), os.getgid(), "")
        if config.get("runner"):
            runner_dir = writable_runner_dir(runner_dir, user, workdir, out)
    except (SetupError, OSError) as exc:
        out.emit("line", stream="system", line=f"smith: cannot start GitHub's runner: {exc}")
        return 1, "failed" if config.get("runner") else None
    code = 0
    env = environment(config, workdir)
    for argv, extra in steps(config, runner_dir):
        idle = float(config.get("runner_idle_seconds") or 0) if argv[0].endswith("/run.sh") else 0.0
        code = run_step(argv, {**env, **extra}, user, workdir, out, watch, idle)
        if code != 0:
            break
    if not config.get("runner"):
        return code, None
    forward_diag(runner_dir, out)
    return code, watch.outcome()


USAGE = """usage: agent.py [--config-file PATH | --config-port PATH | --mmds [IP]] [--out PATH] [--events-socket PATH]
                [--announce] [--set-clock] [--set-net] [--set-hosts] [--preload] [--workdir DIR]

Smith guest agent (no config option: the config is read from stdin)

  --config-file PATH    read the config from this file (waits until it exists)
  --config-port PATH    read the config as one JSON line from this (virtio-serial) port
  --mmds [IP]           read the config from Firecracker's MMDS
  --out PATH            where events go: a path (e.g. a virtio serial port) or - for stdout (default)
  --events-socket PATH  send events over this Unix socket (else vsock under --mmds, else --out)
  --announce            write {"smith": "ready"} while waiting for the config
  --set-clock           set the system clock from the host's (VM only)
  --set-net             take the network identity the host's envelope names (VM only)
  --set-hosts           map the cache's download host to the cache in /etc/hosts (VM only)
  --preload             import what a job may need before announcing ready (a template guest, saved then)
  --workdir DIR         the job's work directory (default: the current one)
"""


def preload() -> None:
    """A template guest (``--preload``: QEMU saves it as soon as it is ready) imports what only some jobs need
    before it says so: a guest restored from it has them in memory and does not import them again before the
    job's first line (0.3 s under emulation for the cache hosts entry's, QEMU translating their code afresh).
    A cold boot does not pay for them."""
    import socket  # noqa: F401  # the cache hosts entry (hosts_entry) and the event channels
    import urllib.parse  # noqa: F401


class Args:
    """The agent's command line. Parsed by hand: argparse and what it imports are a third of the agent's start
    under emulation."""

    FLAGS = ("announce", "set_clock", "set_net", "set_hosts", "preload")
    VALUES = ("config_file", "config_port", "out", "events_socket", "workdir", "hosts_file", "mmds")

    def __init__(self) -> None:
        self.config_file: str | None = None
        self.config_port: str | None = None
        self.events_socket: str | None = None
        self.mmds: str | None = None
        self.out = "-"
        self.workdir = os.getcwd()
        self.hosts_file = "/etc/hosts"
        self.announce = self.set_clock = self.set_net = self.set_hosts = self.preload = False

    @classmethod
    def parse(cls, argv: list[str]) -> Args:
        """``SystemExit`` 2 with a message on stderr for what it does not know, 0 after ``--help``."""
        args = cls()
        i = 0
        while i < len(argv):
            word = argv[i]
            i += 1
            name, eq, value = word.partition("=")
            key = name[2:].replace("-", "_") if name.startswith("--") else ""
            if word in ("-h", "--help"):
                sys.stdout.write(USAGE)
                raise SystemExit(0)
            if key in cls.FLAGS and not eq:
                setattr(args, key, True)
            elif key == "mmds" and not eq and (i == len(argv) or argv[i].startswith("--")):
                args.mmds = MMDS_IP  # --mmds without an address: Firecracker's
            elif key in cls.VALUES:
                if not eq:
                    if i == len(argv):
                        cls.fail(f"{name} needs a value")
                    value = argv[i]
                    i += 1
                setattr(args, key, value)
            else:
                cls.fail(f"unknown argument {word!r}")
        return args

    @staticmethod
    def fail(message: str) -> NoReturn:
        sys.stderr.write(f"{USAGE.splitlines()[0]}\nagent.py: error: {message}\n")
        raise SystemExit(2)


def main() -> int:
    args = Args.parse(sys.argv[1:])
    stream: IO[str] = sys.stdout if args.out == "-" else open(args.out, "w", encoding="utf-8")  # noqa: SIM115
    port = open_port(args.config_port) if args.config_port else None  # open before ready: nothing sent is lost
    if args.preload:
        preload()
    if args.announce:
        stream.write(json.dumps({"smith": "ready", "ts": time.time()}) + "\n")
        stream.flush()
    config = unwrap(read_config(args, port), set_clock=args.set_clock, set_net=args.set_net)
    channel = events_channel(args)
    events = channel.makefile("w", encoding="utf-8") if channel is not None else stream
    out = Output(events, secrets_of(config), fallback=stream if channel is not None else None)
    if args.set_hosts:
        try:
            add_hosts_entry(config, args.hosts_file)
        except OSError as exc:
            out.emit("line", stream="system", line=f"smith: cannot map the cache's download host: {exc}")
    outcome = None
    if config.get("steps"):
        code = steps_over(config, out, args, channel)
    else:
        code, outcome = run(config, out, args.workdir)
    out.emit("exit", stream="system", exit_code=code, **({"outcome": outcome} if outcome else {}))
    if channel is not None:
        close_channel(channel, events)
    return 0


if __name__ == "__main__":
    sys.exit(main())
