"""What ``erlmcp-ray status`` shows: one snapshot of a running system, and its text rendering.

``collect(client)`` asks the system (one round of inspection calls) and returns plain data:

- ``domains``: per domain its entries, bytes against its limit, pressure level, backend, shards x
  copies, the worst replica lag (operations) and staleness, evictions and refused writes, and where
  each copy sits (``placement``: ``"shard/slot" -> node``, the owner marked);
- ``nodes``: per Ray node what the shard copies there hold against ``limits`` (ratio, pressure,
  refused shards as the memory check last saw them), the node's RAM in use, our processes' memory;
- ``clients``: per live client its cache hits per tier, misses and hit ratio (from the counters
  each client sends the coordinator);
- ``alerts``: what fires now, the counts, and the newest events.

``render(status)`` turns that into the tables the command prints. Pure: tested without Ray.
"""

from __future__ import annotations

from typing import Any

__all__ = ["clients", "collect", "copies", "domains", "nodes", "render"]

_EVENTS_SHOWN = 10


def collect(client: Any) -> dict[str, Any]:
    """Everything ``erlmcp-ray status`` shows, each system call made once."""
    memory = client.get_cluster_memory()
    alerts = client.alerts()
    return {
        "namespace": client.namespace,
        "domains": domains(client, memory=memory),
        "nodes": nodes(client, memory=memory, alerts=alerts),
        "clients": clients(client),
        "alerts": {"active": alerts["active"], "fired": alerts["fired"], "resolved": alerts["resolved"],
                   "evaluations": alerts["evaluations"], "node_evictions": alerts.get("node_evictions", 0),
                   "recent": alerts["events"][-_EVENTS_SHOWN:]},
    }


def _owner_slot(owners: dict, domain: str, shard: int) -> int:
    return owners.get(f"{domain}/{shard}", {}).get("slot", 0)  # ``owners`` names only the shards whose owner moved


def copies(client: Any, memory: dict | None = None, owners: dict | None = None) -> list[dict[str, Any]]:
    """One row per shard copy the nodes report: domain, shard, slot, owner?, node_id, bytes (sorted)."""
    memory = client.get_cluster_memory() if memory is None else memory
    owners = client.recovery.get_failover_status()["owners"] if owners is None else owners
    rows = [{"domain": domain, "shard": shard, "slot": slot, "owner": slot == _owner_slot(owners, domain, shard),
             "node_id": node["node_id"], "bytes": nbytes}
            for node in memory["node_data"] for domain, shard, slot, nbytes in node["copies"]]
    return sorted(rows, key=lambda r: (r["domain"], r["shard"], r["slot"]))


def domains(client: Any, memory: dict | None = None) -> list[dict[str, Any]]:
    """Per domain: usage against its limit, pressure, shards x copies, the worst replica lag and
    staleness, evictions, refused writes, and where each copy sits (``placement``)."""
    sync = client.sync_status()
    owners = client.recovery.get_failover_status()["owners"]
    where = {(r["domain"], r["shard"], r["slot"]): r["node_id"] for r in copies(client, memory, owners)}
    out = []
    for name in client.config.domains:
        d = client.get_domain_stats(name)
        replicas = [r for s in sync.get(name, []) for r in s["replicas"]]
        placement = {f"{shard}/{slot}": {"node": where.get((name, shard, slot)),
                                         "owner": slot == _owner_slot(owners, name, shard)}
                     for shard in range(d["shards"]) for slot in range(d["replicas"] + 1)}
        out.append({
            "domain": name, "backend": d["backend"], "consistency": d["consistency"], "entries": d["entries"],
            "bytes": d["bytes"], "limit": d["limit"], "used": d["bytes"] / d["limit"] if d["limit"] else 0.0,
            "pressure": d["pressure"], "shards": d["shards"], "copies": d["replicas"] + 1,
            "eviction": d["eviction"], "evictions": d["evictions"], "refused_writes": d["refused_writes"],
            "max_lag_ops": max((r["seq_lag"] for r in replicas), default=0),
            "max_staleness_ms": max((r["staleness_ms"] for r in replicas), default=0.0),
            "placement": placement,
        })
    return out


def nodes(client: Any, memory: dict | None = None, alerts: dict | None = None) -> list[dict[str, Any]]:
    """Per Ray node: what its copies hold against the node limits, refused shards (as the memory
    check last saw them), its RAM, our processes' memory."""
    memory = client.get_cluster_memory() if memory is None else memory
    checked = (client.alerts() if alerts is None else alerts).get("nodes", {})
    return [{"node_id": n["node_id"], "address": n["address"], "copies": len(n["copies"]), "bytes": n["bytes"],
             "entries": n["entries"], "limit_bytes": n["limit_bytes"], "max_entries": n["max_entries"],
             "used_ratio": n["used_ratio"], "pressure": n["pressure"], "warn": n["warn"],
             "refused_shards": checked.get(n["node_id"], {}).get("refused", []), "ram_total": n["total"],
             "ram_used_percent": n["used_percent"], "processes_rss": n["processes"]}
            for n in memory["node_data"]]


def clients(client: Any) -> list[dict[str, Any]]:
    """Per live client (the counters each sends the coordinator): hits per tier, misses, hit ratio."""
    out = []
    for cid, r in sorted(client.coordinator.client_reports().items()):
        hits, misses = r["l0_hits"] + r["l1_hits"], r["misses"]
        out.append({"client": cid, "node": r.get("node"), "l0_hits": r["l0_hits"], "l1_hits": r["l1_hits"],
                    "misses": misses, "hit_ratio": hits / (hits + misses) if hits + misses else None,
                    "buffered": r["buffered"]})
    return out


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover - the loop returns


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    cells = [headers, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]


def _short(node: str | None) -> str:
    return "?" if node is None else node[:8]


def render(status: dict[str, Any]) -> str:
    out = [f"namespace {status['namespace']}", "", "DOMAINS"]
    rows = []
    for d in status["domains"]:
        placement = " ".join(f"{k}{'*' if v['owner'] else ''}@{_short(v['node'])}"
                             for k, v in d["placement"].items())
        rows.append([d["domain"], d["backend"], d["consistency"], d["entries"],
                     f"{_size(d['bytes'])}/{_size(d['limit'])} ({d['used']:.0%})", d["pressure"],
                     f"{d['shards']}x{d['copies']}", d["max_lag_ops"], f"{d['max_staleness_ms']:.0f}",
                     d["evictions"], d["refused_writes"], placement])
    out += _table(["domain", "backend", "consistency", "entries", "bytes/limit", "pressure", "shards",
                   "lag(ops)", "stale(ms)", "evicted", "refused", "copies (shard/slot, *owner @node)"], rows)
    out += ["", "NODES"]
    out += _table(["node", "copies", "entries", "bytes/limit", "pressure", "refusing", "RAM used", "our RSS"],
                  [[_short(n["node_id"]), n["copies"], n["entries"],
                    f"{_size(n['bytes'])}/{_size(n['limit_bytes'])} ({n['used_ratio']:.0%})"
                    + (" WARN" if n["warn"] else ""), n["pressure"], ",".join(n["refused_shards"]) or "-",
                    f"{n['ram_used_percent']:.0f}% of {_size(n['ram_total'])}", _size(n["processes_rss"])]
                   for n in status["nodes"]])
    out += ["", "CLIENTS"]
    out += _table(["client", "node", "L0 hits", "L1 hits", "misses", "hit ratio", "buffered"],
                  [[c["client"], _short(c["node"]), c["l0_hits"], c["l1_hits"], c["misses"],
                    "-" if c["hit_ratio"] is None else f"{c['hit_ratio']:.1%}", c["buffered"]]
                   for c in status["clients"]])
    a = status["alerts"]
    out += ["", (f"ALERTS  firing now: {len(a['active'])}  fired: {a['fired']}  resolved: {a['resolved']}  "
                f"checks: {a['evaluations']}  evicted for node limits: {a['node_evictions']}")]
    out += [f"  FIRING {x['metric']} of {x['subject']} -> {x['action']}" for x in a["active"]]
    out += [f"  {e['state']:<8} {e['metric']} of {e['subject']} = {_value(e['value'])} "
            f"(threshold {e['threshold']}, {e['action']})" for e in a["recent"]]
    return "\n".join(out)


def _value(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"
