"""The ``erlmcp-ray`` command."""

from __future__ import annotations

import json
import sys

import click

from erlmcp_ray.config import MemoryConfig
from erlmcp_ray.errors import ConfigError


@click.group()
@click.version_option(package_name="erlmcp_ray")
def main() -> None:
    """erlmcp_ray: cross-agent memory for AI agents on Ray."""


@main.group()
def config() -> None:
    """Inspect and validate configurations."""


@config.command("show")
@click.argument("source", required=False)
def config_show(source: str | None) -> None:
    """Print the effective configuration (defaults merged with SOURCE, a .toml/.yaml file) as JSON."""
    try:
        cfg = MemoryConfig.load(source)
    except ConfigError as exc:
        click.echo(f"invalid configuration: {exc}", err=True)
        sys.exit(2)
    click.echo(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))


@config.command("check")
@click.argument("source")
def config_check(source: str) -> None:
    """Validate SOURCE; exit 0 when it is valid, 2 with the offending field path when not."""
    try:
        cfg = MemoryConfig.load(source)
    except ConfigError as exc:
        click.echo(f"invalid configuration: {exc}", err=True)
        sys.exit(2)
    domains = ", ".join(f"{n} ({cfg.backend_for(n).value}, {d.max_bytes} B)" for n, d in cfg.domains.items())
    click.echo(f"ok: {len(cfg.domains)} domains: {domains}")


@main.command("demo", context_settings={"ignore_unknown_options": False})
@click.option("--agents", default=4, show_default=True, help="agents (Ray actors) sharing memory")
@click.option("--rounds", default=10, show_default=True)
@click.option("--ops", default=50, show_default=True, help="shared writes per agent per round")
@click.option("--namespace", default="erlmcp-demo", show_default=True)
def demo(agents: int, rounds: int, ops: int, namespace: str) -> None:
    """Run agents on a local Ray sharing memory at three consistency levels (no Redis, no cluster)."""
    from erlmcp_ray.demo import run_demo  # imports Ray: only when asked for

    run_demo(agents, rounds, ops, namespace)


if __name__ == "__main__":  # pragma: no cover
    main()
