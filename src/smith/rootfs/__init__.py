"""Guest root filesystems: versions built from a ``rootfs.yaml``, activated atomically, booted as ext4 disks."""
