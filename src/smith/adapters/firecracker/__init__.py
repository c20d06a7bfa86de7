"""Firecracker backend: API client (client.py), jailer (jailer.py), VMM (vmm.py), tap network (network.py)."""
