"""What every ``erlmcp-ray`` command shares: the --address/--namespace/--json options, --debug, and
attaching to a running cluster or system with one-line errors (exit 3 when there is none)."""

from __future__ import annotations

import sys
from typing import Any

import click

ADDRESS = click.option("--address", default="auto", show_default=True,
                       help="the Ray cluster (auto: RAY_ADDRESS, else the cluster started on this machine)")
NAMESPACE = click.option("--namespace", default="erlmcp", show_default=True, help="the memory system's namespace")
JSON = click.option("--json", "as_json", is_flag=True, help="print JSON")


def debug() -> bool:
    """Whether --debug was given to the running command: errors then show their traceback."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.find_root().params.get("debug_flag"))


def attach_ray_or_exit(address: str, namespace: str) -> None:
    """Attach this process to the Ray cluster at ADDRESS (exit 3, one line, when there is none)."""
    import logging

    from erlmcp_ray.system import attach_ray

    try:
        attach_ray(address, namespace, logging_level=logging.ERROR)
    except (ConnectionError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        click.echo(f"no Ray cluster reachable at {address!r} ({first}); start one with `ray start --head` "
                   f"or `ray up cluster.yaml`, or pass --address", err=True)
        sys.exit(3)


def connect_or_exit(address: str, namespace: str) -> Any:
    """A client of the system in NAMESPACE (imports Ray only when called); exit 3 naming what is missing."""
    import erlmcp_ray
    from erlmcp_ray.errors import UnavailableError

    try:
        return erlmcp_ray.connect(namespace, address=address)
    except (UnavailableError, ConnectionError) as exc:
        click.echo(f"no memory system reachable in namespace {namespace!r} at {address!r}: {exc}", err=True)
        sys.exit(3)
