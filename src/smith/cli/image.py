"""``smith image``: build the guest image (kernel, vmlinux, initramfs with the guest agent) for QEMU/Firecracker."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from smith.cli.common import console, fail, print_json
from smith.errors import SmithError

app = typer.Typer(help="Guest images for the QEMU and Firecracker backends.", no_args_is_help=True)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="image")


@app.command("build")
def build(
    data_dir: Path | None = typer.Option(None, help="Where images are cached (default: SMITH_DATA_DIR)"),
    kernel: Path | None = typer.Option(
        None, help="A bzImage or ELF vmlinux (default: `smith image kernel`'s if built, else /boot/vmlinuz-*)"
    ),
    force: bool = typer.Option(False, "--force", help="Rebuild even if an image for these inputs exists"),
    as_json: bool = typer.Option(False, "--json", help="Print the image's paths as JSON"),
) -> None:
    """Build the guest image from this machine's Debian packages, once per set of inputs.

    Needs: linux-image-amd64 (or `smith image kernel` first), busybox-static, python3. Writes vmlinuz, vmlinux (for
    Firecracker) and initrd.cpio under <data_dir>/images/<hash of the inputs>/. Point the agent at them with
    SMITH_AGENT_KERNEL and SMITH_AGENT_ROOTFS, or let the QEMU backend find the cached image by itself.
    """
    from smith.images.build import build_image, find_inputs
    from smith.images.refresh import default_kernel
    from smith.settings import CommonSettings

    base = data_dir or CommonSettings().data_dir
    try:
        inputs = find_inputs(kernel=kernel or default_kernel(base))
        with Progress(
            SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console, transient=True
        ) as progress:
            task = progress.add_task("guest image", total=None)
            image = build_image(base, inputs, force=force, progress=lambda msg: progress.update(task, description=msg))
    except SmithError as exc:
        fail(exc.message)
    if as_json:
        print_json(image.as_dict())
        return
    state = "built" if image.built else "cached, up to date"
    console.print(f"[green]guest image {image.key}[/green] ({state}, kernel {image.kernel_version})")
    console.print(f"  vmlinuz  {image.vmlinuz}\n  vmlinux  {image.vmlinux}\n  initrd   {image.initrd}")
    console.print(f"  export SMITH_AGENT_KERNEL={image.vmlinux} SMITH_AGENT_ROOTFS={image.initrd}")


@app.command("kernel")
def kernel_cmd(
    data_dir: Path | None = typer.Option(None, help="Where kernels are kept (default: SMITH_DATA_DIR)"),
    source: Path | None = typer.Option(None, help="Kernel source tarball (default: /usr/src/linux-source-*.tar.xz)"),
    jobs: int = typer.Option(2, "--jobs", "-j", min=1, help="Parallel compile jobs (the build runs under nice)"),
    force: bool = typer.Option(False, "--force", help="Rebuild even if this source and config were built"),
    as_json: bool = typer.Option(False, "--json", help="Print the kernel's paths as JSON"),
) -> None:
    """Build Smith's guest kernel from Debian's linux-source package, offline: allnoconfig plus
    src/smith/images/kernel/smith.config, everything built in, no modules (faster to boot under emulation).

    Needs: linux-source-6.1, build-essential, flex, bison, bc, libelf-dev, libssl-dev; several minutes. Writes
    <data_dir>/kernels/<key>/vmlinux and points kernels/current at it: `smith image build` and the QEMU backend
    then use it. Firecracker: SMITH_AGENT_KERNEL=<that vmlinux>.
    """
    from smith.images.kernel import build_kernel
    from smith.settings import CommonSettings

    base = data_dir or CommonSettings().data_dir
    try:
        with Progress(
            SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console, transient=True
        ) as progress:
            task = progress.add_task("guest kernel", total=None)
            built = build_kernel(
                base, source, jobs=jobs, force=force, progress=lambda msg: progress.update(task, description=msg)
            )
    except SmithError as exc:
        fail(exc.message)
    if as_json:
        print_json(built.as_dict())
        return
    state = "built" if built.built else "cached, up to date"
    console.print(f"[green]guest kernel {built.key}[/green] ({state})\n  vmlinux  {built.vmlinux}")
