"""``smith assets fetch DIR``: kernel and rootfs files for Firecracker (a checked URL list, or Debian's kernel)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from smith.cli.common import console, fail, print_json
from smith.errors import SmithError

app = typer.Typer(help="Kernel and root filesystem files for the VM backends.", no_args_is_help=True)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="assets")


@app.command("fetch")
def fetch(
    dest: Path = typer.Argument(..., help="Folder to put the files in"),
    list_path: Path = typer.Option(None, "--list", help="YAML list of {name, url, sha256} (default: offline)"),
    kernel: Path = typer.Option(None, help="Offline: this bzImage instead of the newest /boot/vmlinuz-*"),
    as_json: bool = typer.Option(False, "--json", help="Print what was fetched as JSON"),
) -> None:
    """Download each listed file (resumable, sha256-checked), or, without --list, unpack the installed Debian
    kernel (linux-image-amd64) to the vmlinux Firecracker boots. assets.json in DIR records them."""
    from smith.rootfs.assets import debian_kernel, fetch_assets, load_list

    try:
        if list_path is None:
            done = debian_kernel(dest, kernel)
        else:
            assets = load_list(list_path)
            with Progress(
                TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                console=console, transient=True,
            ) as progress:  # fmt: skip
                task = progress.add_task("assets", total=None)

                def on_bytes(n: int, total: int | None, task: Any = task) -> None:
                    progress.update(task, completed=n, total=total)

                done = fetch_assets(assets, dest, on_bytes)
    except SmithError as exc:
        fail(exc.message)
    if as_json:
        print_json(done)
        return
    for name, info in done.items():
        console.print(f"[green]{dest / name}[/green] sha256 {info['sha256']} ({info['source']})")
