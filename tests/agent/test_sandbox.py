"""The bubblewrap sandbox backend: a job runs, its output and exit code come back, and it is contained."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from smith.adapters.sandbox import SandboxVMM
from smith.domain.vms import VMShape
from smith.errors import ConfigError, VMError
from smith.images.build import build_image, find_inputs, unpack_cpio
from smith.wire.agent import JobSpec, RunnerCredential, ServiceAccess
from smith.wire.guest import GuestConfig, GuestEvent

BWRAP = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bwrap is not installed (apt install bubblewrap)")
SHAPE = VMShape("self-hosted", 1, 2048)
SRC = Path(__file__).resolve().parents[2] / "src"


def config(run: str, **extra: object) -> GuestConfig:
    return GuestConfig(job=JobSpec(id="j1", runner_class="self-hosted", vcpus=1, memory_mib=2048, run=run), **extra)


@pytest.fixture
async def vmm(tmp_path: Path, launcher: str) -> AsyncIterator[SandboxVMM]:
    yield SandboxVMM(tmp_path / "sandboxes", launcher=launcher)


async def run_job(vmm: SandboxVMM, cfg: GuestConfig, vm_id: str = "t") -> tuple[list[GuestEvent], Path]:
    machine = await vmm.boot(SHAPE, vm_id)
    root = machine.root
    await machine.assign(cfg)
    events = [e async for e in machine.events()]
    await machine.stop()
    return events, root


def lines(events: list[GuestEvent], stream: str = "stdout") -> list[str]:
    return [e.line for e in events if e.type == "line" and e.stream == stream]


async def test_runs_a_script_and_reports_output_and_exit_code(vmm: SandboxVMM) -> None:
    events, root = await run_job(vmm, config("echo hello; echo oops >&2; exit 7"))
    assert events[0].type == "started" and events[-1].type == "exit"
    assert events[-1].exit_code == 7
    assert lines(events) == ["hello"] and lines(events, "stderr") == ["oops"]
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    assert not root.exists()  # stop() removed everything


async def test_a_script_larger_than_argv_allows(vmm: SandboxVMM) -> None:
    big = "\n".join(f"x{i}=1  # {'.' * 100}" for i in range(3000)) + "\necho done"  # ~330 KB
    events, _ = await run_job(vmm, config(big))
    assert lines(events) == ["done"] and events[-1].exit_code == 0


async def test_failing_command_under_bash_e(vmm: SandboxVMM) -> None:
    events, _ = await run_job(vmm, config("false\necho not reached"))
    assert events[-1].exit_code == 1 and "not reached" not in lines(events)


async def test_no_network_but_loopback(vmm: SandboxVMM) -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    probe = (
        "import socket\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=2); print('CONNECTED')\n"
        "except OSError as e:\n"
        "    print('BLOCKED', type(e).__name__)\n"
    )
    script = f"python3 -c \"{probe}\"\ntail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '"
    events, _ = await run_job(vmm, config(script))
    srv.close()
    out = lines(events)
    assert out[0].startswith("BLOCKED"), out
    assert out[1:] == ["lo"]  # the only interface


async def test_cannot_see_or_write_the_host(vmm: SandboxVMM, tmp_path: Path) -> None:
    secret = tmp_path / "host-secret"
    secret.write_text("top secret")
    script = "\n".join(
        [
            "echo pid=$$",
            f"cat {secret} 2>/dev/null || echo no-secret",
            "test -e /root && echo root-visible || echo no-root",
            "touch /usr/smith-probe 2>/dev/null || echo usr-readonly",
            "touch /etc/smith-probe 2>/dev/null || echo etc-readonly",
            "echo data > /work/out && echo work-writable",
            "id -u",
        ]
    )
    events, _ = await run_job(vmm, config(script))
    out = lines(events)
    assert out[0] == "pid=2" or out[0].startswith("pid=")
    assert "top secret" not in out and "no-secret" in out and "no-root" in out
    assert "usr-readonly" in out and "etc-readonly" in out and "work-writable" in out
    assert not Path("/usr/smith-probe").exists() and not Path("/etc/smith-probe").exists()
    if os.geteuid() == 0:
        assert int(out[-1]) >= 100_000  # the job never runs as the agent's root, nor as a uid other jobs share


async def test_two_sandboxes_do_not_see_each_other(vmm: SandboxVMM) -> None:
    a = await vmm.boot(SHAPE, "a")
    b = await vmm.boot(SHAPE, "b")
    try:
        await a.assign(config("echo mine > /work/file; sleep 1; cat /work/file"))
        await b.assign(config("ls /work; ls /proc | grep -c '^[0-9]'"))
        ev_a = [e async for e in a.events()]
        ev_b = [e async for e in b.events()]
    finally:
        await a.stop()
        await b.stop()
    assert lines(ev_a) == ["mine"]
    out_b = lines(ev_b)
    assert "file" not in out_b
    assert int(out_b[-1]) <= 6  # its own pid namespace: only its own few processes


async def test_secrets_are_masked_and_cache_env_is_set(vmm: SandboxVMM) -> None:
    cfg = config(
        'echo "token is $ACTIONS_RUNTIME_TOKEN"; echo "url $ACTIONS_CACHE_URL"',
        cache=ServiceAccess(url="http://10.0.0.1:9000", token="cache-token-abcdef"),
    )
    events, _ = await run_job(vmm, cfg)
    assert lines(events) == ["token is ***", "url http://10.0.0.1:9000/"]


async def test_a_job_resolves_the_caches_download_host_to_the_cache(vmm: SandboxVMM) -> None:
    """The sandbox's /etc/hosts is a copy of the system's the host writes the lease's download host into."""
    resolve = (
        "import socket\ntry: print(socket.gethostbyname('smith.blob.core.windows.net'))\nexcept OSError: print('-')"
    )
    script = f'python3 -c "{resolve}"; grep -c localhost /etc/hosts'
    cache = ServiceAccess(url="http://10.9.8.7:8090", token="t", download_host="smith.blob.core.windows.net")
    events, _ = await run_job(vmm, config(script, cache=cache))
    assert lines(events)[0] == "10.9.8.7" and int(lines(events)[1]) >= 1, events  # the system's entries kept
    events, _ = await run_job(vmm, config(script, cache=ServiceAccess(url="http://10.9.8.7:8090", token="t")))
    assert lines(events)[0] == "-", events  # another sandbox, no download host: not resolved


async def test_jit_runner_is_started_and_its_config_masked(tmp_path: Path, launcher: str) -> None:
    probe = SandboxVMM(tmp_path / "sbx", launcher=launcher)
    runner = probe.base_dir / "runner"  # somewhere the sandbox user (nobody) can reach, like /opt
    runner.mkdir()
    (runner / "run.sh").write_text(
        textwrap.dedent("""\
        #!/bin/sh
        echo "runner got $# args, ${#ACTIONS_RUNNER_INPUT_JITCONFIG} chars: $ACTIONS_RUNNER_INPUT_JITCONFIG"
        """)
    )
    (runner / "run.sh").chmod(0o755)
    runner.chmod(0o755)
    vmm = SandboxVMM(tmp_path / "sbx", runner_dir=runner, launcher=launcher)
    cfg = config("", runner=RunnerCredential(kind="jit", value="eyJhIjoiYiJ9-jit-config"))
    events, _ = await run_job(vmm, cfg)
    assert lines(events) == ["runner got 0 args, 23 chars: ***"], events
    assert events[-1].exit_code == 0 and events[-1].outcome == "no_job"  # it printed no "Running job"


async def test_long_and_binary_lines(vmm: SandboxVMM) -> None:
    script = "head -c 200000 /dev/zero | tr '\\0' a; echo; printf '\\377\\376bin\\n'; echo end"
    events, _ = await run_job(vmm, config(script))
    out = lines(events)
    assert out[0].endswith("[smith: line cut at 64 KiB]") and len(out[0]) < 70_000
    assert out[1] == "\ufffd\ufffdbin" and out[2] == "end"


async def test_memory_limit_is_enforced(vmm: SandboxVMM) -> None:
    events, _ = await run_job(vmm, config("python3 -c 'b = bytearray(3 * 1024**3); print(len(b))'"))
    assert events[-1].exit_code != 0
    assert any("MemoryError" in line for line in lines(events, "stderr"))


async def test_warm_sandbox_waits_for_its_job(vmm: SandboxVMM) -> None:
    machine = await vmm.boot(SHAPE, "warm")
    await asyncio.sleep(0.3)  # booted, idle: nothing runs until the config arrives
    assert machine.proc.returncode is None
    started = time.monotonic()
    await machine.assign(config("echo go"))
    events = [e async for e in machine.events()]
    await machine.stop()
    assert lines(events) == ["go"]
    assert time.monotonic() - started < 30


ORPHAN = """
import asyncio, sys
sys.path.insert(0, SRC)
from pathlib import Path
from smith.adapters.sandbox import SandboxVMM
from smith.domain.vms import VMShape
from smith.errors import ConfigError, VMError
from smith.images.build import build_image, find_inputs, unpack_cpio
from smith.wire.agent import JobSpec
from smith.wire.guest import GuestConfig
async def main():
    vmm = SandboxVMM(Path(BASE), launcher=LAUNCHER)
    m = await vmm.boot(VMShape("x", 1, 1024), "orphan")
    await m.assign(GuestConfig(job=JobSpec(id="1", runner_class="x", vcpus=1, memory_mib=1024, run="sleep 300")))
    print(m.proc.pid, flush=True)
    await asyncio.sleep(300)
asyncio.run(main())
"""


async def test_cleanup_after_the_agent_is_killed(tmp_path: Path, launcher: str) -> None:
    """A sandbox whose agent died with SIGKILL: the next agent's cleanup_leftovers() removes it."""
    base = tmp_path / "sbx"
    code = f"SRC = {str(SRC)!r}\nBASE = {str(base)!r}\nLAUNCHER = {launcher!r}\n" + ORPHAN
    agent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert agent.stdout is not None
    line = agent.stdout.readline()
    while not line.strip().isdigit():  # skip log lines
        line = agent.stdout.readline()
    pid = int(line)
    agent.kill()
    agent.wait()
    vmm = SandboxVMM(base)
    assert len(list(vmm.base_dir.glob("sbx-*"))) == 1
    removed = await vmm.cleanup_leftovers()
    assert removed == ["sbx-orphan"] and not list(vmm.base_dir.glob("sbx-*"))
    for _ in range(50):
        if _gone(pid):
            break
        await asyncio.sleep(0.1)
    assert _gone(pid)


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0]
    except (OSError, IndexError):
        return True
    return "zombie" in state.lower()


@BWRAP  # the unshare launcher needs util-linux's setpriv in the root, which the guest image has not
async def test_an_image_directory_can_be_the_root(tmp_path: Path) -> None:
    """The guest image's root (busybox + python3 + the agent), unpacked, replaces the host's system dirs."""
    try:
        inputs = find_inputs()
    except ConfigError as exc:
        pytest.skip(f"no guest image inputs here: {exc.message}")
    image = build_image(tmp_path / "data", inputs)
    probe = SandboxVMM(tmp_path / "sbx")
    root = probe.base_dir / "root"
    unpack_cpio(image.initrd, root)
    root.chmod(0o755)
    vmm = SandboxVMM(tmp_path / "sbx", root_dir=root)
    events, _ = await run_job(
        vmm, config('read -r line < /etc/hosts; echo "$line"; test -e /usr/bin/apt || echo no-apt')
    )
    assert lines(events) == ["127.0.0.1 localhost smith-guest", "no-apt"], events
    assert events[-1].exit_code == 0
    with pytest.raises(VMError, match="not a root filesystem"):
        SandboxVMM(tmp_path / "sbx", root_dir=tmp_path / "empty")
