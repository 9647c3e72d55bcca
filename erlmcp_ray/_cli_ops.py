"""``erlmcp-ray`` commands an operator runs against a running system: get, put, delete, keys,
checkpoint, verify, metrics, bench. Registered on the ``main`` group by ``erlmcp_ray.cli``.

Each connects as a client of the system in ``--namespace`` on the Ray cluster at ``--address``
(exit 3, one line, when there is none), does one thing, and exits 0 when it is done, 1 when the
system said no (a missing key, a failed verification, an error: one line naming it), 2 on bad usage.
Writes are strong by default: acknowledged when the command returns.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from erlmcp_ray._cli_common import ADDRESS, JSON, NAMESPACE, connect_or_exit, debug

CONSISTENCY = click.option("--consistency", type=click.Choice(["eventual", "bounded_stale", "strong"]),
                           default="strong", show_default=True)


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=_plain))


def _plain(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": value.hex()}
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(value)
    return repr(value)


@contextmanager
def client_of(address: str, namespace: str) -> Iterator[Any]:
    """A client of the running system; exit 3 when there is none, 1 on a system error."""
    from erlmcp_ray.errors import ErlmcpRayError

    client = connect_or_exit(address, namespace)
    try:
        yield client
    except ErlmcpRayError as exc:
        if debug():
            raise
        click.echo(f"failed: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)
    finally:
        client.close()


def register(main: click.Group) -> None:
    for command in (get, put, delete, keys, verify, metrics, bench):
        main.add_command(command)
    main.add_command(checkpoint)


# ---------------------------------------------------------------------------- data


@click.command()
@click.argument("domain")
@click.argument("key")
@CONSISTENCY
@ADDRESS
@NAMESPACE
@JSON
def get(domain: str, key: str, consistency: str, address: str, namespace: str, as_json: bool) -> None:
    """Print the value of KEY in DOMAIN (as JSON); exit 1 when there is none."""
    with client_of(address, namespace) as c:
        entry = c.get_entry(domain, key, consistency=consistency)
    if entry is None:
        click.echo(f"no key {key!r} in {domain!r}", err=True)
        sys.exit(1)
    if as_json:
        _echo_json({"domain": domain, "key": key, "value": entry.value, "tags": list(entry.tags),
                    "version": {"vector": dict(entry.version.vector), "timestamp": entry.version.timestamp,
                                "writer": entry.version.writer, "wall_ms": entry.version.wall_ms},
                    "expires_at_ms": entry.expires_at_ms})
    else:
        click.echo(json.dumps(entry.value, default=_plain))


@click.command()
@click.argument("domain")
@click.argument("key")
@click.argument("value")
@click.option("--raw", is_flag=True, help="store VALUE as a string (default: JSON when it parses as JSON)")
@click.option("--ttl", type=float, default=None, help="seconds until it expires")
@click.option("--tag", "tags", multiple=True, help="a tag (repeat for more)")
@CONSISTENCY
@ADDRESS
@NAMESPACE
def put(domain: str, key: str, value: str, raw: bool, ttl: float | None, tags: tuple[str, ...], consistency: str,
        address: str, namespace: str) -> None:
    """Store VALUE under KEY in DOMAIN (strong by default: stored when the command returns)."""
    stored: Any = value
    if not raw:
        try:
            stored = json.loads(value)
        except json.JSONDecodeError:
            stored = value
    with client_of(address, namespace) as c:
        c.put(domain, key, stored, consistency=consistency, ttl=ttl, tags=tags)
        if consistency == "eventual":
            c.flush()
    click.echo(f"stored {key!r} in {domain!r}")


@click.command()
@click.argument("domain")
@click.argument("key")
@CONSISTENCY
@ADDRESS
@NAMESPACE
def delete(domain: str, key: str, consistency: str, address: str, namespace: str) -> None:
    """Delete KEY from DOMAIN."""
    with client_of(address, namespace) as c:
        existed = c.delete(domain, key, consistency=consistency)
        if consistency == "eventual":
            c.flush()
    click.echo(f"deleted {key!r} from {domain!r}" if existed else f"no key {key!r} in {domain!r} (nothing deleted)")


@click.command()
@click.argument("domain")
@click.argument("pattern", required=False, default="*")
@click.option("--tag", default=None, help="the keys carrying this tag instead of PATTERN")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="print at most this many")
@ADDRESS
@NAMESPACE
@JSON
def keys(domain: str, pattern: str, tag: str | None, limit: int | None, address: str, namespace: str,
         as_json: bool) -> None:
    """List the keys of DOMAIN matching the glob PATTERN (default *), sorted."""
    with client_of(address, namespace) as c:
        found = c.keys(domain, pattern, tag=tag)
    shown = found[:limit] if limit else found
    if as_json:
        _echo_json({"domain": domain, "count": len(found), "keys": shown})
    else:
        for k in shown:
            click.echo(k)
        if len(shown) < len(found):
            click.echo(f"... {len(found) - len(shown)} more ({len(found)} in all)", err=True)


# ---------------------------------------------------------------------------- checkpoints


@click.group()
def checkpoint() -> None:
    """Create, list, restore and delete checkpoints (spec create/list/restore/delete_checkpoint)."""


@checkpoint.command("create")
@ADDRESS
@NAMESPACE
@JSON
def checkpoint_create(address: str, namespace: str, as_json: bool) -> None:
    """Checkpoint every domain into the durable tier."""
    with client_of(address, namespace) as c:
        t0 = time.monotonic()
        cp = c.recovery.create_checkpoint()
    if as_json:
        _echo_json(cp)
    else:
        click.echo(f"checkpoint {cp.id}: {cp.entries} entries, {cp.bytes} bytes, {len(cp.domains)} domains "
                   f"({time.monotonic() - t0:.1f} s)")


@checkpoint.command("list")
@ADDRESS
@NAMESPACE
@JSON
def checkpoint_list(address: str, namespace: str, as_json: bool) -> None:
    """The stored checkpoints, newest first."""
    with client_of(address, namespace) as c:
        cps = c.recovery.list_checkpoints()
    if as_json:
        _echo_json(cps)
        return
    if not cps:
        click.echo("no checkpoints")
    for cp in cps:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(cp.created_at))
        click.echo(f"{cp.id}  {when} UTC  {cp.entries} entries  {cp.bytes} bytes  {','.join(cp.domains)}")


@checkpoint.command("restore")
@click.argument("checkpoint_id")
@ADDRESS
@NAMESPACE
@JSON
def checkpoint_restore(checkpoint_id: str, address: str, namespace: str, as_json: bool) -> None:
    """Restore every domain to CHECKPOINT_ID (what was written since is gone)."""
    with client_of(address, namespace) as c:
        out = c.recovery.restore_checkpoint(checkpoint_id)
    if as_json:
        _echo_json(out)
    else:
        click.echo(f"restored {checkpoint_id}: {json.dumps(out, default=_plain)[:500]}")


@checkpoint.command("delete")
@click.argument("checkpoint_id")
@ADDRESS
@NAMESPACE
def checkpoint_delete(checkpoint_id: str, address: str, namespace: str) -> None:
    """Delete CHECKPOINT_ID from the durable tier."""
    with client_of(address, namespace) as c:
        c.recovery.delete_checkpoint(checkpoint_id)
    click.echo(f"deleted checkpoint {checkpoint_id}")


# ---------------------------------------------------------------------------- checks and metrics


@click.command()
@ADDRESS
@NAMESPACE
@JSON
def verify(address: str, namespace: str, as_json: bool) -> None:
    """Check that every shard's copies agree and stored rows are intact (spec verify_state); exit 1
    when something does not hold."""
    with client_of(address, namespace) as c:
        c.sync()
        out = c.recovery.verify_state()
    if as_json:
        _echo_json(out)
    else:
        click.echo("verify: ok" if out["ok"] else f"verify: NOT ok: {json.dumps(out, default=_plain)[:2000]}")
    sys.exit(0 if out["ok"] else 1)


@click.command()
@click.option("--port", type=click.IntRange(1, 65535), default=9464, show_default=True)
@click.option("--bind", "addr", default="0.0.0.0", show_default=True, help="the address to listen on")
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), default=None,
              help="stop after this long (default: until interrupted)")
@ADDRESS
@NAMESPACE
def metrics(port: int, addr: str, seconds: float | None, address: str, namespace: str) -> None:
    """Serve the system's metrics to Prometheus at http://BIND:PORT/metrics (the spec's instrument
    names in Prometheus' spelling: erlmcp_cache_hits_total, ...) until interrupted."""
    from erlmcp_ray.telemetry import Telemetry, prometheus_endpoint

    with client_of(address, namespace) as c:
        try:
            provider, server = prometheus_endpoint(port, addr=addr)
        except OSError as exc:
            click.echo(f"cannot listen on {addr}:{port}: {exc}", err=True)
            sys.exit(1)
        telemetry = Telemetry(c, provider)
        click.echo(f"serving metrics of namespace {namespace!r} at http://{addr}:{port}/metrics", err=True)
        try:
            deadline = None if seconds is None else time.monotonic() + seconds
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
        finally:
            telemetry.close()
            server.shutdown()


@click.command()
@click.option("--ops", type=click.IntRange(min=10), default=2000, show_default=True, help="operations per row")
@click.option("--domain", default="shared", show_default=True, help="where it writes (keys bench:*, deleted after)")
@ADDRESS
@NAMESPACE
@JSON
def bench(ops: int, domain: str, address: str, namespace: str, as_json: bool) -> None:
    """Measure this client's operations against the running system, beside a bare Ray actor call
    (the floor of any remote operation): median and p99 per operation, and the ratio."""
    from erlmcp_ray.bench import run

    with client_of(address, namespace) as c, click.progressbar(length=ops * 6, label="bench", file=sys.stderr) as bar:
        rows = run(c, ops, domain, progress=bar.update)
    if as_json:
        _echo_json(rows)
        return
    for line in _bench_table(rows):
        click.echo(line)


def _bench_table(rows: list[dict]) -> list[str]:
    base = next((r["median_us"] for r in rows if r["name"] == "bare Ray actor call"), None)
    out = [f"{'operation':<28} {'median us':>10} {'p99 us':>10} {'x bare call':>11}"]
    for r in rows:
        ratio = f"{r['median_us'] / base:.2f}" if base else "-"
        out.append(f"{r['name']:<28} {r['median_us']:>10.1f} {r['p99_us']:>10.1f} {ratio:>11}")
    return out
