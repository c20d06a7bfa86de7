"""``smith rootfs``: build root filesystem versions from a rootfs.yaml, activate one, list them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from smith.cli.common import console, fail, print_json
from smith.errors import SmithError

app = typer.Typer(help="Root filesystem versions for VMs: build, activate, list.", no_args_is_help=True)
CONFIG = typer.Option(Path("rootfs.yaml"), "--config", "-c", help="The rootfs.yaml to read")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="rootfs")


def _load(path: Path) -> Any:
    from smith.rootfs.config import load

    try:
        return load(path)
    except SmithError as exc:
        fail(exc.message)


@app.command("build")
def build(
    versions: list[str] = typer.Argument(None, help="Versions to build (default: all in the config)"),
    config_path: Path = CONFIG,
    as_json: bool = typer.Option(False, "--json", help="Print what was built as JSON"),
) -> None:
    """Fetch each version's base (resumable, checksum-verified), apply its overlay, write it atomically.

    A checksum mismatch is refused and nothing is written or activated. When no version is active yet, the
    default_version is activated once it is built.
    """
    from smith.rootfs import store
    from smith.rootfs.build import build_version

    config = _load(config_path)
    results = []
    try:
        chosen = [config.version(v) for v in versions] if versions else list(config.versions)
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        ) as progress:
            for version in chosen:
                task = progress.add_task(version.name, total=None)

                def on_bytes(done: int, total: int | None, task: Any = task) -> None:
                    progress.update(task, completed=done, total=total)

                def say(msg: str, task: Any = task) -> None:
                    progress.update(task, description=msg)

                built, fresh = build_version(config, version, say=say, on_bytes=on_bytes)
                results.append({"name": built.name, "dir": str(built.dir), "built": fresh})
        activated = None
        default = config.default_version
        if default and store.active(config.output_dir) is None and store.built(config.output_dir, default):
            activated = store.activate(config.output_dir, config.default_version).name
    except SmithError as exc:
        fail(exc.message)
    if as_json:
        print_json({"versions": results, "activated": activated})
        return
    for r in results:
        console.print(f"[green]{r['name']}[/green] {'built' if r['built'] else 'up to date'}: {r['dir']}")
    if activated:
        console.print(f"activated {activated} (the default_version; nothing was active)")


@app.command("activate")
def activate(
    version: str = typer.Argument(None, help="The version new VMs boot (default: default_version)"),
    config_path: Path = CONFIG,
    as_json: bool = typer.Option(False, "--json", help="Print the active version as JSON"),
) -> None:
    """Switch the active version atomically; running VMs keep the version they booted."""
    from smith.rootfs import store

    config = _load(config_path)
    name = version or config.default_version
    if not name:
        fail("name a version (the config has no default_version)")
    try:
        config.version(name)
        built = store.activate(config.output_dir, name)
    except SmithError as exc:
        fail(exc.message)
    if as_json:
        print_json({"active": name, "dir": str(built.dir)})
        return
    console.print(f"active: {name}")


@app.command("list")
def list_(
    config_path: Path = CONFIG,
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
    runner_min_version: str = typer.Option(
        None, envvar="SMITH_RUNNER_MIN_VERSION", help="Warn about versions whose GitHub runner is older than this"
    ),
) -> None:
    """Versions in the config and on disk: built or not, active, default, GitHub's runner in each."""
    from smith.rootfs import store
    from smith.rootfs.runnerversion import too_old, warning

    config = _load(config_path)
    try:
        current = store.active(config.output_dir)
    except SmithError as exc:
        fail(exc.message)
    rows = []
    for name in dict.fromkeys([v.name for v in config.versions] + store.names(config.output_dir)):
        built = store.built(config.output_dir, name)
        m = built.manifest if built else {}
        rows.append(
            {
                "name": name,
                "built": built is not None,
                "active": current is not None and current.name == name,
                "default": name == config.default_version,
                "description": m.get("description", ""),
                "built_at": m.get("built_at"),
                "rootfs_bytes": m.get("rootfs", {}).get("bytes"),
                "runner_version": m.get("runner_version"),
                "runner_too_old": too_old(m.get("runner_version"), runner_min_version),
            }
        )
    if as_json:
        print_json(rows)
        return
    table = Table("name", "state", "built at", "size", "runner", "description")
    for r in rows:
        state = ("active " if r["active"] else "") + ("built" if r["built"] else "not built")
        size = f"{r['rootfs_bytes'] >> 20} MiB" if r["rootfs_bytes"] else ""
        runner = (r["runner_version"] or "") + (" (too old)" if r["runner_too_old"] else "")
        name = r["name"] + (" (default)" if r["default"] else "")
        table.add_row(name, state, r["built_at"] or "", size, runner, r["description"])
    console.print(table)
    for r in rows:
        old = warning(f"version {r['name']}", r["runner_version"], runner_min_version)
        if old:
            console.print(f"[yellow]warning:[/yellow] {old}")


@app.command("base")
def base(
    config_path: Path = CONFIG,
    suite: str = typer.Option(None, help="Debian suite (default: the config's base.suite, else bookworm)"),
    mirror: str = typer.Option(None, help="Package mirror URL (default: the config's, else deb.debian.org)"),
    profile: str = typer.Option(None, help="minimal, or docker (adds build-essential and Docker)"),
    output: Path = typer.Option(None, help="The ext4 image to write (a manifest goes beside it, .json)"),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON"),
) -> None:
    """Build a runner-ready base image from Debian packages (mmdebstrap or debootstrap; needs root).

    Jobs' tools, a `runner` user with sudo, GitHub's runner from the tarball in the config's base.runner
    (sha256 checked), Smith's guest pieces. Use the image as a version's base_path, with its sha256.
    """
    from smith.rootfs.base import make_base
    from smith.rootfs.config import BaseSpec

    config = _load(config_path)
    try:
        spec = config.base or BaseSpec()
        overrides = {k: v for k, v in {"suite": suite, "mirror": mirror, "profile": profile}.items() if v}
        spec = BaseSpec.model_validate({**spec.model_dump(), **overrides})
        out = output or spec.output or config.output_dir / "bases" / f"{spec.suite}-{spec.profile}.ext4"
        with console.status("building the base") as status:
            manifest = make_base(spec, out, config.output_dir / "downloads", say=lambda m: status.update(m))
    except ValidationError as exc:
        first = exc.errors()[0]
        fail(f"base: {'.'.join(str(p) for p in first['loc'])}: {first['msg']}")
    except SmithError as exc:
        fail(exc.message)
    if as_json:
        print_json({"image": str(out), **manifest})
        return
    console.print(f"[green]{out}[/green] sha256 {manifest['sha256']} runner {manifest['runner_version'] or '-'}")
