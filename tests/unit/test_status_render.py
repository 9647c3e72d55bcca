"""``erlmcp_ray.status.render``: the tables ``erlmcp-ray status`` prints, from plain data (no Ray)."""

from __future__ import annotations

from erlmcp_ray.status import render


def _status(**alerts) -> dict:
    return {
        "namespace": "ns",
        "domains": [{"domain": "reg", "backend": "replicated", "consistency": "strong", "entries": 3,
                     "bytes": 1536, "limit": 1024 * 1024, "used": 1536 / 1024 / 1024, "pressure": "low",
                     "shards": 1, "copies": 2, "eviction": "none", "evictions": 0, "refused_writes": 0,
                     "max_lag_ops": 4, "max_staleness_ms": 12.0,
                     "placement": {"0/0": {"node": "abcdef0123", "owner": True},
                                   "0/1": {"node": None, "owner": False}}}],
        "nodes": [{"node_id": "abcdef0123", "address": "10.0.0.1", "copies": 2, "bytes": 3072, "entries": 6,
                   "limit_bytes": 4096, "max_entries": 100, "used_ratio": 0.75, "pressure": "medium", "warn": False,
                   "refused_shards": ["reg/0"], "ram_total": 2 * 1024**3, "ram_used_percent": 40.0,
                   "processes_rss": 300 * 1024**2}],
        "clients": [{"client": "c1", "node": "abcdef0123", "l0_hits": 5, "l1_hits": 3, "misses": 2,
                     "hit_ratio": 0.8, "buffered": 0},
                    {"client": "c2", "node": None, "l0_hits": 0, "l1_hits": 0, "misses": 0, "hit_ratio": None,
                     "buffered": 7}],
        "alerts": {"active": [], "fired": 0, "resolved": 0, "evaluations": 9, "node_evictions": 0, "recent": [],
                   **alerts},
    }


def test_render_shows_every_section_with_units_and_placement():
    text = render(_status())
    assert text.splitlines()[0] == "namespace ns"
    assert "1.5 KiB/1.0 MiB (0%)" in text and "0/0*@abcdef01 0/1@?" in text  # owner starred, unknown node "?"
    assert "3.0 KiB/4.0 KiB (75%)" in text and "reg/0" in text and "40% of 2.0 GiB" in text
    assert "80.0%" in text and " - " in text  # a client that read nothing has no ratio
    assert "ALERTS  firing now: 0  fired: 0  resolved: 0  checks: 9" in text


def test_render_lists_what_fires_and_the_newest_events():
    text = render(_status(active=[{"metric": "node_usage", "subject": "n1", "action": "alert_operator"}], fired=2,
                          resolved=1, recent=[{"state": "resolved", "metric": "memory_usage", "subject": "reg",
                                               "value": None, "threshold": 0.9, "action": "trigger_eviction"}]))
    assert "FIRING node_usage of n1 -> alert_operator" in text
    assert "resolved memory_usage of reg = - (threshold 0.9, trigger_eviction)" in text
