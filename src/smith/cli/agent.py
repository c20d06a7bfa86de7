"""``smith agent``: the host agent daemon."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Coroutine
from typing import Any

import typer

from smith.cli.common import console, fail, print_json

app = typer.Typer(help="The host agent: leases jobs and runs each in a fresh VM on this machine.", no_args_is_help=True)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="agent")


def build_agent(settings: Any, network: Any = None, backend: tuple[Any, str] | None = None) -> Any:
    """Compose an Agent from settings: control client, chosen backend (or ``backend``, already chosen), job output."""
    from smith.agent.backends import select_backend
    from smith.agent.cachetoken import fallback
    from smith.agent.capacity import disk_budget
    from smith.agent.client import ControlClient
    from smith.agent.daemon import Agent, AgentConfig
    from smith.agent.logsink import LocalFiles

    if settings.agent_token is None:
        fail("SMITH_AGENT_TOKEN is not set: mint one with `smith auth agent-token --agent-id ...`")
    from smith import tracing

    tracing.setup(settings, "agent")  # nothing unless SMITH_OTEL_EXPORTER_ENDPOINT is set
    vmm, why = backend or select_backend(settings, network)
    console.print(f"backend: [bold]{vmm.backend}[/bold] ({why})")
    _warn_old_runner(settings)
    config = AgentConfig(
        agent_id=settings.agent_id,
        hostname=socket.gethostname(),
        vcpus=settings.agent_vcpus,
        memory_mib=settings.agent_memory_mib,
        max_vms=settings.agent_max_vms,
        labels=tuple(settings.agent_labels),
        warm_pool=settings.agent_warm_pool,
        drain_seconds=settings.agent_drain_seconds,
        job_timeout_seconds=settings.agent_job_timeout_seconds,
        lease_wait_seconds=settings.agent_lease_wait_seconds,
        runner_dir=settings.agent_runner_dir,
        runner_idle_seconds=settings.agent_runner_idle_seconds,
        logs_url=settings.logs_url,
        disk_mib=disk_budget(settings.work_dir, settings.agent_disk_mib, settings.agent_disk_reserve_mib),
        cache_fallback=fallback(settings),
    )
    token = settings.agent_token.get_secret_value()
    control = ControlClient(settings.control_url, token)
    output: Any = LocalFiles(
        settings.work_dir / "logs",
        max_job_bytes=settings.agent_job_log_max_bytes,
        max_total_bytes=settings.agent_job_logs_max_bytes,
    )
    if settings.logs_url:  # ship every line to the log pipeline too (spooled on disk while it is unreachable)
        from smith.agent.logship import LogShipper
        from smith.agent.logsink import Fanout

        shipper = LogShipper(
            settings.logs_url,
            None,  # each job's lines go with the log token of its lease
            settings.work_dir / "log-spool",
            host=config.hostname,
            max_spool_bytes=settings.agent_log_spool_max_bytes,
            min_free_bytes=settings.agent_log_spool_min_free_bytes,
        )
        output = Fanout(output, shipper)
        console.print(f"logs: {settings.logs_url}")
    return Agent(config, control, vmm, output)


def _warn_old_runner(settings: Any) -> None:
    from smith.logging import get_logger
    from smith.rootfs.runnerversion import agent_warning

    old = agent_warning(settings.agent_rootfs_dir, settings.agent_rootfs, settings.runner_min_version)
    if old:
        console.print(f"[yellow]warning:[/yellow] {old}")
        get_logger("smith.agent").warning(old)


async def serve_agent(agent: Any) -> None:
    """Run until SIGTERM/SIGINT, then drain."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(agent.shutdown()))
    await agent.run()


@app.command()
def run() -> None:
    """Register with the control plane (SMITH_CONTROL_URL) and run jobs until SIGTERM, which drains.

    Settings: SMITH_AGENT_TOKEN, SMITH_AGENT_BACKEND (auto|firecracker|qemu|sandbox), SMITH_AGENT_VCPUS,
    SMITH_AGENT_MEMORY_MIB, SMITH_AGENT_MAX_VMS, SMITH_AGENT_WARM_POOL ('{"smith-2vcpu": 2}'),
    SMITH_AGENT_DRAIN_SECONDS, SMITH_AGENT_NETWORK (bridge, taps, NAT: see SMITH_AGENT_NETWORK_*).
    `smith config check agent` validates them.
    """
    from smith.agent.settings import AgentSettings
    from smith.logging import configure

    settings = AgentSettings()
    configure(settings.log_level, json=settings.log_json)
    asyncio.run(serve_with_network(settings))


async def serve_with_network(settings: Any) -> None:
    """With SMITH_AGENT_NETWORK=true: clean up a crashed agent's taps and rules, set the bridge up, serve,
    and tear the network down on every exit path."""
    from smith.agent.network import host_network

    async with host_network(settings) as network:
        if network is not None:
            console.print(f"network: bridge {network.config.bridge}, pool {network.plan.pool}")
        agent = build_agent(settings, network)
        metrics = None
        if settings.agent_metrics_port:
            from smith.agent.metrics import serve

            metrics = asyncio.create_task(serve(agent, settings))
            console.print(f"metrics: http://{settings.agent_metrics_host}:{settings.agent_metrics_port}/metrics")
        try:
            await serve_agent(agent)
        finally:
            if metrics is not None:
                metrics.cancel()


@app.command()
def doctor(json_out: bool = typer.Option(False, "--json", help="Print JSON")) -> None:
    """Check this host for the agent: KVM, QEMU, the image, the sandbox, AppArmor, firewalls, MTU, DNS, systemd,
    cgroups, disk. One line per check (ok/warn/fail, with a fix); exits 1 when any check fails."""
    from smith.agent import doctor as checks
    from smith.agent.settings import AgentSettings
    from smith.logging import configure

    configure("ERROR", json=False)  # the checks' own findings are the output; log lines would only repeat them
    raise typer.Exit(checks.main(AgentSettings(), json_out))


HOST_FILES = {
    "apparmor": "smith-bwrap.apparmor",
    "systemd": "smith-agent.service",
    "networkmanager": "smith-unmanaged.nmconf",
}


@app.command("host-file")
def host_file(
    name: str = typer.Argument(..., help="apparmor, systemd or networkmanager"),
    json_out: bool = typer.Option(False, "--json", help="Print JSON: the file's name and text"),
) -> None:
    """Print a file this host needs (docs/hosts.md says where it goes)."""
    from importlib.resources import files

    if name not in HOST_FILES:
        fail(f"no host file {name!r}: choose one of {', '.join(HOST_FILES)}")
    text = files("smith.agent").joinpath("hostfiles", HOST_FILES[name]).read_text()
    if json_out:
        print_json({"name": HOST_FILES[name], "text": text})
        return
    typer.echo(text, nl=False)


@app.command()
def backends(json_out: bool = typer.Option(False, "--json", help="Print JSON")) -> None:
    """Which VM backends this machine can run, and which one `auto` picks, with the reasons."""
    from smith.agent.backends import probe
    from smith.agent.settings import AgentSettings

    found = probe(AgentSettings())
    if json_out:
        print_json(found)
        return
    for name, info in found["backends"].items():
        mark = "[green]yes[/green]" if info["available"] else "[red]no[/red]"
        console.print(f"{name:>12}: {mark}  {info['reason']}")
    console.print(f"auto picks: [bold]{found['auto']}[/bold]")


def dev_service(env: dict[str, str]) -> Coroutine[Any, Any, None] | None:
    """`smith dev`: one agent on this machine, with the best backend it has (the sandbox without KVM)."""
    from smith import tokens
    from smith.agent.settings import AgentSettings

    secret = env.get("SMITH_AGENT_TOKEN_SECRET")
    if not secret:
        return None
    agent_id = socket.gethostname()
    token = env.get("SMITH_AGENT_TOKEN") or tokens.mint(
        secret, scope="agent", subject=agent_id, ttl_seconds=30 * 86400, agent_id=agent_id
    )
    settings = AgentSettings(agent_token=token, agent_id=agent_id, control_url=env["SMITH_CONTROL_URL"])
    backend = dev_backend(settings)
    if backend is None:
        return None

    async def serve() -> None:
        await asyncio.sleep(0.5)  # let the control plane bind first
        agent = build_agent(settings, backend=backend)
        try:
            await agent.run()
        finally:
            with contextlib.suppress(Exception):
                await agent.shutdown()

    return serve()


NO_BACKEND_HINT = (
    "install bubblewrap for the sandbox (sudo apt-get install bubblewrap), or Firecracker or QEMU with /dev/kvm; "
    "`smith agent backends` shows what this machine has"
)


def dev_backend(settings: Any) -> tuple[Any, str] | None:
    """The backend `smith dev`'s agent runs jobs on, or None after saying once why there is none here (the other
    services run on: the control plane queues jobs until an agent that can run them comes)."""
    from smith.agent.backends import select_backend
    from smith.errors import SmithError

    try:
        return select_backend(settings)
    except (SmithError, OSError) as exc:
        why = exc.message if isinstance(exc, SmithError) else str(exc)
        console.print(
            f"  agent:   [bold red]not started: jobs cannot run on this machine[/bold red]: {why}. "
            f"To run them, {NO_BACKEND_HINT}",
            soft_wrap=True,
        )
        return None
