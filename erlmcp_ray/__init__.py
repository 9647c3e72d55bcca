"""erlmcp_ray: cross-agent memory for AI agents on Ray.

A Python port of the erlmcp v3 distributed memory design (spec in
``shared/spec``). Layout:

    config.py        MemoryConfig: the spec's sys.config as one pydantic tree
    errors.py        the exception tree (drawn in its docstring)
    core/            pure logic, no Ray: codec, versions (vclock, hlc), records,
                     op-log, shard state, Entry/Version
    cli.py           the ``erlmcp-ray`` command
"""

from erlmcp_ray import errors
from erlmcp_ray.config import (
    Backend,
    CoherenceLevel,
    Consistency,
    DomainConfig,
    EvictionPolicyName,
    MemoryConfig,
)
from erlmcp_ray.core.entry import Entry, Version
from erlmcp_ray.core.vclock import Ordering, VersionVector
from erlmcp_ray.errors import (
    CheckpointNotFoundError,
    ConfigError,
    ErlmcpRayError,
    InvalidConsistencyError,
    InvalidKeyError,
    InvalidValueError,
    MemoryPressureError,
    OperationTimeoutError,
    ReplicationError,
    StaleEpochError,
    UnavailableError,
    UnknownDomainError,
)

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "CheckpointNotFoundError",
    "CoherenceLevel",
    "ConfigError",
    "Consistency",
    "DomainConfig",
    "Entry",
    "ErlmcpRayError",
    "EvictionPolicyName",
    "InvalidConsistencyError",
    "InvalidKeyError",
    "InvalidValueError",
    "MemoryConfig",
    "MemoryPressureError",
    "OperationTimeoutError",
    "Ordering",
    "ReplicationError",
    "StaleEpochError",
    "UnavailableError",
    "UnknownDomainError",
    "Version",
    "VersionVector",
    "errors",
]
