"""Memory pressure: the spec's four levels, with hysteresis, and the actions each level asks for.

One :class:`PressureMonitor` tracks many *subjects*: a domain's bytes against its ``max_bytes``
(``"domain:session"``), a node's total against ``NodeLimits`` (``"node:<id>"``), anything with a
limit. Each observation gives the used bytes (and entries, when the subject has ``max_entries``);
the usage ratio is the larger of ``bytes / limit`` and ``entries / max_entries``.

Levels (spec "Limit Enforcement"; the bounds are :class:`Thresholds`)::

    LOW       ratio <  60 %
    MEDIUM    60 % <= ratio < 80 %
    HIGH      80 % <= ratio <= 90 %
    CRITICAL  ratio >  90 %        (strictly above, as the spec writes "> 90%")

A level is entered as soon as the ratio reaches it, but left downwards only once the ratio falls
``hysteresis`` (default 5 points) below the level's lower bound: CRITICAL is left below 85 %,
HIGH below 75 %, MEDIUM below 55 %. Without that margin a domain hovering around 80 % would flap
between levels and warn, collect and evict on every observation.

Effects of one observation (``handle`` returns them in this order):

- :class:`LevelChanged` on every change of level, up or down (for metrics and logs);
- :class:`Warn` on every upward transition (into MEDIUM, HIGH or CRITICAL): once per transition,
  never again while the level holds;
- :class:`CollectGarbage` on every upward transition into HIGH or CRITICAL;
- :class:`RefuseGrowth` when a *non-evictable* subject enters CRITICAL, :class:`AllowGrowth` when it
  leaves it: while refused, writes that would grow it fail (``MemoryPressureError``) and reads,
  deletes and writes that do not grow it keep working, as Redis ``noeviction`` does;
- :class:`Evict` for an *evictable* subject on every observation at HIGH or CRITICAL whose usage is
  still above the level's target: at HIGH back down to the HIGH line (80 % of the limit, the top of
  MEDIUM: "start eviction"), at CRITICAL down to the MEDIUM line (60 %: "aggressive eviction",
  deep enough that the subject leaves HIGH as well). Eviction stops at the target, not at the
  hysteresis exit, so HIGH evicts in a sawtooth just under 80 %, as Redis does under maxmemory.

``would_refuse`` is checked before a write with the level of the last observation, so a write that
itself pushes a subject into CRITICAL is accepted and the next one is refused.

Pure: no Ray, no clock, no I/O. The supervisor (and each shard, for its domains) holds one monitor,
feeds it usage and carries out the effects.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_THRESHOLDS",
    "AllowGrowth",
    "CollectGarbage",
    "Effect",
    "Evict",
    "LevelChanged",
    "PressureLevel",
    "PressureMonitor",
    "RefuseGrowth",
    "Thresholds",
    "Warn",
    "level_for",
]


class PressureLevel(enum.IntEnum):
    """The spec's memory pressure levels, ordered: ``LOW < MEDIUM < HIGH < CRITICAL``."""

    LOW = 0
    MEDIUM = 1
    HIGH = 2
    CRITICAL = 3

    def __str__(self) -> str:  # the spec's atom: low, medium, high, critical
        return self.name.lower()


LOW, MEDIUM, HIGH, CRITICAL = PressureLevel


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Lower bounds of MEDIUM, HIGH and CRITICAL as fractions of the limit, and the exit margin."""

    medium: float = 0.60
    high: float = 0.80
    critical: float = 0.90
    hysteresis: float = 0.05

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError unless ``0 < medium < high < critical <= 1`` and ``0 <= hysteresis < medium``."""
        values = (self.medium, self.high, self.critical, self.hysteresis)
        if not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values
        ):
            raise ValueError(f"thresholds must be finite numbers, got {self!r}")
        if not 0 < self.medium < self.high < self.critical <= 1:
            raise ValueError(f"need 0 < medium < high < critical <= 1, got {self!r}")
        if not 0 <= self.hysteresis < self.medium:
            raise ValueError(f"need 0 <= hysteresis < medium, got {self!r}")

    def lower_bound(self, level: PressureLevel) -> float:
        """The ratio at which ``level`` is entered (0 for LOW; CRITICAL needs strictly more)."""
        return (0.0, self.medium, self.high, self.critical)[level]

    def exit_bound(self, level: PressureLevel) -> float:
        """``level`` is left downwards only when the ratio falls strictly below this."""
        # Rounded so that 85/100 is not "below" 0.90 - 0.05 == 0.8500000000000001.
        return round(self.lower_bound(level) - self.hysteresis, 12)

    def raw_level(self, ratio: float) -> PressureLevel:
        """The level of ``ratio`` without hysteresis."""
        if ratio > self.critical:
            return CRITICAL
        if ratio >= self.high:
            return HIGH
        if ratio >= self.medium:
            return MEDIUM
        return LOW


DEFAULT_THRESHOLDS = Thresholds()


def level_for(
    ratio: float, previous: PressureLevel = LOW, thresholds: Thresholds = DEFAULT_THRESHOLDS
) -> PressureLevel:
    """The level of ``ratio`` for a subject that was at ``previous``: up at once, down with hysteresis."""
    level = thresholds.raw_level(ratio)
    if level >= previous:
        return level
    # Step down one level at a time: each is left only below its own exit bound.
    current = PressureLevel(previous)
    while current > level and ratio < thresholds.exit_bound(current):
        current = PressureLevel(current - 1)
    return current


# --------------------------------------------------------------------------- effects


@dataclass(frozen=True, slots=True)
class LevelChanged:
    """The subject moved from ``old`` to ``new`` at usage ``ratio`` (for metrics and logs)."""

    subject: str
    old: PressureLevel
    new: PressureLevel
    ratio: float


@dataclass(frozen=True, slots=True)
class Warn:
    """Log a warning: the subject rose to ``level`` (once per transition)."""

    subject: str
    level: PressureLevel
    ratio: float

    @property
    def message(self) -> str:
        return f"memory pressure {self.level} on {self.subject}: {self.ratio:.1%} of its limit"


@dataclass(frozen=True, slots=True)
class CollectGarbage:
    """Collect garbage now (expired entries, collectable tombstones, Python's gc) in the subject."""

    subject: str


@dataclass(frozen=True, slots=True)
class Evict:
    """Evict from the subject until ``used <= target_bytes`` (and ``entries <= target_entries``)."""

    subject: str
    target_bytes: int
    target_entries: int | None = None  # None: the subject has no entry limit


@dataclass(frozen=True, slots=True)
class RefuseGrowth:
    """From now on refuse writes that would grow the (non-evictable) subject."""

    subject: str


@dataclass(frozen=True, slots=True)
class AllowGrowth:
    """Accept growing writes to the subject again (it left CRITICAL, became evictable, or was removed)."""

    subject: str


Effect = LevelChanged | Warn | CollectGarbage | Evict | RefuseGrowth | AllowGrowth


# --------------------------------------------------------------------------- the monitor


@dataclass(slots=True)
class _Subject:
    limit_bytes: int
    evictable: bool
    max_entries: int | None
    used_bytes: int = 0
    entries: int = 0
    ratio: float = 0.0
    level: PressureLevel = LOW
    refusing: bool = False
    transitions: int = 0


def _count(value: object, what: str, *, positive: bool) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < (1 if positive else 0):
        raise ValueError(f"{what} must be an int {'> 0' if positive else '>= 0'}, got {value!r}")
    return value


class PressureMonitor:
    """Pressure levels of many subjects; ``handle`` turns one observation into effects."""

    def __init__(self, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> None:
        thresholds.validate()
        self.thresholds = thresholds
        self._subjects: dict[str, _Subject] = {}

    def __contains__(self, subject: object) -> bool:
        return subject in self._subjects

    @property
    def subjects(self) -> tuple[str, ...]:
        return tuple(self._subjects)

    def configure(
        self, subject: str, limit_bytes: int, evictable: bool, max_entries: int | None = None
    ) -> list[Effect]:
        """Track ``subject`` (or change its limits); the effects of re-evaluating its last usage.

        A new subject starts LOW with no usage, so its list is empty. Changing the limits of a
        known one may change its level, and making it evictable (or not) may refuse or allow growth.
        """
        if not isinstance(subject, str) or not subject:
            raise ValueError(f"a subject is a non-empty str, got {subject!r}")
        limit_bytes = _count(limit_bytes, "limit_bytes", positive=True)
        if max_entries is not None:
            max_entries = _count(max_entries, "max_entries", positive=True)
        state = self._subjects.get(subject)
        if state is None:
            self._subjects[subject] = _Subject(limit_bytes, bool(evictable), max_entries)
            return []
        state.limit_bytes, state.evictable, state.max_entries = limit_bytes, bool(evictable), max_entries
        return self._evaluate(subject, state)

    def remove(self, subject: str) -> list[Effect]:
        """Stop tracking ``subject``; ``[AllowGrowth]`` if its growth was refused, else ``[]``."""
        state = self._subjects.pop(subject, None)
        return [AllowGrowth(subject)] if state is not None and state.refusing else []

    def handle(self, subject: str, used_bytes: int, entries: int = 0) -> list[Effect]:
        """Observe the subject's usage; the effects of this observation (see the module docstring)."""
        state = self._get(subject)
        if type(used_bytes) is not int or type(entries) is not int or used_bytes < 0 or entries < 0:
            used_bytes = _count(used_bytes, "used_bytes", positive=False)
            entries = _count(entries, "entries", positive=False)
        state.used_bytes, state.entries = used_bytes, entries
        if state.level is LOW:
            # Every write observes its shard: far below every line (the usual), only the ratio
            # changes -- what _evaluate would find, without its steps (LOW never refuses).
            ratio = self._ratio(state)
            if ratio < self.thresholds.medium:
                state.ratio = ratio
                return []
        return self._evaluate(subject, state)

    def level(self, subject: str) -> PressureLevel:
        """The subject's level after its last observation."""
        return self._get(subject).level

    def would_refuse(self, subject: str, growth_bytes: int) -> bool:
        """True if a write growing ``subject`` by ``growth_bytes`` must be refused now.

        Only a non-evictable subject at CRITICAL refuses, and only writes that grow it
        (``growth_bytes > 0``): overwrites with a smaller or equal value and deletes go through.
        """
        return self._get(subject).refusing and growth_bytes > 0

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per subject: level (the spec's name), ratio, usage, limits, evictable, refusing, transitions."""
        return {
            name: {
                "level": str(s.level),
                "ratio": s.ratio,
                "used_bytes": s.used_bytes,
                "entries": s.entries,
                "limit_bytes": s.limit_bytes,
                "max_entries": s.max_entries,
                "evictable": s.evictable,
                "refusing": s.refusing,
                "transitions": s.transitions,
            }
            for name, s in self._subjects.items()
        }

    def validate(self) -> None:
        """Check every invariant; raises AssertionError. Tests call it after each step."""
        self.thresholds.validate()
        for name, s in self._subjects.items():
            assert s.ratio == self._ratio(s), f"{name}: ratio {s.ratio} does not match its usage"
            # Stable: re-observing the same usage keeps the level. That holds exactly when the
            # level is at least the raw level and, if above it, the ratio is inside its band.
            assert level_for(s.ratio, s.level, self.thresholds) == s.level, (
                f"{name}: level {s.level} inconsistent with ratio {s.ratio}"
            )
            assert s.refusing == (not s.evictable and s.level is CRITICAL), f"{name}: refused set wrong"

    # ------------------------------------------------------------------ internals

    def _get(self, subject: str) -> _Subject:
        try:
            return self._subjects[subject]
        except KeyError:
            raise KeyError(f"pressure subject {subject!r} is not configured") from None

    @staticmethod
    def _ratio(s: _Subject) -> float:
        ratio = s.used_bytes / s.limit_bytes
        if s.max_entries is not None:
            ratio = max(ratio, s.entries / s.max_entries)
        return ratio

    def _evaluate(self, name: str, s: _Subject) -> list[Effect]:
        old, ratio = s.level, self._ratio(s)
        new = level_for(ratio, old, self.thresholds)
        s.level, s.ratio = new, ratio
        effects: list[Effect] = []
        if new != old:
            s.transitions += 1
            effects.append(LevelChanged(name, old, new, ratio))
            if new > old:
                effects.append(Warn(name, new, ratio))
                if new >= HIGH:
                    effects.append(CollectGarbage(name))
        refusing = not s.evictable and new is CRITICAL
        if refusing != s.refusing:
            s.refusing = refusing
            effects.append(RefuseGrowth(name) if refusing else AllowGrowth(name))
        if s.evictable and new >= HIGH:
            evict = self._eviction(name, s)
            if evict is not None:
                effects.append(evict)
        return effects

    def _eviction(self, name: str, s: _Subject) -> Evict | None:
        # HIGH: back under the HIGH line; CRITICAL: down to the MEDIUM line (see module docstring).
        fraction = self.thresholds.high if s.level is HIGH else self.thresholds.medium
        target_bytes = math.floor(s.limit_bytes * fraction)
        target_entries = None if s.max_entries is None else math.floor(s.max_entries * fraction)
        over_entries = target_entries is not None and s.entries > target_entries
        if s.used_bytes > target_bytes or over_entries:
            return Evict(name, target_bytes, target_entries)
        return None
