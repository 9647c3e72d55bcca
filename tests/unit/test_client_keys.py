"""``client.keys(domain, pattern, tag=)``: what the shard owners hold, over every shard, sorted;
the client's own buffered writes included (it flushes first); bad input refused (no Ray)."""

from __future__ import annotations

import pytest

from erlmcp_ray.errors import InvalidValueError, UnknownDomainError
from erlmcp_ray.testing import FakeTransport


def test_keys_lists_every_shard_by_pattern_and_tag():
    fake = FakeTransport({"domains": {"shared": {"shards": 4}}})
    c = fake.client()
    try:
        for i in range(30):
            c.put("shared", f"user:{i:02d}", i, tags=("even",) if i % 2 == 0 else ())
        c.put("shared", "other", 1)  # eventual: still buffered, listed all the same
        assert c.keys("shared") == sorted([f"user:{i:02d}" for i in range(30)] + ["other"])
        assert c.keys("shared", "user:1?") == [f"user:{i}" for i in range(10, 20)]
        assert c.keys("shared", tag="even") == [f"user:{i:02d}" for i in range(0, 30, 2)]
        c.delete("shared", "user:00", consistency="strong")
        assert "user:00" not in c.keys("shared", "user:0*")
        with pytest.raises(InvalidValueError, match="pattern"):
            c.keys("shared", "")
        with pytest.raises(InvalidValueError, match="tag"):
            c.keys("shared", tag=5)
        with pytest.raises(UnknownDomainError):
            c.keys("nope")
    finally:
        c.close()
