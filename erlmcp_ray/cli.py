"""The ``erlmcp-ray`` command."""

from __future__ import annotations

import json
import sys

import click

from erlmcp_ray import _cli_ops
from erlmcp_ray._cli_common import ADDRESS, NAMESPACE, attach_ray_or_exit, connect_or_exit
from erlmcp_ray.config import MemoryConfig
from erlmcp_ray.errors import ConfigError


@click.group()
@click.version_option(package_name="erlmcp_ray")
@click.option("--debug", "debug_flag", is_flag=True, help="show the traceback of an error")
def main(debug_flag: bool) -> None:
    """erlmcp_ray: cross-agent memory for AI agents on Ray.

    Commands against a running system take --address (default auto) and --namespace (default
    erlmcp); read commands take --json. Exit codes: 0 done, 1 the operation failed, 2 bad usage or
    configuration, 3 no Ray cluster or no memory system reachable."""


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



@main.command("start")
@ADDRESS
@NAMESPACE
@click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False),
              help="the memory system's configuration (.toml/.yaml); default: the spec's defaults")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a summary")
def start(address: str, namespace: str, config_path: str | None, as_json: bool) -> None:
    """Start the memory system on a running Ray cluster. Its actors are detached: they keep running
    after this command returns, until `erlmcp-ray stop`. Starting it again with the same
    configuration is a no-op.

    Exit codes: 0 running, 1 it could not start, 2 bad configuration (or a different one already
    running in NAMESPACE), 3 no Ray cluster reachable at ADDRESS."""
    import time

    import erlmcp_ray
    from erlmcp_ray.errors import ErlmcpRayError

    try:
        cfg = MemoryConfig.load(config_path)
    except ConfigError as exc:
        click.echo(f"invalid configuration: {exc}", err=True)
        sys.exit(2)
    attach_ray_or_exit(address, namespace)
    t0 = time.monotonic()
    try:
        system = erlmcp_ray.start(cfg if config_path is not None else None, namespace=namespace, address=address)
    except ConfigError as exc:
        click.echo(f"not started: {exc}", err=True)
        sys.exit(2)
    except ErlmcpRayError as exc:
        click.echo(f"not started: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)
    seconds = time.monotonic() - t0
    domains = {name: {"backend": system.config.backend_for(name).value, "shards": d.shards,
                      "copies": system.config.replication_factor_for(name), "max_bytes": d.max_bytes}
               for name, d in system.config.domains.items()}
    if as_json:
        click.echo(json.dumps({"namespace": namespace, "seconds": round(seconds, 3), "domains": domains},
                              indent=2, sort_keys=True))
    else:
        copies = sum(d["shards"] * d["copies"] for d in domains.values())
        click.echo(f"memory system running in namespace {namespace!r}: {len(domains)} domains, {copies} shard "
                   f"copies ({seconds:.1f} s); `erlmcp-ray status --namespace {namespace}` shows it")


@main.command("stop")
@ADDRESS
@NAMESPACE
@click.option("--purge", is_flag=True, help="also delete what durable domains and checkpoints stored")
def stop(address: str, namespace: str, purge: bool) -> None:
    """Stop the memory system in NAMESPACE (its actors). What durable domains and checkpoints
    stored stays for the next `erlmcp-ray start` unless --purge; data held only in memory is gone.

    Exit codes: 0 stopped (or nothing was running), 1 it could not be stopped, 3 no Ray cluster
    reachable at ADDRESS."""
    import erlmcp_ray
    from erlmcp_ray import _ray
    from erlmcp_ray.actors.options import COORDINATOR
    from erlmcp_ray.errors import ErlmcpRayError, UnavailableError

    attach_ray_or_exit(address, namespace)
    try:
        _ray.get_actor(COORDINATOR, namespace)
    except UnavailableError:
        click.echo(f"no memory system running in namespace {namespace!r}: nothing to stop")
        return
    try:
        erlmcp_ray.shutdown(namespace, purge=purge)
    except ErlmcpRayError as exc:
        click.echo(f"stop failed: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)
    click.echo(f"memory system in namespace {namespace!r} stopped" + (" and its stored data purged" if purge else
                                                                      " (stored data kept; --purge deletes it)"))


@main.command("status")
@ADDRESS
@NAMESPACE
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of tables")
def status(address: str, namespace: str, as_json: bool) -> None:
    """Domains (entries, bytes against limits, pressure, shards x copies and where they sit, replica
    lag), nodes (what they hold against the node limits, refusals), clients (hit ratios per tier)
    and alerts (firing now, counts, the newest events) of a running memory system.

    Exit codes: 0 shown, 1 the system did not answer, 3 no memory system reachable at
    ADDRESS/NAMESPACE."""
    from erlmcp_ray import status as status_mod
    from erlmcp_ray.errors import ErlmcpRayError

    client = connect_or_exit(address, namespace)
    try:
        snapshot = status_mod.collect(client)
    except ErlmcpRayError as exc:
        click.echo(f"status failed: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)
    finally:
        client.close()
    click.echo(json.dumps(snapshot, indent=2, sort_keys=True, default=str) if as_json
               else status_mod.render(snapshot))


_RECOVERY_MODES = ("auto", "full", "delta", "peer", "snapshot")


@main.command("recover")
@click.argument("mode", required=False, default="auto", type=click.Choice(_RECOVERY_MODES))
@ADDRESS
@NAMESPACE
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

    client = connect_or_exit(address, namespace)
    out: dict = {}
    try:
        if status_only:
            out["status"] = client.recovery.get_recovery_status()
        elif heal:
            out["heal"] = client.recovery.heal_partition()
        elif domain is not None:
            out["recovery"] = _with_progress(lambda: client.recovery.recover_domain(domain, node_id), client)
        elif node_id is not None:
            out["recovery"] = _with_progress(lambda: client.recovery.recover_node(node_id), client)
        else:
            out["recovery"] = _with_progress(lambda: client.recovery.trigger_recovery(mode), client)
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


def _with_progress(run, client):  # run()'s result, a progress bar on stderr following get_recovery_status
    import threading

    done: dict = {}

    def target() -> None:
        try:
            done["value"] = run()
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            done["error"] = exc

    worker = threading.Thread(target=target, name="erlmcp-cli-recovery", daemon=True)
    worker.start()
    with click.progressbar(length=100, label="recovery", file=sys.stderr) as bar:
        shown = 0
        while worker.is_alive():
            worker.join(0.3)
            try:
                now = int(client.recovery.get_recovery_status().get("progress") or 0)
            except Exception:  # noqa: BLE001, S112 - the bar only: the recovery's own result decides
                continue
            if now > shown:
                bar.update(now - shown)
                shown = now
        bar.update(100 - shown)
    if "error" in done:
        raise done["error"]
    return done["value"]


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


_cli_ops.register(main)

if __name__ == "__main__":  # pragma: no cover
    main()
