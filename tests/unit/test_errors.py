from __future__ import annotations

import inspect

from erlmcp_ray import errors


def test_every_error_is_in_the_tree_and_documented():
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, Exception)]
    assert {c.__name__ for c in classes} == set(errors.__all__)
    for cls in classes:
        assert issubclass(cls, errors.ErlmcpRayError)
        assert cls.__doc__ and "Raised when" in cls.__doc__
        assert cls.__name__ in errors.__doc__


def test_retryable_and_builtin_compatibility():
    assert errors.UnavailableError("x").retryable and errors.OperationTimeoutError("x").retryable
    assert not errors.ReplicationError("x").retryable
    assert issubclass(errors.ConfigError, ValueError)
    assert issubclass(errors.UnknownDomainError, LookupError)
    e = errors.UnknownDomainError("nope", known=("session", "cache"))
    assert str(e) == "unknown memory domain 'nope'; known domains: session, cache"
    assert errors.ConfigError("bad", path="domains.session.max_bytes").path == "domains.session.max_bytes"
    assert str(errors.CheckpointNotFoundError("no checkpoint 'x'")) == "no checkpoint 'x'"
