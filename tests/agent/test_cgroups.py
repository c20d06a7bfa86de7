"""The cgroup adapter's two layouts. v1 runs for real in test_sandbox_limits (this machine's hierarchy); cgroup
v2 is not mounted with controllers here, so its layout is checked on a stand-in tree of plain files: which
files get which values, that the agent leaves the parent for a leaf of its own before controllers are handed
down, and that nothing is made when the tree is not writable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from smith.adapters.cgroups import Cgroups, Limits


def v2_tree(root: Path, parent: str, procs: str = "") -> Path:
    base = root / parent
    base.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    (base / "cgroup.controllers").write_text("cpu memory pids\n")
    (base / "cgroup.procs").write_text(procs)
    (base / "cgroup.subtree_control").write_text("")
    return base


def test_v2_job_cgroup_under_a_delegated_parent(tmp_path: Path) -> None:
    base = v2_tree(tmp_path, "system.slice/smith-agent.service", procs="4242\n")
    found = Cgroups.detect("/system.slice/smith-agent.service", root=tmp_path)
    assert found is not None and found.version == 2 and found.parents == (base,)
    assert (base / "agent" / "cgroup.procs").read_text() == "4242"  # the agent left for a leaf of its own
    assert (base / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    group = found.create("smith-x-job1", Limits(memory_bytes=2 << 30, pids=512, vcpus=2))
    d = base / "smith-x-job1"
    assert group.dirs == (d,)
    assert (d / "memory.max").read_text() == str(2 << 30)
    assert (d / "memory.swap.max").read_text() == "0"
    assert (d / "pids.max").read_text() == "512"
    assert (d / "cpu.max").read_text() == "200000 100000"
    assert [g.name for g in found.find("smith-x-")] == ["smith-x-job1"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere: the refusal cannot be shown")
def test_a_tree_that_is_not_writable_gives_no_cgroups(tmp_path: Path) -> None:
    base = v2_tree(tmp_path, "ro")
    base.chmod(0o555)
    assert Cgroups.detect("/ro", root=tmp_path) is None


def test_an_agent_in_the_root_cgroup_moves_nobody(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In the root cgroup (a container's, or a host's without systemd) the processes there are everyone's: none
    is moved (the root group may hold processes beside controlled children)."""
    import smith.adapters.cgroups as cg

    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    (tmp_path / "cgroup.procs").write_text("1\n4242\n")
    (tmp_path / "cgroup.subtree_control").write_text("")
    monkeypatch.setattr(cg, "_own_cgroups", lambda: {"": "/"})
    found = Cgroups.detect(None, root=tmp_path)
    assert found is not None and found.parents == (tmp_path,)
    assert not (tmp_path / "agent").exists()
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
