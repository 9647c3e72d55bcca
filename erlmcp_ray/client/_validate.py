"""Checks of every argument a caller passes, made before anything is sent.

Each raises a documented error naming the argument: ``InvalidKeyError`` (keys),
``InvalidValueError`` (values, ttl, tags, timeouts), ``InvalidConsistencyError`` (levels),
``UnknownDomainError`` (domains). What an actor could still choke on — a TTL past the record's
64-bit expiry, a tag list past its 16-bit length, a lone surrogate in a key — is refused here.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack

from erlmcp_ray.config import CoherenceLevel, Consistency
from erlmcp_ray.core.codec import MAX_KEY_BYTES, validate_key
from erlmcp_ray.errors import InvalidValueError

__all__ = ["MAX_TTL_S", "coherence", "consistency", "key", "tags", "timeout", "ttl_ms"]

#: The longest TTL: a century (expiry is stored as 64-bit milliseconds since the epoch).
MAX_TTL_S = 100 * 365.25 * 86400
#: Tags are stored as one msgpack list of at most this many bytes (a 16-bit length).
MAX_TAGS_BYTES = 0xFFFF
_FAST_KEY_CHARS = MAX_KEY_BYTES // 4  # an ASCII str this short is within 1 KiB

# Members hash like their values, so one dict answers both "strong" and Consistency.STRONG.
_LEVELS: dict[Any, Consistency] = {**{m.value: m for m in Consistency}, **{m: m for m in Consistency}}
_COHERENCE: dict[Any, CoherenceLevel] = {**{m.value: m for m in CoherenceLevel}, **{m: m for m in CoherenceLevel}}


def key(k: Any) -> str:
    if type(k) is str and 0 < len(k) <= _FAST_KEY_CHARS and k.isascii():
        return k
    return validate_key(k)


def consistency(level: Any) -> Consistency:
    try:
        found = _LEVELS.get(level)
    except TypeError:  # unhashable
        found = None
    return found if found is not None else Consistency.parse(level)


def coherence(level: Any) -> CoherenceLevel:
    try:
        found = _COHERENCE.get(level)
    except TypeError:
        found = None
    return found if found is not None else CoherenceLevel.parse(level)


def _number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def ttl_ms(ttl: Any, default_ms: int | None) -> int | None:
    if ttl is None:
        return default_ms
    if not _number(ttl) or not (ttl > 0) or not math.isfinite(ttl) or ttl > MAX_TTL_S:
        raise InvalidValueError(f"ttl must be a positive, finite number of seconds of at most {MAX_TTL_S:.0f} "
                                f"(a century), got {ttl!r}", where="ttl")
    return max(1, int(ttl * 1000))


def tags(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (tuple, list, set, frozenset)):
        raise InvalidValueError("tags must be a list or tuple of str", where="tags")
    out = tuple(value)
    if not out:
        return out
    for t in out:
        if type(t) is not str or not t:
            raise InvalidValueError(f"each tag must be a non-empty str, got {t!r}", where="tags")
        if not t.isascii():
            try:
                t.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InvalidValueError(f"tag {t!r} is not valid UTF-8 text: {exc.reason}", where="tags") from None
    size = len(msgpack.packb(list(out), use_bin_type=True))
    if size > MAX_TAGS_BYTES:
        raise InvalidValueError(f"tags take {size} bytes encoded; the limit is {MAX_TAGS_BYTES}", where="tags")
    return out


def timeout(value: Any, where: str = "timeout", *, allow_none: bool = True) -> float | None:
    if value is None and allow_none:
        return None
    if not _number(value) or not math.isfinite(value) or value < 0:
        raise InvalidValueError(f"{where} must be a finite number of seconds >= 0, got {value!r}", where=where)
    return float(value)
