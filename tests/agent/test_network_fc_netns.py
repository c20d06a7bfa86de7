"""Firecracker with the host network in a named namespace: the jailer must join it (--netns) to open the tap.

The fake Firecracker opens its tap as the real one does, in the network namespace it runs in (``--taps check``);
its jailer joins ``--netns``. Run under the shared network lock (see the netlock brief).
"""

from __future__ import annotations

from smith.adapters.network import HostNetwork, NetworkConfig
from tests.agent.firecracker_support import SHAPE, guest_config, make_rig
from tests.agent.netns import del_netns, new_netns, skip_unless_root

pytestmark = skip_unless_root()


async def test_a_jailed_vm_opens_its_tap_in_the_hosts_named_namespace() -> None:
    ns = new_netns("fc16")
    try:
        net = HostNetwork(NetworkConfig(netns=ns))
        async with net:
            for rig in make_rig(jailed=True, network=net):
                machine = await rig.vmm.boot(SHAPE, "nsvm")
                try:
                    assert machine.slot is not None and machine.slot.netns == f"/var/run/netns/{ns}"
                    jailer = machine.jailer_command
                    assert jailer[jailer.index("--netns") + 1] == f"/var/run/netns/{ns}"
                    await machine.assign(guest_config("echo in-namespace"))
                    assert "in-namespace" in [e.line async for e in machine.events()]
                finally:
                    await machine.stop()
                assert net.live() == {}
    finally:
        del_netns(ns)
