"""Smith's guest kernel config (images/kernel/smith.config): it asks for what the guest's init and agent need,
built in; a built kernel's .config has every option it asks for. (Building a kernel takes minutes: not here.)"""

from __future__ import annotations

import pytest

from smith.images import build as images
from smith.images.kernel import FRAGMENT, current_kernel, fragment_options, missing_options, parse_config

# What the initramfs's init and the guest agent use, and the built-in options that provide it.
NEEDED = {
    "the ELF vmlinux QEMU boots (PVH entry)": "CONFIG_PVH",
    "the initramfs": "CONFIG_BLK_DEV_INITRD",
    "#! scripts (init is one)": "CONFIG_BINFMT_SCRIPT",
    "the console on ttyS0": "CONFIG_SERIAL_8250_CONSOLE",
    "mount -t proc / sysfs / devtmpfs / devpts / tmpfs": "CONFIG_PROC_FS CONFIG_SYSFS CONFIG_DEVTMPFS "
    "CONFIG_UNIX98_PTYS CONFIG_TMPFS",
    "devices from virtio_mmio.device= on the command line": "CONFIG_VIRTIO_MMIO CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES",
    "the config and events ports": "CONFIG_VIRTIO_CONSOLE",
    "root, scratch and sticky disks (ext4 on virtio-blk)": "CONFIG_VIRTIO_BLK CONFIG_EXT4_FS",
    "eth0, MMDS and the job's network": "CONFIG_VIRTIO_NET CONFIG_INET CONFIG_UNIX",
    "entropy": "CONFIG_HW_RANDOM_VIRTIO",
    "Firecracker's vsock": "CONFIG_VIRTIO_VSOCKETS",
    "vCPUs beyond one": "CONFIG_SMP",
    "the runner user (setuid), threads": "CONFIG_MULTIUSER CONFIG_FUTEX",
}


def test_the_fragment_builds_in_everything_the_guest_needs_and_has_no_modules() -> None:
    wanted = fragment_options()
    for what, options in NEEDED.items():
        for option in options.split():
            assert wanted.get(option) == "y", f"{option} ({what})"
    assert wanted["CONFIG_MODULES"] == "n"  # init then loads nothing


def test_every_module_the_debian_image_loads_is_built_into_smiths_kernel() -> None:
    """The Debian image loads images.build.MODULES; Smith's kernel must have each built in instead."""
    providers = {
        "virtio_mmio": "CONFIG_VIRTIO_MMIO",
        "virtio_console": "CONFIG_VIRTIO_CONSOLE",
        "virtio-rng": "CONFIG_HW_RANDOM_VIRTIO",
        "virtio_blk": "CONFIG_VIRTIO_BLK",
        "virtio_net": "CONFIG_VIRTIO_NET",
        "crc32c_generic": "CONFIG_EXT4_FS",  # ext4 selects CRYPTO_CRC32C
        "ext4": "CONFIG_EXT4_FS",
        "vmw_vsock_virtio_transport": "CONFIG_VIRTIO_VSOCKETS",
    }
    assert set(images.MODULES) == set(providers), "a module was added to the image: say which option builds it in"
    wanted = fragment_options()
    assert all(wanted.get(option) == "y" for option in providers.values())


def test_a_config_that_lost_an_option_is_named() -> None:
    fragment = parse_config("CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=y\n")
    config = parse_config("CONFIG_A=y\nCONFIG_B=y\n# CONFIG_C is not set\n")
    assert missing_options(fragment, config) == ["CONFIG_B=n", "CONFIG_C=y"]
    assert missing_options(fragment, {"CONFIG_A": "y", "CONFIG_C": "y"}) == []  # absent counts as not set


def test_a_built_kernel_has_every_option_of_the_fragment() -> None:
    """Only where `smith image kernel` ran with the default data dir (tests run with their own SMITH_DATA_DIR,
    so the kernel is looked for where the command puts it by default; read only)."""
    from smith.settings import default_data_dir

    kernel = current_kernel(default_data_dir())
    if kernel is None or not kernel.config.is_file():
        pytest.skip("no Smith kernel built here (`smith image kernel`)")
    assert missing_options(fragment_options(), parse_config(kernel.config.read_text())) == []
    assert FRAGMENT.is_file()
