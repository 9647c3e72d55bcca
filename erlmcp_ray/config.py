"""Configuration of a memory system: one validated, immutable pydantic tree.

The tree is the spec's ``sys.config`` (``{erlmcp_core, [...]}``) plus the per-node limits, the
domain table and the alert rules the spec shows in other sections, and the few settings the Ray port
adds (durable tier, in-process client caches). Sections map one to one::

    spec                                        here (MemoryConfig.…)
    {memory_monitoring, #{...}}                 memory_monitoring     MemoryMonitoringConfig
    {memory_guard, [{context|tool|..., ...}]}   memory_guard          MemoryGuardConfig
    {distributed_memory, #{...}}                distributed_memory    DistributedMemoryConfig
    {cache_coordinator, #{...}}                 cache_coordinator     CacheCoordinatorConfig
    {persistence_selector, #{...}}              persistence_selector  PersistenceSelectorConfig
    Per-Node Limits #{max_bytes, ...}           limits                NodeLimits
      domain_limits => #{D => #{max_bytes}}     domains[D].max_bytes
    Memory Domains table                        domains               dict[str, DomainConfig]
    Alerting #{metric, threshold, ...}          alerts                tuple[AlertRule, ...]
    L3 Redis (or embedded SQLite)               durable               DurableConfig
    L0 / L1 in every process                    client                ClientConfig

The spec's integration-example shape is accepted as well: top-level ``consistency`` and
``replication_factor`` fold into ``distributed_memory``, and ``memory_limit`` (with its
``domain_limits``) folds into ``limits`` and the domains' ``max_bytes``.

Conventions: times are milliseconds as in the spec, except names ending in ``_s`` and
``DomainConfig.default_ttl`` (seconds). Backends accept the spec's names: ets -> memory,
dets -> disk, mnesia -> replicated. Byte sizes take an int or a string such as ``"100MB"``,
``"1 GiB"`` or ``"512KiB"``; K/M/G/T mean powers of 1024 with or without the ``i``, because the
spec writes ``100 * 1024 * 1024`` for "100MB". ``domains`` merge with the five defaults: a
mapping for an existing name overrides only the fields it gives.

Nothing is read at import time. Build the config once, at start-up, and pass the object on::

    cfg = MemoryConfig.load("erlmcp.toml")    # None, a dict, a .toml or a .yaml/.yml path

Every problem is a :class:`~erlmcp_ray.errors.ConfigError` whose ``path`` names the field, e.g.
``"domains.session.max_bytes"``; pydantic's ValidationError never reaches the caller.
"""

from __future__ import annotations

import os
import re
import reprlib
import sys
from collections.abc import Mapping
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from erlmcp_ray.errors import ConfigError, InvalidConsistencyError, UnknownDomainError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "AlertRule",
    "Backend",
    "CacheCoordinatorConfig",
    "ClientConfig",
    "CoherenceLevel",
    "Consistency",
    "DistributedMemoryConfig",
    "DomainConfig",
    "DurabilityRequirement",
    "DurableConfig",
    "DurableKind",
    "DurableMode",
    "EvictionPolicyName",
    "GuardLimits",
    "MemoryConfig",
    "MemoryGuardConfig",
    "MemoryMonitoringConfig",
    "NodeLimits",
    "PersistenceSelectorConfig",
    "TransportConfig",
    "TransportKind",
    "parse_size",
]

KiB = 1024
MiB = 1024**2
GiB = 1024**3

_DOMAIN_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
_FILE_WRAPPER_KEY = "erlmcp_ray"


# --------------------------------------------------------------------------- enums


def _normalise(name: str) -> str:
    return name.strip().lower().replace("-", "_")


class _NameEnum(str, Enum):
    """A str enum of lower-case names, matched case-insensitively ("Bounded-Stale" works)."""

    def __str__(self) -> str:
        return self.value

    @classmethod
    def _missing_(cls, value: object) -> Any:
        if isinstance(value, str):
            wanted = _normalise(value)
            for member in cls:
                if member.value == wanted:
                    return member
        return None


def _parse_level(cls: type[_NameEnum], value: object, what: str) -> Any:
    if isinstance(value, cls):
        return value
    if isinstance(value, str):
        try:
            return cls(value)
        except ValueError:
            pass
    valid = ", ".join(member.value for member in cls)
    raise InvalidConsistencyError(f"unknown {what} {value!r}; expected one of: {valid}")


class Consistency(_NameEnum):
    """Consistency level of a read or write (spec "Consistency Levels"; DESIGN section 4)."""

    EVENTUAL = "eventual"
    BOUNDED_STALE = "bounded_stale"
    STRONG = "strong"

    @classmethod
    def parse(cls, value: object) -> Consistency:
        """Return the level named by ``value`` (a member or a str, any case, '-' or '_')."""
        return _parse_level(cls, value, "consistency level")


class CoherenceLevel(_NameEnum):
    """How far an invalidation is waited for (spec "Coherence Levels")."""

    STRONG = "strong"
    EVENTUAL = "eventual"
    RELAXED = "relaxed"

    @classmethod
    def parse(cls, value: object) -> CoherenceLevel:
        """Return the level named by ``value`` (a member or a str, any case)."""
        return _parse_level(cls, value, "coherence level")


_BACKEND_ALIASES = {"ets": "memory", "dets": "disk", "mnesia": "replicated"}


class Backend(_NameEnum):
    """Where a domain lives: spec ETS -> MEMORY, DETS -> DISK, Mnesia -> REPLICATED."""

    MEMORY = "memory"
    DISK = "disk"
    REPLICATED = "replicated"

    @classmethod
    def _missing_(cls, value: object) -> Any:
        if isinstance(value, str):
            value = _BACKEND_ALIASES.get(_normalise(value), value)
        return super()._missing_(value)


class EvictionPolicyName(_NameEnum):
    """Eviction policy of a domain; NONE means the domain refuses writes when full."""

    LRU = "lru"
    LFU = "lfu"
    TTL = "ttl"
    FIFO = "fifo"
    ARC = "arc"
    RANDOM = "random"
    TINYLFU = "tinylfu"
    NONE = "none"


class DurableMode(_NameEnum):
    """How a domain's shard owners use the durable tier."""

    OFF = "off"  # memory only (a one-copy domain loses everything when its actor dies)
    WRITE_BEHIND = "write_behind"  # flushed every durable.flush_ms: that window can be lost
    WRITE_THROUGH = "write_through"  # a write is acknowledged once the durable store holds it


class DurabilityRequirement(_NameEnum):
    """The persistence selector's ``durability_requirement``."""

    NONE = "none"
    MODERATE = "moderate"
    HIGH = "high"


class DurableKind(_NameEnum):
    """The durable tier (spec L3): none, embedded SQLite, or Redis."""

    NONE = "none"
    SQLITE = "sqlite"
    REDIS = "redis"


# --------------------------------------------------------------------------- value types


def parse_size(value: object) -> int:
    """Return a byte count from an int or a string such as ``"100MB"``, ``"1 GiB"``, ``"512KiB"``.

    K, M, G and T are powers of 1024 whether written KB or KiB: the spec writes
    ``100 * 1024 * 1024`` for 100MB, and a limit that silently shrank by 5 % would surprise.
    Raises ConfigError for anything that is not a size; the sign is checked by the field.
    """
    if isinstance(value, bool):  # bool is an int; True bytes is a typo, not a size
        raise ConfigError(f"expected a byte size, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        match = _SIZE.fullmatch(value.replace("_", ""))
        unit = match[2].lower() if match else None
        if match and unit in _SIZE_UNITS:
            return int(Decimal(match[1]) * _SIZE_UNITS[unit])
    raise ConfigError(f"expected a byte size such as 1048576 or '1MiB', got {value!r}")


_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*")
_SIZE_UNITS = {"": 1, "b": 1} | {
    prefix + suffix: 1024 ** (power + 1)
    for power, prefix in enumerate("kmgt")
    for suffix in ("", "b", "i", "ib")
}


def _not_bool(value: object) -> object:
    # pydantic's lax mode reads True as 1; `replication_factor = true` is a mistake, not a 1.
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    return value


ByteCount = Annotated[int, BeforeValidator(parse_size), Field(gt=0)]
Count = Annotated[int, BeforeValidator(_not_bool), Field(gt=0)]
Millis = Annotated[int, BeforeValidator(_not_bool), Field(gt=0)]
PositiveFloat = Annotated[float, BeforeValidator(_not_bool), Field(gt=0)]
Fraction = Annotated[float, BeforeValidator(_not_bool), Field(gt=0, le=1)]
ReplicationFactor = Annotated[int, BeforeValidator(_not_bool), Field(ge=1, le=7)]


# --------------------------------------------------------------------------- errors


class _FieldProblem(ValueError):
    """A validator's complaint about a field below the one pydantic is validating."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def _join(*parts: str) -> str:
    return ".".join(part for part in parts if part)


def _problems(error: Mapping[str, Any]) -> list[tuple[str, str]]:
    path = ".".join(str(part) for part in error["loc"])
    cause = error.get("ctx", {}).get("error")
    # A model that overrides __init__ is validated through it when nested (pydantic's
    # custom_init), so a nested model's problems arrive as one ConfigError; keep their paths.
    nested = getattr(cause, "_problems", None)
    if nested:
        return [(_join(path, inner), message) for inner, message in nested]
    if isinstance(cause, _FieldProblem):
        return [(_join(path, cause.path), cause.message)]
    if isinstance(cause, Exception):  # a validator's ValueError already says what is wrong
        return [(path, str(cause))]
    if error["type"] == "missing":
        return [(path, "required")]
    if error["type"] == "extra_forbidden":
        return [(path, "unknown key")]
    return [(path, f"{error['msg']} (got {reprlib.repr(error['input'])})")]


def _to_config_error(exc: ValidationError) -> ConfigError:
    problems = [problem for error in exc.errors(include_url=False) for problem in _problems(error)]
    (path, message), *rest = problems
    if rest:
        message += "; also " + "; ".join(f"{p or '<root>'}: {m}" for p, m in rest)
    error = ConfigError(message, path)
    error._problems = problems  # type: ignore[attr-defined]
    return error


class _Model(BaseModel):
    """Frozen, no unknown keys, and ConfigError (never ValidationError) on bad input."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _to_config_error(exc) from None

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Any:
        try:
            return super().model_validate(obj, **kwargs)
        except ValidationError as exc:
            raise _to_config_error(exc) from None


# --------------------------------------------------------------------------- sections


class MemoryMonitoringConfig(_Model):
    """Spec ``memory_monitoring``: the periodic memory check of every node."""

    enabled: bool = Field(True, description="Run the periodic memory check.")
    check_interval: Millis = Field(30_000, description="Milliseconds between two memory checks.")
    memory_threshold: Fraction = Field(0.80, description="Used/limit ratio above which pressure is high.")
    binary_threshold: ByteCount = Field(
        50_000_000, description="Bytes of large binaries (encoded values) that trigger a collection."
    )
    auto_gc: bool = Field(True, description="Collect garbage automatically when over a threshold.")


class GuardLimits(_Model):
    """Spec ``memory_guard`` limits of one kind of process (max heap, max binary heap)."""

    max_heap_size: ByteCount = Field(description="Largest heap a guarded process may use, in bytes.")
    max_bin_vheap_size: ByteCount = Field(description="Largest binary (value) heap, in bytes.")


_GUARD_DEFAULTS = {
    "context": {"max_heap_size": 100_000_000, "max_bin_vheap_size": 50_000_000},
    "tool": {"max_heap_size": 50_000_000, "max_bin_vheap_size": 25_000_000},
    "transport": {"max_heap_size": 30_000_000, "max_bin_vheap_size": 15_000_000},
}


class MemoryGuardConfig(_Model):
    """Spec ``memory_guard``: per-process limits for context, tool and transport processes."""

    context: GuardLimits = Field(
        GuardLimits(**_GUARD_DEFAULTS["context"]), description="Context process guard (spec: 100MB heap)."
    )
    tool: GuardLimits = Field(
        GuardLimits(**_GUARD_DEFAULTS["tool"]), description="Tool process guard (spec: 50MB heap)."
    )
    transport: GuardLimits = Field(
        GuardLimits(**_GUARD_DEFAULTS["transport"]), description="Transport process guard (spec: 30MB heap)."
    )

    @model_validator(mode="before")
    @classmethod
    def _fill_partial_guards(cls, data: Any) -> Any:
        # `context = {max_heap_size = "200MB"}` should keep the spec's binary heap limit.
        if not isinstance(data, Mapping):
            return data
        return {
            kind: {**_GUARD_DEFAULTS[kind], **limits}
            if kind in _GUARD_DEFAULTS and isinstance(limits, Mapping)
            else limits
            for kind, limits in data.items()
        }


class DistributedMemoryConfig(_Model):
    """Spec ``distributed_memory``: system-wide defaults that domains inherit."""

    consistency: Consistency = Field(
        Consistency.EVENTUAL, description="Default consistency of domains that set none."
    )
    replication_factor: ReplicationFactor = Field(
        2, description="Copies (owner + replicas) of each shard of a replicated domain that sets none."
    )
    checkpoint_interval: Annotated[int, BeforeValidator(_not_bool), Field(ge=0)] = Field(
        300_000, description="Milliseconds between checkpoints to the durable tier; 0 turns them off "
        "(as does durable.kind none)."
    )
    checkpoint_retention: Annotated[int, BeforeValidator(_not_bool), Field(ge=1)] = Field(
        3, description="Checkpoints kept: after each new one, all but this many newest are deleted."
    )
    auto_select: bool = Field(
        True, description="Let the persistence selector migrate domains that set no backend (with "
        "persistence_selector.auto_select: both must be on).")
    failure_timeout_ms: Annotated[int, BeforeValidator(_not_bool), Field(ge=200, le=600_000)] = Field(
        2_000, description="A shard copy that does not answer the supervisor's health checks for this long, "
        "or whose node died, is failed: an owner's in-sync replica is promoted. An owner serves only while "
        "it holds a lease of half this, renewed by its replicas and the supervisor.")


class CacheCoordinatorConfig(_Model):
    """Spec ``cache_coordinator``: cross-process cache invalidation."""

    coherence_level: CoherenceLevel = Field(
        CoherenceLevel.EVENTUAL, description="Default coherence of invalidations (strong/eventual/relaxed)."
    )
    invalidation_timeout: Millis = Field(
        5_000, description="Milliseconds a strong invalidation waits for every client's acknowledgement."
    )
    lease_ms: Millis = Field(
        10_000,
        description="Client lease in milliseconds, renewed by each poll; a lapsed client drops its caches.",
    )


class PersistenceSelectorConfig(_Model):
    """Spec ``persistence_selector``: periodic re-evaluation of each domain's backend."""

    auto_select: bool = Field(
        True, description="Re-evaluate the backend of domains that set none from their observed size and "
        "read ratio, and migrate them live (with distributed_memory.auto_select: both must be on).")
    evaluation_interval: Annotated[int, BeforeValidator(_not_bool), Field(ge=100)] = Field(
        300_000, description="Milliseconds between two evaluations (at least 100).")


class NodeLimits(_Model):
    """Spec "Per-Node Limits" (its ``domain_limits`` become ``DomainConfig.max_bytes``)."""

    max_bytes: ByteCount = Field(1 * GiB, description="Bytes of entries one node may hold (spec: 1GB).")
    max_entries: Count = Field(100_000, description="Entries one node may hold.")
    warn_percent: Fraction = Field(0.80, description="Used/limit ratio at which a warning is raised.")


class DomainConfig(_Model):
    """One memory domain (spec "Memory Domains"); None fields inherit system-wide defaults."""

    backend: Backend | None = Field(
        None,
        description="memory (spec ETS: one copy), disk (spec DETS: one copy + durable write-through) "
        "or replicated (spec Mnesia: owner + replicas); None = chosen by the persistence selector "
        "(memory until it decides; never migrated when set).",
    )
    durability_requirement: DurabilityRequirement = Field(
        DurabilityRequirement.MODERATE,
        description="What the persistence selector assumes for a domain whose backend it chooses: none, "
        "moderate (survive a restart or a node loss) or high.",
    )
    max_bytes: ByteCount = Field(description="Byte budget of the domain; required for a new domain.")
    shards: Annotated[int, BeforeValidator(_not_bool), Field(ge=1, le=1024)] = Field(
        1, description="Key-hash shards, each an owner actor (plus replicas)."
    )
    replication_factor: ReplicationFactor | None = Field(
        None,
        description="Copies per shard; None = distributed_memory.replication_factor when replicated, "
        "else 1.",
    )
    min_insync: Count | None = Field(
        None, description="Copies a strong write must reach; None = the replication factor."
    )
    consistency: Consistency | None = Field(
        None, description="Default consistency of the domain; None = distributed_memory.consistency."
    )
    staleness_ms: Millis = Field(
        500, description="bounded_stale window: no read returns a value older than this (ms)."
    )
    eviction: EvictionPolicyName = Field(
        EvictionPolicyName.NONE, description="Eviction policy; none = refuse writes when full."
    )
    default_ttl: PositiveFloat | None = Field(
        None, description="Seconds an entry lives unless put with a ttl; None = no expiry."
    )
    max_entries: Count | None = Field(None, description="Entries the domain may hold; None = no count limit.")
    durable: DurableMode | None = Field(
        None,
        description="Durable tier use: off, write_behind or write_through; None = write_through for "
        "backend disk, off otherwise. Not allowed on backend memory (spec ETS keeps no disk copy).",
    )
    invalidate_source: bool = Field(
        False,
        description="The domain caches an outside source: an invalidation also removes the entry "
        "from the domain's shards, not only from client caches.",
    )

    @model_validator(mode="after")
    def _check_copies(self) -> DomainConfig:
        rf = self.replication_factor
        if rf is not None and rf > 1 and self.backend not in (None, Backend.REPLICATED):
            raise _FieldProblem(
                "replication_factor",
                f"backend {self.backend.value!r} keeps a single copy (spec ETS/DETS have no replicas); "
                "use backend 'replicated' or replication_factor 1",
            )
        if self.backend is None and self.durable is not None:
            raise _FieldProblem("durable", "the persistence selector chooses this domain's backend and its "
                                "durable mode with it; set backend too, or set durability_requirement")
        if self.backend is Backend.MEMORY and self.durable not in (None, DurableMode.OFF):
            raise _FieldProblem("durable", "backend 'memory' keeps no disk copy (spec ETS); use backend "
                                "'disk' (one copy) or 'replicated' with a durable mode")
        if self.backend is Backend.DISK and self.durable is DurableMode.OFF:
            raise _FieldProblem("durable", "backend 'disk' is the durable one-copy backend (spec DETS); "
                                "use backend 'memory' for no disk copy")
        # The replicated/None case is checked by MemoryConfig, which knows the inherited factor.
        known = rf if rf is not None else (None if self.backend in (None, Backend.REPLICATED) else 1)
        if known is not None and self.min_insync is not None and self.min_insync > known:
            raise _FieldProblem("min_insync", f"{self.min_insync} exceeds the replication factor {known}")
        return self


class DurableConfig(_Model):
    """The durable tier (spec L3): where checkpoints and disk domains go."""

    kind: DurableKind = Field(
        DurableKind.SQLITE, description="sqlite (embedded, the single-machine default), redis or none."
    )
    path: str | None = Field(None, description="SQLite file; None = a file under data_dir.")
    redis_url: str | None = Field(
        None, description="redis://, rediss:// or unix:// URL; required when kind is redis."
    )
    data_dir: str | None = Field(None, description="Directory for local files; None = the system default.")
    flush_ms: Millis = Field(
        100, description="write_behind domains: milliseconds between flushes (the window a crash may lose)."
    )
    max_backlog: Count = Field(
        100_000,
        description="write_behind domains: changes an owner may hold for an unreachable store; past it, "
        "writes are refused (UnavailableError) rather than piling up unbounded.",
    )

    @model_validator(mode="after")
    def _check_redis(self) -> DurableConfig:
        if self.kind is DurableKind.REDIS and not self.redis_url:
            raise _FieldProblem("redis_url", "required when kind is 'redis'")
        if self.redis_url and self.kind is not DurableKind.REDIS:
            # Otherwise a user who set only the URL would silently get SQLite.
            raise _FieldProblem("redis_url", f"given but kind is {self.kind.value!r}; set kind = 'redis'")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise _FieldProblem("redis_url", f"not a redis://, rediss:// or unix:// URL: {self.redis_url!r}")
        return self


class ClientConfig(_Model):
    """The in-process tiers of every MemoryClient (spec L0 process dictionary, L1 ETS)."""

    l0_entries: Count = Field(256, description="Entries in the L0 hot map of each process.")
    l1_max_bytes: ByteCount = Field(64 * MiB, description="Bytes of the L1 cache per domain per process.")
    write_behind_interval_ms: PositiveFloat = Field(
        2.0, description="Milliseconds between flushes of buffered eventual writes."
    )
    write_behind_max_batch: Count = Field(1024, description="Writes sent in one write-behind batch.")
    call_timeout_s: PositiveFloat = Field(30.0, description="Seconds a remote call may take, then times out.")
    poll_timeout_s: PositiveFloat = Field(1.0, description="Seconds one invalidation long-poll waits.")


class TransportKind(_NameEnum):
    """How clients reach the shard copies: a direct authenticated socket, or Ray actor calls."""

    DIRECT = "direct"
    RAY = "ray"


class TransportConfig(_Model):
    """The data path between clients and shard copies (issue 14)."""

    kind: TransportKind = Field(
        TransportKind.DIRECT,
        description="direct: reads and writes go over each shard copy's socket endpoint (Ray calls when one "
                    "cannot be reached); ray: every call is a Ray actor call.",
    )
    max_frame: ByteCount = Field(
        64 * MiB, description="Largest message a shard copy's endpoint accepts, in bytes; a larger one closes "
                              "that connection (and is counted).",
    )
    spin_us: float = Field(
        300.0, ge=0, le=10_000,
        description="How long a direct connection's reader busy-polls for an answer before it sleeps, in "
                    "microseconds (a sleeping reader's wake-up costs more than the round trip on virtual "
                    "machines); turned off for a while on a connection whose answers keep missing it, and "
                    "under TLS. 0: never (a node with more busy clients than cores).",
    )
    tls_cert: str | None = Field(
        None, description="PEM certificate every endpoint and client presents (mutual TLS); None: no TLS.",
    )
    tls_key: str | None = Field(None, description="The private key of tls_cert (PEM).")
    tls_ca: str | None = Field(None, description="PEM CA bundle a peer's certificate must chain to.")

    @model_validator(mode="after")
    def _tls_all_or_none(self) -> TransportConfig:
        given = [k for k in ("tls_cert", "tls_key", "tls_ca") if getattr(self, k)]
        if given and len(given) != 3:
            missing = sorted({"tls_cert", "tls_key", "tls_ca"} - set(given))
            raise ValueError(f"TLS needs tls_cert, tls_key and tls_ca together; missing {', '.join(missing)}")
        return self

    def tls(self) -> dict | None:
        """``{"cert", "key", "ca"}`` (user paths expanded) when TLS is on, else None."""
        if not self.tls_cert:
            return None
        return {k: os.path.expanduser(getattr(self, f"tls_{k}")) for k in ("cert", "key", "ca")}


#: what an alert rule can watch (the supervisor samples each every memory_monitoring.check_interval):
#: per domain, per client, per node (see ``actors/_alerts.py``)
ALERT_METRICS = ("memory_usage", "cache_hit_rate", "node_usage", "node_memory_usage", "node_binary_bytes")
#: what a firing rule can do, besides calling ``"package.module:function"`` with the AlertEvent
ALERT_ACTIONS = ("alert_operator", "trigger_eviction", "force_gc", "force_gc_node")


def resolve_action(action: str) -> Any:
    """The callable a ``"package.module:function"`` alert action names (imported now)."""
    import importlib

    module, _, name = action.partition(":")
    try:
        target: Any = importlib.import_module(module)
        for part in name.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ValueError(f"alert action {action!r} cannot be imported: {exc}") from None
    if not callable(target):
        raise ValueError(f"alert action {action!r} is not callable")  # noqa: TRY004 - pydantic wants ValueError
    return target


def _alert_metric(value: object) -> object:
    if isinstance(value, str) and value not in ALERT_METRICS:
        raise ValueError(f"unknown metric {value!r}; known: {', '.join(ALERT_METRICS)}")
    return value


def _alert_action(value: object) -> object:
    if isinstance(value, str) and value not in ALERT_ACTIONS:
        if ":" not in value:
            raise ValueError(f"unknown action {value!r}; use one of {', '.join(ALERT_ACTIONS)} "
                             f"or 'package.module:function' (called with the AlertEvent)")
        resolve_action(value)
    return value


class AlertRule(_Model):
    """Spec "Alerting": act when ``metric`` has been past ``threshold`` for the whole ``window`` ms
    (``core.alerts`` evaluates it)."""

    metric: Annotated[str, BeforeValidator(_alert_metric)] = Field(
        min_length=1, description=f"What to watch: one of {', '.join(ALERT_METRICS)}.")
    threshold: float = Field(description="Value at which the rule fires.")
    window: Millis = Field(description="Milliseconds the metric must stay past the threshold before it fires.")
    action: Annotated[str, BeforeValidator(_alert_action)] = Field(
        min_length=1, description=f"What to do when it fires: one of {', '.join(ALERT_ACTIONS)}, or "
                                  "'package.module:function', called in the supervisor with the AlertEvent.")
    comparison: Literal["above", "below"] | None = Field(
        None, description="Fire when the metric is above or below the threshold; default: below for a "
                          "*hit_rate metric, above for the others.")
    cooldown: int = Field(0, ge=0, description="Milliseconds after a firing during which the rule does not fire again.")

    @property
    def direction(self) -> str:
        if self.comparison is not None:
            return self.comparison
        return "below" if self.metric.endswith("hit_rate") else "above"


def _default_alerts() -> tuple[AlertRule, ...]:
    return (
        AlertRule(metric="memory_usage", threshold=0.90, window=60_000, action="trigger_eviction", comparison="above"),
        AlertRule(metric="cache_hit_rate", threshold=0.50, window=300_000, action="alert_operator", comparison="below"),
    )


def _default_domains() -> dict[str, dict[str, Any]]:
    """The spec's Memory Domains table, sizes from its Per-Node Limits (fresh dicts each call)."""
    return {
        "session": {
            "backend": Backend.REPLICATED,
            "max_bytes": 100 * MiB,
            "shards": 2,
            "consistency": Consistency.BOUNDED_STALE,
        },
        "shared": {"backend": Backend.REPLICATED, "max_bytes": 200 * MiB, "shards": 2},
        "registry": {"backend": Backend.MEMORY, "max_bytes": 50 * MiB, "consistency": Consistency.STRONG},
        "cache": {
            "backend": Backend.MEMORY,
            "max_bytes": 300 * MiB,
            "eviction": EvictionPolicyName.LRU,
            "invalidate_source": True,
        },
        "ephemeral": {
            "backend": Backend.MEMORY,
            "max_bytes": 50 * MiB,
            "eviction": EvictionPolicyName.LRU,
            "default_ttl": 300.0,
            "invalidate_source": True,
        },
    }


# --------------------------------------------------------------------------- folding the spec's shapes


def _same(a: object, b: object) -> bool:
    if a == b:
        return True
    try:  # "100MiB" and 104857600 say the same thing
        return parse_size(a) == parse_size(b)
    except ConfigError:
        return False


def _section(data: dict[str, Any], key: str) -> dict[str, Any] | None:
    """A mutable copy of ``data[key]`` stored back in ``data``; None if it is not a mapping."""
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        return None  # pydantic reports the wrong type with the right path
    data[key] = dict(value)
    return data[key]


def _set_once(target: dict[str, Any], key: str, value: object, where: str, source: str) -> None:
    # Two spellings of one setting that disagree are a mistake; guessing which wins hides it.
    if key in target and not _same(target[key], value):
        raise _FieldProblem(source, f"{value!r} conflicts with {where} = {target[key]!r}")
    target[key] = value


def _fold_top_level_defaults(data: dict[str, Any]) -> None:
    """Integration example: top-level ``consistency`` / ``replication_factor`` are system defaults."""
    for key in ("consistency", "replication_factor"):
        section = _section(data, "distributed_memory") if key in data else None
        if section is not None:
            _set_once(section, key, data.pop(key), f"distributed_memory.{key}", key)


def _pop_memory_limit(data: dict[str, Any]) -> dict[str, Any]:
    """Integration example: ``memory_limit => #{max_bytes, ..., domain_limits}``."""
    memory_limit = data.pop("memory_limit", None)
    if memory_limit is None:
        return {}
    if not isinstance(memory_limit, Mapping):
        raise _FieldProblem("memory_limit", f"expected a mapping, got {memory_limit!r}")
    return dict(memory_limit)


def _domain_fields(override: object) -> object:
    if isinstance(override, DomainConfig):
        return override.model_dump(exclude_unset=True)
    return dict(override) if isinstance(override, Mapping) else override


def _merge_domains(user: object) -> tuple[object, dict[tuple[str, str], str]]:
    """Defaults overlaid with the user's domains, and which (domain, field) the user set."""
    if not isinstance(user, Mapping):
        return user, {}
    merged: dict[str, Any] = _default_domains()
    explicit: dict[tuple[str, str], str] = {}
    for name, override in user.items():
        if not isinstance(name, str) or not _DOMAIN_NAME.fullmatch(name):
            raise _FieldProblem(
                f"domains.{name}", f"bad domain name {name!r}: use [a-z][a-z0-9_]*, at most 63 characters"
            )
        fields = _domain_fields(override)
        if not isinstance(fields, dict):
            merged[name] = fields  # pydantic reports the wrong type
            continue
        merged[name] = {**merged.get(name, {}), **fields}
        explicit.update({(name, key): f"domains.{name}.{key}" for key in fields})
    return merged, explicit


def _apply_domain_limits(
    domains: dict[str, Any], explicit: dict[tuple[str, str], str], limits: object, source: str
) -> None:
    if not isinstance(limits, Mapping):
        raise _FieldProblem(source, f"expected a mapping of domain name to limits, got {limits!r}")
    for name, entry in limits.items():
        path = f"{source}.{name}"
        if name not in domains or not isinstance(domains[name], dict):
            raise _FieldProblem(path, f"no domain {name!r}; define it under 'domains' first")
        if not isinstance(entry, Mapping):
            raise _FieldProblem(path, f"expected a mapping such as {{max_bytes: ...}}, got {entry!r}")
        for key, value in entry.items():
            if key not in ("max_bytes", "max_entries"):
                raise _FieldProblem(f"{path}.{key}", "unknown key; a domain limit has max_bytes, max_entries")
            where = explicit.get((name, key))
            if where is not None and not _same(domains[name][key], value):
                conflict = f"{value!r} conflicts with {where} = {domains[name][key]!r}"
                raise _FieldProblem(f"{path}.{key}", conflict)
            domains[name][key] = value
            explicit[(name, key)] = f"{path}.{key}"


# --------------------------------------------------------------------------- the root


class MemoryConfig(_Model):
    """The whole configuration of one memory system (the spec's sys.config and more)."""

    memory_monitoring: MemoryMonitoringConfig = Field(
        MemoryMonitoringConfig(), description="Spec memory_monitoring: periodic memory checks."
    )
    memory_guard: MemoryGuardConfig = Field(
        MemoryGuardConfig(), description="Spec memory_guard: per-process memory limits."
    )
    distributed_memory: DistributedMemoryConfig = Field(
        DistributedMemoryConfig(), description="Spec distributed_memory: defaults that domains inherit."
    )
    cache_coordinator: CacheCoordinatorConfig = Field(
        CacheCoordinatorConfig(), description="Spec cache_coordinator: invalidation and client leases."
    )
    persistence_selector: PersistenceSelectorConfig = Field(
        PersistenceSelectorConfig(), description="Spec persistence_selector: backend re-evaluation."
    )
    limits: NodeLimits = Field(NodeLimits(), description="Spec Per-Node Limits.")
    domains: dict[str, DomainConfig] = Field(
        default_factory=lambda: {name: DomainConfig(**f) for name, f in _default_domains().items()},
        description="Memory domains by name; user entries merge with the spec's five defaults.",
    )
    durable: DurableConfig = Field(DurableConfig(), description="The durable tier (spec L3).")
    client: ClientConfig = Field(ClientConfig(), description="In-process L0/L1 tiers of every client.")
    transport: TransportConfig = Field(TransportConfig(), description="The data path to the shard copies.")
    alerts: tuple[AlertRule, ...] = Field(
        default_factory=_default_alerts, description="Spec Alerting rules, evaluated by the supervisor."
    )

    @model_validator(mode="before")
    @classmethod
    def _fold_spec_shapes(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        _fold_top_level_defaults(data)
        memory_limit = _pop_memory_limit(data)
        limits = _section(data, "limits")
        domain_limits = {
            "limits.domain_limits": limits.pop("domain_limits", None) if limits is not None else None,
            "memory_limit.domain_limits": memory_limit.pop("domain_limits", None),
        }
        for key, value in memory_limit.items():
            if limits is not None:
                _set_once(limits, key, value, f"limits.{key}", f"memory_limit.{key}")
        domains, explicit = _merge_domains(data.get("domains", {}))
        data["domains"] = domains
        for source, entries in domain_limits.items():
            if entries is not None and isinstance(domains, dict):
                _apply_domain_limits(domains, explicit, entries, source)
        return data

    @model_validator(mode="after")
    def _check_inherited_insync(self) -> MemoryConfig:
        for name in self.domains:
            if self.domains[name].backend is None:
                continue  # its copies follow the selector's choice; min_insync is capped by them
            copies = self.replication_factor_for(name)
            insync = self.domains[name].min_insync or copies
            if insync > copies:
                raise _FieldProblem(
                    f"domains.{name}.min_insync", f"{insync} exceeds the replication factor {copies}"
                )
            if self.durable_mode_for(name) is not DurableMode.OFF and self.durable.kind is DurableKind.NONE:
                raise _FieldProblem(f"domains.{name}.durable",
                                    "needs a durable tier, but durable.kind is 'none'")
        return self

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(
        cls, source: MemoryConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None
    ) -> MemoryConfig:
        """Build a config from None (defaults), a dict, or a ``.toml`` / ``.yaml`` / ``.yml`` file.

        A file may hold the settings at top level or under a top-level ``erlmcp_ray`` key (so
        they can share a file with other settings). Raises ConfigError on any problem.
        """
        if isinstance(source, MemoryConfig):
            return source
        if source is None:
            return cls()
        if isinstance(source, Mapping):
            return cls.model_validate(source)
        if isinstance(source, (str, os.PathLike)):
            return cls.model_validate(_read_file(Path(source)))
        raise ConfigError(
            f"cannot load a config from {type(source).__name__}; "
            "pass None, a dict, a MemoryConfig or a .toml/.yaml path"
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (enums as their values) that ``load`` turns back into an equal config."""
        return self.model_dump(mode="json")

    # ------------------------------------------------------------------ per-domain resolution

    def domain(self, name: str) -> DomainConfig:
        """The settings of domain ``name``; UnknownDomainError if there is none."""
        if not isinstance(name, str) or name not in self.domains:
            raise UnknownDomainError(name, known=tuple(self.domains))
        return self.domains[name]

    def consistency_for(self, domain: str) -> Consistency:
        """The domain's default consistency, inherited from distributed_memory when unset."""
        return self.domain(domain).consistency or self.distributed_memory.consistency

    def backend_for(self, domain: str) -> Backend:
        """The domain's backend: explicit, else memory (until the persistence selector picks one,
        see ``with_backends``)."""
        return self.domain(domain).backend or Backend.MEMORY

    def auto_domains(self) -> list[str]:
        """Domains whose backend the persistence selector chooses (no backend set)."""
        return [name for name, d in self.domains.items() if d.backend is None]

    @property
    def auto_select(self) -> bool:
        """Whether the persistence selector migrates domains: both of the spec's switches on."""
        return self.persistence_selector.auto_select and self.distributed_memory.auto_select

    def with_backends(self, selected: Mapping[str, Backend | str]) -> MemoryConfig:
        """This config as running: the persistence selector's choice for each domain in ``selected``
        (only domains without an explicit backend; others are ignored). A selected replicated domain
        with durability_requirement high is written through to the durable tier."""
        domains = dict(self.domains)
        for name, backend in selected.items():
            d = domains.get(name)
            if d is None or d.backend is not None:
                continue
            backend = Backend(backend)
            durable = (DurableMode.WRITE_THROUGH if backend is Backend.REPLICATED
                       and d.durability_requirement is DurabilityRequirement.HIGH else None)
            domains[name] = d.model_copy(update={"backend": backend, "durable": durable})
        return self.model_copy(update={"domains": domains})

    def durable_mode_for(self, domain: str) -> DurableMode:
        """How the domain's owners use the durable tier: explicit, else write_through for disk."""
        settings = self.domain(domain)
        if settings.durable is not None:
            return settings.durable
        return DurableMode.WRITE_THROUGH if settings.backend is Backend.DISK else DurableMode.OFF

    def replication_factor_for(self, domain: str) -> int:
        """Copies per shard: explicit (replicated only), else the system default when replicated, else 1."""
        settings = self.domain(domain)
        if settings.backend is not Backend.REPLICATED:
            return 1
        if settings.replication_factor is not None:
            return settings.replication_factor
        return self.distributed_memory.replication_factor

    def min_insync_for(self, domain: str) -> int:
        """Copies a strong write must reach: explicit, else every copy."""
        settings, copies = self.domain(domain), self.replication_factor_for(domain)
        return copies if settings.min_insync is None else min(settings.min_insync, copies)


# --------------------------------------------------------------------------- files


def _parse_toml(text: str) -> Any:
    return tomllib.loads(text)


_PARSERS = {".toml": _parse_toml, ".yaml": yaml.safe_load, ".yml": yaml.safe_load}
_PARSE_ERRORS = (tomllib.TOMLDecodeError, yaml.YAMLError)


def _read_file(path: Path) -> Mapping[str, Any]:
    parse = _PARSERS.get(path.suffix.lower())
    if parse is None:
        raise ConfigError(f"unsupported config file {str(path)!r}: expected a .toml, .yaml or .yml file")
    try:
        text = path.expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc}") from None
    try:
        data = parse(text)
    except _PARSE_ERRORS as exc:
        raise ConfigError(f"malformed config file {str(path)!r}: {exc}") from None
    return _unwrap(data if data is not None else {}, path)


def _unwrap(data: object, path: Path) -> Mapping[str, Any]:
    if isinstance(data, Mapping) and _FILE_WRAPPER_KEY in data:
        data = data[_FILE_WRAPPER_KEY] if data[_FILE_WRAPPER_KEY] is not None else {}
        if not isinstance(data, Mapping):
            found = type(data).__name__
            raise ConfigError(f"expected a mapping in {str(path)!r}, got {found}", _FILE_WRAPPER_KEY)
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a mapping at the top of {str(path)!r}, got {type(data).__name__}")
    return data
