"""The check behind the ``qemu_base`` fixture (tests/conftest.py): which qemu processes a test left behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import qemu_processes


def test_a_qemu_naming_the_base_dir_is_found_and_others_are_not(tmp_path: Path) -> None:
    base = tmp_path / "sqbase"

    def looks_like_qemu(path: str) -> subprocess.Popen[bytes]:  # a command line like one of a test's VMs
        argv = ["qemu-system-x86_64", "-c", "import time; time.sleep(600)", f"path={path}"]
        return subprocess.Popen(argv, executable=sys.executable)

    mine, other = looks_like_qemu(f"{base}/qemu-vm/console.log"), looks_like_qemu(f"{tmp_path}/elsewhere")
    try:
        assert qemu_processes(base) == [mine.pid]
    finally:
        for proc in (mine, other):
            proc.kill()
            proc.wait()
    assert qemu_processes(base) == []
