"""Item 15: the guest image follows the host's kernel and python; the guest agent runs on the oldest python."""

from __future__ import annotations

import ast
import glob
import json
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from smith.adapters.qemu import QemuVMM
from smith.agent import backends
from smith.errors import ConfigError, VMError
from smith.images import refresh
from smith.images.build import find_inputs

AGENT = Path(__file__).resolve().parents[2] / "src" / "smith" / "guest" / "agent.py"
OLDEST_PYTHON = (3, 9)  # RHEL 9's python3; Ubuntu 22.04 has 3.10, Debian 12 3.11, Ubuntu 24.04 3.12


def qemu_settings(data_dir: Path, backend: str = "qemu") -> SimpleNamespace:
    return SimpleNamespace(
        agent_kernel=None,
        agent_rootfs=None,
        agent_qemu_bin="qemu-system-x86_64",
        agent_network_dns=None,
        agent_backend=backend,
        agent_cgroup_parent=None,
        agent_sandbox_uid_base=100_000,
        data_dir=data_dir,
        work_dir=data_dir / "agent",
    )


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="no qemu-system-x86_64")
def test_the_agent_builds_the_image_its_host_now_needs(tmp_path: Path) -> None:
    try:
        find_inputs()
    except ConfigError as exc:
        pytest.skip(f"cannot build a guest image here: {exc.message}")
    # An image for the kernel before an unattended upgrade is all there is: the agent builds the current one.
    (tmp_path / "images" / "0123456789abcdef").mkdir(parents=True)
    (tmp_path / "images" / "0123456789abcdef" / "manifest.json").write_text("{}")
    vmm = QemuVMM.from_settings(qemu_settings(tmp_path), tmp_path / "qemu")
    manifest = json.loads((vmm.config.kernel.parent / "manifest.json").read_text())
    assert manifest["key"] != "0123456789abcdef" and vmm.config.initrd is not None


def test_a_host_that_cannot_build_it_gets_one_clear_error_and_auto_takes_the_sandbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_busybox(kernel: Path | None = None) -> None:
        raise ConfigError("cannot build the guest image, missing: a static busybox (apt-get install busybox-static)")

    monkeypatch.setattr(refresh, "find_inputs", no_busybox)
    with pytest.raises(VMError) as err:
        refresh.current_image(tmp_path)
    assert "static busybox" in err.value.message and "SMITH_AGENT_KERNEL" in err.value.message
    found = {
        "auto": "qemu",
        "backends": {
            "qemu": {"available": True, "reason": "qemu with KVM", "kvm": True},
            "sandbox": {"available": True, "reason": "bwrap", "launcher": "bwrap"},
        },
    }
    monkeypatch.setattr(backends, "probe", lambda _settings: found)
    vmm, why = backends.select_backend(qemu_settings(tmp_path, "auto"))
    assert vmm.backend == "sandbox" and "qemu cannot start" in why and "static busybox" in why
    with pytest.raises(VMError):  # asked for by name: no silent substitute
        backends.select_backend(qemu_settings(tmp_path, "qemu"))


def test_the_guest_agent_parses_as_the_oldest_supported_python() -> None:
    ast.parse(AGENT.read_text(), feature_version=OLDEST_PYTHON)


def oldest_python() -> str | None:
    name = "python{}.{}".format(*OLDEST_PYTHON)
    candidates = [shutil.which(name), *glob.glob(f"/root/.pyenv/versions/3.9*/bin/{name}"), f"/usr/bin/{name}"]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            ok = subprocess.run([candidate, "-c", "pass"], capture_output=True, check=False).returncode == 0
            if ok:
                return candidate
    return None


def test_the_guest_agent_runs_a_job_on_the_oldest_supported_python(tmp_path: Path) -> None:
    python = oldest_python()
    if python is None:
        pytest.skip("no python{}.{} on this machine".format(*OLDEST_PYTHON))
    config = {"job": {"id": "j1", "runner_class": "x", "vcpus": 1, "memory_mib": 512, "run": "echo hi; exit 4"}}
    res = subprocess.run(
        [python, "-I", "-S", str(AGENT), "--workdir", str(tmp_path)],
        input=json.dumps(config),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    events = [json.loads(line) for line in res.stdout.splitlines()]
    assert res.returncode == 0, res.stderr
    assert [e.get("line") for e in events if e["type"] == "line"] == ["hi"] and events[-1]["exit_code"] == 4


def test_the_agent_boots_smiths_kernel_once_one_is_built(tmp_path: Path) -> None:
    """`smith image kernel` leaves kernels/current in the data dir: the agent's image is then built on it."""
    try:
        find_inputs()
    except ConfigError as exc:
        pytest.skip(f"no image inputs here: {exc.message}")
    debian = refresh.current_image(tmp_path)
    built = tmp_path / "kernels" / "0123456789abcdef"
    built.mkdir(parents=True)
    (built / "vmlinux").write_bytes(b"\x7fELF" + b"\0" * 60 + b"smith kernel")
    (built / "manifest.json").write_text("{}")
    (tmp_path / "kernels" / "current").symlink_to(built.name)
    image = refresh.current_image(tmp_path)
    assert image.key != debian.key and image.vmlinux.read_bytes() == (built / "vmlinux").read_bytes()
