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



@main.command("status")
@click.option("--address", default="auto", show_default=True, help="the Ray cluster running the memory system")
@click.option("--namespace", default="erlmcp", show_default=True, help="the memory system's namespace")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of tables")
def status(address: str, namespace: str, as_json: bool) -> None:
    """Domains (entries, bytes against limits, pressure, shards x copies and where they sit, replica
    lag), nodes (what they hold against the node limits, refusals), clients (hit ratios per tier)
    and alerts (firing now, counts, the newest events) of a running memory system.

    Exit codes: 0 shown, 1 the system did not answer, 3 no memory system reachable at
    ADDRESS/NAMESPACE."""
    from erlmcp_ray import status as status_mod
    from erlmcp_ray.errors import ErlmcpRayError

    client = _connect_or_exit(address, namespace)
    try:
        snapshot = status_mod.collect(client)
    except ErlmcpRayError as exc:
        click.echo(f"status failed: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)
    finally:
        client.close()
    click.echo(json.dumps(snapshot, indent=2, sort_keys=True, default=str) if as_json
               else status_mod.render(snapshot))


def _connect_or_exit(address: str, namespace: str):  # a MemoryClient, or exit 3 naming what is missing
    from erlmcp_ray.errors import UnavailableError

    try:
        return _connect(address, namespace)
    except (UnavailableError, ConnectionError) as exc:
        click.echo(f"no memory system reachable in namespace {namespace!r} at {address!r}: {exc}", err=True)
        sys.exit(3)


_RECOVERY_MODES = ("auto", "full", "delta", "peer", "snapshot")


@main.command("recover")
@click.argument("mode", required=False, default="auto", type=click.Choice(_RECOVERY_MODES))
@click.option("--address", default="auto", show_default=True, help="the Ray cluster running the memory system")
@click.option("--namespace", default="erlmcp", show_default=True, help="the memory system's namespace")
@click.option("--domain", "domain", default=None, help="recover this domain only (spec recover_domain)")
@click.option("--node", "node_id", default=None, help="recover the shards with a copy on this Ray node "
              "(spec recover_node; with --domain: that domain's)")
@click.option("--heal", is_flag=True, help="merge what copies cut off by a partition took (heal_partition) instead")
@click.option("--status", "status_only", is_flag=True, help="print the current or last recovery's status, run nothing")
@click.option("--verify/--no-verify", default=True, show_default=True, help="verify_state() afterwards")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a summary")
def recover(mode: str, address: str, namespace: str, domain: str | None, node_id: str | None, heal: bool,
            status_only: bool, verify: bool, as_json: bool) -> None:
    """Run a recovery on a running memory system (spec erlmcp_memory_recovery): MODE is auto (the
    default: chooses from what is available and says why), full, delta, peer or snapshot.

    Exit codes: 0 done (and verified), 1 the recovery or the verification failed, 2 bad usage,
    3 no memory system reachable at ADDRESS/NAMESPACE."""
    from erlmcp_ray.errors import ErlmcpRayError

    client = _connect_or_exit(address, namespace)
    out: dict = {}
    try:
        if status_only:
            out["status"] = client.recovery.get_recovery_status()
        elif heal:
            out["heal"] = client.recovery.heal_partition()
        elif domain is not None:
            out["recovery"] = client.recovery.recover_domain(domain, node_id)
        elif node_id is not None:
            out["recovery"] = client.recovery.recover_node(node_id)
        else:
            out["recovery"] = client.recovery.trigger_recovery(mode)
        if verify and not status_only:
            out["verify"] = client.recovery.verify_state()
    except ErlmcpRayError as exc:
        click.echo(f"recover failed: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)
    finally:
        client.close()
    if as_json:
        click.echo(json.dumps(out, indent=2, sort_keys=True, default=str))
    else:
        _print_recovery(out)
    failed = (out.get("recovery", {}).get("status") not in (None, "completed")
              or not out.get("heal", {"merged": True})["merged"] or not out.get("verify", {"ok": True})["ok"])
    sys.exit(1 if failed else 0)


def _connect(address: str, namespace: str):  # a MemoryClient (imports Ray only when called)
    import erlmcp_ray

    return erlmcp_ray.connect(namespace, address=address)


def _print_recovery(out: dict) -> None:
    if "status" in out:
        s = out["status"]
        click.echo(f"recovery: {s.get('status')} (mode {s.get('mode')}, step {s.get('step')}, "
                   f"{s.get('progress')} %)")
    if "recovery" in out:
        r = out["recovery"]
        click.echo(f"recovery: {r['status']} in mode {r['mode']}: {r['shards_done']} of {r['shards_total']} "
                   f"shard(s), validation {r.get('validation')}")
        for name, shard in sorted(r["shards"].items()):
            click.echo(f"  {name}: {shard['mode']} ({shard['reason']})")
    if "heal" in out:
        h = out["heal"]
        click.echo(f"heal: {h['stashed_writes']} stashed writes merged into {len(h['shards'])} shard(s), "
                   f"{h['conflicts_resolved']} conflicts resolved, {h['nodes']} node(s)"
                   + ("" if h["merged"] else f"; not reached: {', '.join(h['unreachable'])}"))
    if "verify" in out:
        v = out["verify"]
        click.echo("verify: ok" if v["ok"] else f"verify: NOT ok: {json.dumps(v, default=str)[:2000]}")


if __name__ == "__main__":  # pragma: no cover
    main()
