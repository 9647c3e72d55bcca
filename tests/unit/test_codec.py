"""Value codec and key validation: round trips and bad input."""

from __future__ import annotations

import math

import pytest
from hypothesis import given

from erlmcp_ray.core.codec import MAX_KEY_BYTES, decode_value, encode_value, validate_key
from erlmcp_ray.errors import ErlmcpRayError, InvalidKeyError, InvalidValueError
from tests.strategies import msgpack_values


def normalise(v):
    if isinstance(v, tuple):
        return [normalise(x) for x in v]
    if isinstance(v, list):
        return [normalise(x) for x in v]
    if isinstance(v, dict):
        return {k: normalise(x) for k, x in v.items()}
    return v


@given(msgpack_values)
def test_round_trip(value):
    assert decode_value(encode_value(value)) == normalise(value)


def test_spec_example_value_and_fresh_objects():
    value = {"model": "gpt-4", "tokens": 1500, "nested": {"ok": True, "xs": (1, 2.5, None, b"\x00")}}
    data = encode_value(value)
    out = decode_value(data)
    assert out == {"model": "gpt-4", "tokens": 1500, "nested": {"ok": True, "xs": [1, 2.5, None, b"\x00"]}}
    out["tokens"] = 0
    assert decode_value(data)["tokens"] == 1500


@pytest.mark.parametrize(
    ("value", "where", "what"),
    [
        ({1, 2}, "value", "set is not supported"),
        ({"a": [1, {"b": object()}]}, "value['a'][1]['b']", "object is not supported"),
        ({"k": {math.nan: 1}}, "value['k']", "dict key NaN (float)"),
        ({(1, 2): "x"}, "value", "dict key (1, 2) (tuple)"),
        ({None: 1}, "value", "dict key None"),
        ([2**64], "value[0]", "does not fit in 64 bits"),
        ({"s": "\ud800"}, "value['s']", "not valid UTF-8"),
    ],
)
def test_unsupported_values_say_where(value, where, what):
    with pytest.raises(InvalidValueError) as info:
        encode_value(value)
    assert info.value.where == where
    assert what in str(info.value)
    assert str(info.value).startswith(where + ":")
    assert isinstance(info.value, ErlmcpRayError) and isinstance(info.value, ValueError)


def test_int_keys_allowed_and_codec_recovers_after_a_failure():
    with pytest.raises(InvalidValueError):
        encode_value({"x": {1.5: 2}})
    assert decode_value(encode_value({1: "a", -2: [3]})) == {1: "a", -2: [3]}
    assert decode_value(encode_value({"ok": 1})) == {"ok": 1}


def test_value_size_limit():
    with pytest.raises(InvalidValueError, match="exceeds the limit"):
        encode_value(b"x" * 100, max_bytes=50)


def test_deep_nesting_is_refused():
    v: list = []
    for _ in range(2000):
        v = [v]
    with pytest.raises(InvalidValueError, match="nesting"):
        encode_value(v)


def test_keys():
    assert validate_key("session:42") == "session:42"
    assert validate_key("é" * (MAX_KEY_BYTES // 2)) == "é" * (MAX_KEY_BYTES // 2)
    for bad, msg in [
        ("", "empty"),
        (b"bytes", "must be str"),
        (42, "must be str"),
        (None, "must be str"),
        ("x" * (MAX_KEY_BYTES + 1), "limit is 1024"),
        ("é" * (MAX_KEY_BYTES // 2 + 1), "limit is 1024"),
        ("\udc80", "UTF-8"),
    ]:
        with pytest.raises(InvalidKeyError, match=msg) as info:
            validate_key(bad)
        assert info.value.where == "key"
