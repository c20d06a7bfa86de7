"""The fake Firecracker refuses what Firecracker refuses: unknown calls, bad bodies, calls out of order."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from smith.testing.fcguest import Console, Guest
from smith.testing.firecracker import POST_BOOT, PRE_BOOT, FakeFirecracker, Spec
from tests.agent.firecracker_support import SPEC_PATH


@pytest.fixture(scope="module")
def spec() -> Spec:
    return Spec(SPEC_PATH)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    out = {}
    for name in ("vmlinux", "rootfs", "log", "metrics"):
        (tmp_path / name).write_bytes(b"")
        out[name] = str(tmp_path / name)
    return out


@pytest.fixture
def fc(spec: Spec) -> FakeFirecracker:
    return FakeFirecracker(spec, instance_id="vm-1")


def call(fc: FakeFirecracker, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    return fc.handle(method, path, b"" if body is None else json.dumps(body).encode())


def configure(fc: FakeFirecracker, files: dict[str, str]) -> None:
    assert call(fc, "PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 256})[0] == 204
    assert call(fc, "PUT", "/boot-source", {"kernel_image_path": files["vmlinux"]})[0] == 204
    drive = {"drive_id": "rootfs", "path_on_host": files["rootfs"], "is_root_device": True, "is_read_only": True}
    assert call(fc, "PUT", "/drives/rootfs", drive)[0] == 204


def fault(result: tuple[int, Any]) -> str:
    status, body = result
    assert status == 400, body
    message: str = body["fault_message"]
    return message


def test_every_rule_names_a_real_operation(spec: Spec) -> None:
    for method, template in PRE_BOOT | POST_BOOT:
        assert (method, template) in spec.operations, f"{method} {template} is not in the spec"


def test_get_root_describes_the_instance(fc: FakeFirecracker) -> None:
    status, body = call(fc, "GET", "/")
    assert status == 200
    assert body == {"app_name": "Firecracker", "id": "vm-1", "state": "Not started", "vmm_version": "1.16.1"}


@pytest.mark.parametrize(
    ("method", "path"), [("PUT", "/nope"), ("DELETE", "/machine-config"), ("POST", "/actions"), ("GET", "/drives/x/y")]
)
def test_unknown_method_or_path_is_refused(fc: FakeFirecracker, method: str, path: str) -> None:
    assert "Invalid request method and/or path" in fault(call(fc, method, path, {}))


@pytest.mark.parametrize(
    ("path", "body", "words"),
    [
        ("/machine-config", {"vcpu_count": 2}, "'mem_size_mib' is a required property"),
        ("/machine-config", {"vcpu_count": 0, "mem_size_mib": 128}, "less than the minimum"),
        ("/machine-config", {"vcpu_count": 33, "mem_size_mib": 128}, "greater than the maximum"),
        ("/machine-config", {"vcpu_count": "2", "mem_size_mib": 128}, "is not of type 'integer'"),
        ("/machine-config", {"vcpu_count": 1, "mem_size_mib": 128, "vcpus": 1}, "'vcpus' was unexpected"),
        ("/boot-source", {"boot_args": "console=ttyS0"}, "'kernel_image_path' is a required property"),
        ("/drives/rootfs", {"drive_id": "rootfs", "path_on_host": "/x"}, "'is_root_device' is a required"),
        ("/drives/rootfs", {"drive_id": "rootfs", "is_root_device": True, "cache_type": "Fast"}, "is not one of"),
        ("/mmds/config", {"version": "V2"}, "'network_interfaces' is a required property"),
        ("/mmds/config", {"version": "V3", "network_interfaces": []}, "'V3' is not one of"),
        ("/vsock", {"guest_cid": 2, "uds_path": "/v.sock"}, "less than the minimum of 3"),
        ("/actions", {"action_type": "Reboot"}, "'Reboot' is not one of"),
        ("/snapshot/load", {"mem_file_path": "/m"}, "'snapshot_path' is a required property"),
    ],
)
def test_bad_bodies_are_refused_with_the_reason(fc: FakeFirecracker, path: str, body: Any, words: str) -> None:
    message = fault(call(fc, "PUT", path, body))
    assert "deserializing the json body" in message and words in message
    assert fc.state == "Not started" and not fc.config and not fc.drives  # nothing applied


def test_malformed_json_and_missing_body(fc: FakeFirecracker) -> None:
    assert "deserializing" in fault(fc.handle("PUT", "/boot-source", b"{not json"))
    assert fault(call(fc, "PUT", "/actions")) == "Empty PUT request."


def test_pre_boot_calls_are_refused_after_start(fc: FakeFirecracker, files: dict[str, str]) -> None:
    configure(fc, files)
    assert call(fc, "PUT", "/actions", {"action_type": "InstanceStart"})[0] == 204
    assert fc.state == "Running"
    for path, body in [
        ("/machine-config", {"vcpu_count": 1, "mem_size_mib": 128}),
        ("/boot-source", {"kernel_image_path": files["vmlinux"]}),
        ("/network-interfaces/eth0", {"iface_id": "eth0", "host_dev_name": "tap0"}),
        ("/vsock", {"guest_cid": 3, "uds_path": "/tmp/v"}),
        ("/snapshot/load", {"snapshot_path": "/s", "mem_file_path": "/m"}),
    ]:
        assert "not supported after starting" in fault(call(fc, "PUT", path, body)), path
    assert "not supported after starting" in fault(call(fc, "PUT", "/actions", {"action_type": "InstanceStart"}))


def test_post_boot_calls_are_refused_before_start(fc: FakeFirecracker) -> None:
    assert "before starting" in fault(call(fc, "PATCH", "/vm", {"state": "Paused"}))
    assert "before starting" in fault(
        call(fc, "PUT", "/snapshot/create", {"snapshot_path": "/s", "mem_file_path": "/m"})
    )
    assert "before starting" in fault(call(fc, "PUT", "/actions", {"action_type": "SendCtrlAltDel"}))


def test_start_needs_a_kernel(fc: FakeFirecracker) -> None:
    assert fault(call(fc, "PUT", "/actions", {"action_type": "InstanceStart"})) == (
        "Cannot start microvm without kernel configuration."
    )


def test_files_named_in_bodies_must_exist(fc: FakeFirecracker, tmp_path: Path) -> None:
    assert "No such file" in fault(call(fc, "PUT", "/boot-source", {"kernel_image_path": str(tmp_path / "none")}))
    drive = {"drive_id": "d", "path_on_host": str(tmp_path / "none"), "is_root_device": False}
    assert "No such file" in fault(call(fc, "PUT", "/drives/d", drive))
    assert "No such file" in fault(call(fc, "PUT", "/metrics", {"metrics_path": str(tmp_path / "none")}))


def test_ids_in_path_and_body_must_agree(fc: FakeFirecracker, files: dict[str, str]) -> None:
    drive = {"drive_id": "other", "path_on_host": files["rootfs"], "is_root_device": True}
    assert "does not match" in fault(call(fc, "PUT", "/drives/rootfs", drive))
    assert "does not match" in fault(
        call(fc, "PUT", "/network-interfaces/eth0", {"iface_id": "eth1", "host_dev_name": "t"})
    )


def test_only_one_root_drive(fc: FakeFirecracker, files: dict[str, str]) -> None:
    configure(fc, files)
    second = {"drive_id": "other", "path_on_host": files["rootfs"], "is_root_device": True}
    assert "root block device already exists" in fault(call(fc, "PUT", "/drives/other", second))


def test_a_drive_put_again_keeps_its_place_and_a_root_device_goes_first(
    fc: FakeFirecracker, files: dict[str, str]
) -> None:
    """Firecracker's BlockBuilder: the same id replaces the drive in place; the root device is vda."""
    for drive_id in ("a", "b"):
        body = {"drive_id": drive_id, "path_on_host": files["log"], "is_root_device": False}
        assert call(fc, "PUT", f"/drives/{drive_id}", body)[0] == 204
    assert (
        call(fc, "PUT", "/drives/a", {"drive_id": "a", "path_on_host": files["metrics"], "is_root_device": False})[0]
        == 204
    )
    root = {"drive_id": "r", "path_on_host": files["rootfs"], "is_root_device": True}
    assert call(fc, "PUT", "/drives/r", root)[0] == 204
    bystander = subprocess.Popen(["sleep", "60"])  # another child of this process (the test's Valkey, say)
    guest = Guest(fc, asyncio.Event(), console=Console(os.open(os.devnull, os.O_WRONLY)))
    try:
        names = {dev: d["drive_id"] for dev, d in guest.devices().items()}
    finally:
        guest.cleanup()
    try:
        # A guest played inside another process ends only what it started: it once killed every child of the
        # test process, the session's Valkey among them, and 271 later tests failed.
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
    assert names == {"vda": "r", "vdb": "a", "vdc": "b"}


@pytest.mark.parametrize("bad", ["sticky-0", "a.b", "x/"])
def test_drive_and_interface_ids_are_letters_digits_and_underscores(fc: FakeFirecracker, bad: str) -> None:
    drive = {"drive_id": bad, "path_on_host": "/x", "is_root_device": False}
    message = fault(call(fc, "PUT", f"/drives/{bad}", drive))
    assert "alphanumeric characters and underscores" in message or "Invalid request" in message
    iface = {"iface_id": bad, "host_dev_name": "tap0"}
    message = fault(call(fc, "PUT", f"/network-interfaces/{bad}", iface))
    assert "alphanumeric characters and underscores" in message or "Invalid request" in message
    assert not fc.drives and not fc.ifaces


def test_a_drive_is_opened_as_it_will_be_used(fc: FakeFirecracker, tmp_path: Path) -> None:
    """Firecracker opens the backing file at PUT: read-write unless is_read_only (a directory cannot be either)."""
    (tmp_path / "d").mkdir()
    drive = {"drive_id": "d", "path_on_host": str(tmp_path / "d"), "is_root_device": False, "is_read_only": False}
    assert "Unable to create the virtio block device" in fault(call(fc, "PUT", "/drives/d", drive))
    (tmp_path / "ro").write_bytes(b"\0" * 512)
    (tmp_path / "ro").chmod(0o444)
    drive = {"drive_id": "d", "path_on_host": str(tmp_path / "ro"), "is_root_device": False, "is_read_only": True}
    assert call(fc, "PUT", "/drives/d", drive)[0] == 204
    if os.geteuid() != 0:  # root may write any file
        drive["is_read_only"] = False
        assert "Permission denied" in fault(call(fc, "PUT", "/drives/d", drive))


def test_mmds_config_needs_known_interfaces(fc: FakeFirecracker) -> None:
    assert "empty" in fault(call(fc, "PUT", "/mmds/config", {"network_interfaces": []}))
    assert "does not correspond" in fault(call(fc, "PUT", "/mmds/config", {"network_interfaces": ["eth0"]}))
    assert call(fc, "PUT", "/network-interfaces/eth0", {"iface_id": "eth0", "host_dev_name": "tap0"})[0] == 204
    assert call(fc, "PUT", "/mmds/config", {"version": "V2", "network_interfaces": ["eth0"]})[0] == 204


def test_metrics_only_once(fc: FakeFirecracker, files: dict[str, str]) -> None:
    assert call(fc, "PUT", "/metrics", {"metrics_path": files["metrics"]})[0] == 204
    assert fault(call(fc, "PUT", "/metrics", {"metrics_path": files["metrics"]})) == (
        "Reinitialization of metrics not allowed."
    )


def test_mmds_data_before_and_after_start(fc: FakeFirecracker, files: dict[str, str]) -> None:
    assert "not initialized" in fault(call(fc, "PATCH", "/mmds", {"a": 1}))
    assert call(fc, "PUT", "/mmds", {"a": {"x": 1}})[0] == 204
    configure(fc, files)
    call(fc, "PUT", "/actions", {"action_type": "InstanceStart"})
    assert call(fc, "PATCH", "/mmds", {"a": {"y": 2, "x": None}})[0] == 204
    assert call(fc, "GET", "/mmds") == (200, {"a": {"y": 2}})


def test_snapshot_create_needs_a_paused_vm(fc: FakeFirecracker, files: dict[str, str], tmp_path: Path) -> None:
    configure(fc, files)
    call(fc, "PUT", "/actions", {"action_type": "InstanceStart"})
    params = {"snapshot_path": str(tmp_path / "s"), "mem_file_path": str(tmp_path / "m")}
    assert "must be paused" in fault(call(fc, "PUT", "/snapshot/create", params))
    assert call(fc, "PATCH", "/vm", {"state": "Paused"})[0] == 204
    assert call(fc, "PUT", "/snapshot/create", params)[0] == 204
    assert (tmp_path / "s").exists() and (tmp_path / "m").exists()


def test_snapshot_load_only_into_a_fresh_process(spec: Spec, files: dict[str, str], tmp_path: Path) -> None:
    source = FakeFirecracker(spec)
    configure(source, files)
    call(source, "PUT", "/network-interfaces/eth0", {"iface_id": "eth0", "host_dev_name": "tap0"})
    call(source, "PUT", "/actions", {"action_type": "InstanceStart"})
    call(source, "PATCH", "/vm", {"state": "Paused"})
    params = {"snapshot_path": str(tmp_path / "s"), "mem_file_path": str(tmp_path / "m")}
    assert call(source, "PUT", "/snapshot/create", params)[0] == 204

    configured = FakeFirecracker(spec)
    call(configured, "PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 128})
    load = {
        "snapshot_path": str(tmp_path / "s"),
        "mem_backend": {"backend_type": "File", "backend_path": str(tmp_path / "m")},
        "resume_vm": True,
        "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap9"}],
    }
    assert "not allowed after configuring boot-specific resources" in fault(
        call(configured, "PUT", "/snapshot/load", load)
    )

    fresh = FakeFirecracker(spec)
    assert call(fresh, "PUT", "/metrics", {"metrics_path": files["metrics"]})[0] == 204  # allowed first
    assert call(fresh, "PUT", "/snapshot/load", load)[0] == 204
    assert fresh.state == "Running"
    assert fresh.ifaces["eth0"]["host_dev_name"] == "tap9"
    both = {**load, "mem_file_path": str(tmp_path / "m")}
    assert "Exactly one" in fault(call(FakeFirecracker(spec), "PUT", "/snapshot/load", both))


def test_calls_are_recorded_in_order(fc: FakeFirecracker, files: dict[str, str], tmp_path: Path) -> None:
    fc.record = tmp_path / "calls.jsonl"
    configure(fc, files)
    call(fc, "PATCH", "/vm", {"state": "Paused"})
    expected = [
        ("PUT", "/machine-config", 204),
        ("PUT", "/boot-source", 204),
        ("PUT", "/drives/rootfs", 204),
        ("PATCH", "/vm", 400),
    ]
    assert [(c.method, c.path, c.status) for c in fc.calls] == expected
    recorded = [json.loads(line) for line in fc.record.read_text().splitlines()]
    assert [(r["method"], r["path"], r["status"]) for r in recorded] == expected


def test_the_development_spec_loads_too(spec: Spec) -> None:
    dev = Spec(Path(__file__).parents[1] / "fixtures" / "specs" / "firecracker-api.yaml")
    assert dev.version.startswith("1.17")
    assert set(spec.operations) <= set(dev.operations)  # nothing we use disappeared in the next version


def test_payloads_over_the_api_limit_are_refused(fc: FakeFirecracker) -> None:
    raw = json.dumps({"blob": "x" * 51200}).encode()
    assert "larger than the limit of 51200" in fault(fc.handle("PUT", "/mmds", raw))
    assert fc.mmds is None


def test_mmds_data_store_limit(spec: Spec) -> None:
    fc = FakeFirecracker(spec, max_payload=1_000_000, mmds_limit=100)
    assert "data store limit is 100 bytes" in fault(call(fc, "PUT", "/mmds", {"blob": "x" * 200}))
    assert call(fc, "PUT", "/mmds", {"a": 1})[0] == 204
    assert "data store limit" in fault(call(fc, "PATCH", "/mmds", {"blob": "x" * 200}))
    assert fc.mmds == {"a": 1}


def test_a_network_interface_needs_its_tap_in_this_namespace(spec: Spec) -> None:
    fc = FakeFirecracker(spec, check_taps=True)  # as Firecracker: it opens the tap when the interface is added
    body = {"iface_id": "eth0", "host_dev_name": "smt-no-such-tap", "guest_mac": "06:00:00:00:00:02"}
    status, answer = fc.handle("PUT", "/network-interfaces/eth0", json.dumps(body).encode())
    assert status == 400 and "Invalid TUN/TAP Backend provided by smt-no-such-tap" in answer["fault_message"]
    body["host_dev_name"] = "lo"  # exists in every namespace
    assert fc.handle("PUT", "/network-interfaces/eth0", json.dumps(body).encode())[0] == 204


def test_the_console_drops_what_does_not_fit_in_the_pipe() -> None:
    # Firecracker's stdout is non-blocking: with nobody reading, a full pipe loses bytes instead of blocking.
    read_end, write_end = os.pipe()
    try:
        console = Console(write_end)
        for i in range(4000):
            console.line(f"line {i:05d} " + "x" * 90)
        got = b""
        while True:
            try:
                chunk = os.read(read_end, 1 << 16)
            except BlockingIOError:
                break
            got += chunk
            os.set_blocking(read_end, False)
        assert console.dropped > 0 and len(got) + console.dropped == 4000 * 103
    finally:
        os.close(read_end)
        os.close(write_end)


def test_vsock_binds_its_socket_inside_the_jail(spec: Spec, tmp_path: Path) -> None:
    # Jailed, Firecracker sees only its chroot: uds_path names a file there (".." stops at the chroot's root),
    # and a host path names a directory the chroot does not have.
    chroot = tmp_path / "root"
    chroot.mkdir()
    fc = FakeFirecracker(spec, chroot=chroot)
    outside = str(tmp_path / "v.sock")
    assert "Error binding to the host-side Unix socket" in fault(
        call(fc, "PUT", "/vsock", {"guest_cid": 3, "uds_path": outside})
    )
    assert not Path(outside).exists()
    assert call(fc, "PUT", "/vsock", {"guest_cid": 3, "uds_path": "../../v.sock"})[0] == 204
    assert (chroot / "v.sock").is_socket() and not (tmp_path.parent / "v.sock").exists()


def test_a_restored_vsock_device_binds_its_socket_again_and_a_stale_one_is_refused(spec: Spec, tmp_path: Path) -> None:
    # Firecracker binds the snapshot's uds_path (or the override) on restore; a file already there: EADDRINUSE.
    (tmp_path / "state").write_text(
        json.dumps(
            {"config": {"vsock": {"guest_cid": 3, "uds_path": str(tmp_path / "old.sock")}}, "drives": {}, "ifaces": {}}
        )
    )
    (tmp_path / "mem").write_bytes(b"")
    (tmp_path / "stale.sock").write_bytes(b"")
    load = {
        "snapshot_path": str(tmp_path / "state"),
        "mem_backend": {"backend_type": "File", "backend_path": str(tmp_path / "mem")},
        "vsock_override": {"uds_path": str(tmp_path / "stale.sock")},
    }
    assert "Address already in use" in fault(call(FakeFirecracker(spec), "PUT", "/snapshot/load", load))
    load["vsock_override"] = {"uds_path": str(tmp_path / "new.sock")}
    assert call(FakeFirecracker(spec), "PUT", "/snapshot/load", load)[0] == 204
    assert (tmp_path / "new.sock").is_socket() and not (tmp_path / "old.sock").exists()
