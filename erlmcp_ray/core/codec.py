"""Value and key encoding.

Values are msgpack-encoded once, in the client, and travel and rest as bytes;
the encoded size is what memory accounting counts. Supported: ``None``,
``bool``, ``int`` (64-bit), ``float``, ``str``, ``bytes``, ``list``/``tuple``
(a tuple comes back as a list) and ``dict`` with ``str``, ``bytes`` or ``int``
keys. Anything else raises :class:`InvalidValueError` naming where in the value
the problem is, e.g. ``value['items'][3]: set is not supported``.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import msgpack

from erlmcp_ray.errors import InvalidKeyError, InvalidValueError

__all__ = ["MAX_KEY_BYTES", "MAX_VALUE_BYTES", "decode_value", "encode_value", "validate_key"]

MAX_KEY_BYTES = 1024
MAX_VALUE_BYTES = 64 * 1024 * 1024

_KEY_TYPES = (str, bytes, int)
_SCALARS = frozenset({str, int, float, bool, bytes, type(None)})
_local = threading.local()


def _packer() -> msgpack.Packer:
    # A Packer reuses its buffer and is about twice as fast as packb, but it is
    # not thread-safe; one per thread keeps a shared client safe.
    try:
        return _local.packer
    except AttributeError:
        _local.packer = msgpack.Packer(use_bin_type=True, autoreset=True)
        return _local.packer


def encode_value(value: Any, max_bytes: int = MAX_VALUE_BYTES) -> bytes:
    """Encode ``value`` to msgpack bytes, or raise InvalidValueError saying where it fails."""
    try:
        data = _packer().pack(value)
        # msgpack packs any hashable dict key, so dict keys need vetting. A flat
        # dict with str keys (the common agent-memory value) is vetted by a short
        # loop; anything else by strict decoding, one C-speed pass that accepts
        # only str and bytes keys. Only values with other keys (int is allowed,
        # float/None/tuple are not) pay for the Python walk below.
        if not _flat_str_dict(value):
            msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception:  # noqa: BLE001 - msgpack raises TypeError, ValueError, OverflowError...
        _local.__dict__.pop("packer", None)  # a failed pack may leave the buffer dirty
        _explain(value, "value")
        try:  # int keys only: the walk found nothing wrong
            data = _packer().pack(value)
        except Exception as exc:  # noqa: BLE001  # pragma: no cover - msgpack refused what the walk allowed
            _local.__dict__.pop("packer", None)
            raise InvalidValueError(f"cannot be encoded: {exc}") from None
    if len(data) > max_bytes:
        raise InvalidValueError(f"encoded size {len(data)} bytes exceeds the limit of {max_bytes} bytes")
    return data


def _flat_str_dict(value: Any) -> bool:
    if type(value) is not dict or len(value) > 32:
        return type(value) in _SCALARS
    for k, v in value.items():
        if type(k) is not str:
            return False
        if type(v) not in _SCALARS:
            # a short list of scalars (tags, ids) is as safe as a scalar
            if type(v) is not list or len(v) > 8:
                return False
            for x in v:
                if type(x) not in _SCALARS:
                    return False
    return True


def decode_value(data: bytes) -> Any:
    """Decode bytes made by :func:`encode_value`; a fresh object every call."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def validate_key(key: object) -> str:
    """Return ``key`` if it is a valid key: a non-empty ``str`` of at most 1 KiB in UTF-8."""
    if type(key) is not str:
        if isinstance(key, str):
            return validate_key(str(key))
        raise InvalidKeyError(f"keys must be str, got {type(key).__name__}")
    if not key:
        raise InvalidKeyError("keys must not be empty")
    n = len(key)
    if n > MAX_KEY_BYTES // 4 or not key.isascii():
        try:
            n = len(key.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise InvalidKeyError(f"key is not valid UTF-8 text: {exc.reason}") from None
    if n > MAX_KEY_BYTES:
        raise InvalidKeyError(f"key is {n} bytes in UTF-8; the limit is {MAX_KEY_BYTES}")
    return key


def _explain(value: Any, where: str, depth: int = 0) -> None:
    """Walk ``value`` and raise InvalidValueError at the first unsupported part."""
    if depth > 500:
        raise InvalidValueError("nesting is deeper than 500 levels (a cycle?)", where)
    if value is None or isinstance(value, (bool, float, bytes, bytearray, memoryview)):
        return
    if isinstance(value, int):
        if not -(2**63) <= value < 2**64:
            raise InvalidValueError(f"integer {value} does not fit in 64 bits", where)
        return
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidValueError(f"string is not valid UTF-8 text: {exc.reason}", where) from None
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _explain(item, f"{where}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for k, item in value.items():
            if not isinstance(k, _KEY_TYPES) or isinstance(k, bool):
                shown = "NaN" if isinstance(k, float) and math.isnan(k) else repr(k)
                raise InvalidValueError(
                    f"dict key {shown} ({type(k).__name__}) is not supported; keys must be str, bytes or int",
                    where,
                )
            _explain(k, f"{where} key {k!r}", depth + 1)
            _explain(item, f"{where}[{k!r}]", depth + 1)
        return
    raise InvalidValueError(
        f"{type(value).__name__} is not supported; values may be None, bool, int, float, str, bytes, "
        "list, tuple or dict",
        where,
    )
