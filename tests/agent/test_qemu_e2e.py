"""End to end with a real VM on this machine: signed webhook -> control plane -> host agent -> QEMU microvm
(software emulation) -> the guest runs the job -> output and success come back.

GitHub's API is the fake in smith.testing.github (the control plane mints a real JIT config request against it);
GitHub's runner is a stub `run.sh` added to the guest image as a second initramfs archive (the kernel unpacks
concatenated cpio archives), so the job runs exactly the path a real runner takes: `run.sh --jitconfig ...`.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from smith.adapters.qemu import QemuConfig, QemuVMM
from smith.agent.client import ControlClient
from smith.agent.daemon import Agent, AgentConfig
from smith.agent.logsink import LocalFiles
from smith.control.app import create_app
from smith.errors import ConfigError
from smith.images.build import DIR, EXEC, FILE, build_image, find_inputs, write_cpio
from smith.testing.servers import ThreadedServer
from tests.agent.test_agent_e2e import wait_state
from tests.conftest import patient
from tests.control.conftest import Control, agent_token, github_app, make_settings, queued_payload

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="no qemu-system-x86_64 (qemu-system-x86)"),
]

RUNNER = (
    '#!/bin/sh\necho "runner $# args, given $(printf %s "$ACTIONS_RUNNER_INPUT_JITCONFIG" | wc -c) bytes"\n'
    'echo "kernel $(uname -r)"\necho "Running job: build"\necho "Job build completed with result: Succeeded"\n'
)
# The image's users plus GitHub's runner's own (the guest runs the runner as it: the runner refuses root).
PASSWD = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\nrunner:x:1001:1001::/work:/bin/sh\n"


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sq", dir="/tmp"))  # Unix socket paths must stay short
    yield path
    shutil.rmtree(path, ignore_errors=True)


def image_with_runner(out: Path) -> tuple[Path, Path]:
    try:
        image = build_image(out, find_inputs())
    except ConfigError as exc:
        pytest.skip(f"cannot build a guest image here: {exc.message}")
    extra = io.BytesIO()
    write_cpio(
        extra,
        [
            ("opt", DIR, None),
            ("opt/actions-runner", DIR, None),
            ("opt/actions-runner/run.sh", EXEC, RUNNER),
            ("etc/passwd", FILE, PASSWD),
        ],
    )
    initrd = out / "initrd-with-runner.cpio"
    initrd.write_bytes(image.initrd.read_bytes() + extra.getvalue())
    return image.vmlinux, initrd


async def test_webhook_to_qemu_microvm_and_back(redis_url: str, tmp_path: Path, short_dir: Path) -> None:
    kernel, initrd = image_with_runner(tmp_path)
    with github_app() as (fake, credentials):
        settings = make_settings(redis_url, lease_ttl_seconds=120)
        with ThreadedServer(create_app(settings, credentials=credentials)) as srv:
            control = Control(srv.url, settings, srv)
            vmm = QemuVMM(short_dir, QemuConfig(kernel=kernel, initrd=initrd, accel="tcg"))
            output = LocalFiles(tmp_path / "logs")
            agent = Agent(
                AgentConfig(
                    agent_id="qemu-host",
                    hostname="qemu-host",
                    vcpus=2,
                    memory_mib=4096,
                    max_vms=2,
                    drain_seconds=5,
                    lease_wait_seconds=5,
                ),
                ControlClient(control.url, agent_token("qemu-host")),
                vmm,
                output,
            )
            task = asyncio.create_task(agent.run())
            try:
                await asyncio.wait_for(agent.registered.wait(), patient(30))
                r = await asyncio.to_thread(control.deliver, queued_payload(9001, ["self-hosted", "smith-2vcpu"]))
                assert r.status_code == 202 and r.json()["outcome"] == "queued"
                # The runner ran a job: Smith waits for GitHub to say which (here: this one, on its runner).
                await wait_state(control, "9001", {"running"}, timeout=patient(240))
                while agent.jobs:
                    await asyncio.sleep(0.05)
                done = queued_payload(9001, ["self-hosted", "smith-2vcpu"], action="completed")
                done["workflow_job"].update(runner_name="smith-9001-1", conclusion="success")
                assert (await asyncio.to_thread(control.deliver, done)).status_code == 202
                job = await wait_state(control, "9001", {"succeeded", "failed"}, timeout=patient(240))
            finally:
                await agent.shutdown()
                await task
    assert job["state"] == "succeeded", job
    assert job["exit_code"] == 0
    events = [json.loads(line) for line in output.path("9001").read_text().splitlines()]
    lines = [e["line"] for e in events if e["type"] == "line" and e["stream"] == "stdout"]
    assert lines[0].startswith("runner 0 args, given ") and int(lines[0].split()[-2]) > 100
    assert lines[1].startswith("kernel ")  # the guest's own kernel answered
    assert events[-1]["type"] == "exit" and events[-1]["exit_code"] == 0
    [runner] = fake.runners_in("repo:codertocat/hello-world")
    assert runner["name"] == "smith-9001-1"
    assert not list(short_dir.glob("qemu-*"))  # the VM and its files are gone
