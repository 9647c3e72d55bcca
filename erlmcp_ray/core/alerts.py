"""Alert rules evaluated over time (spec "Alerting"): pure, with an injected clock.

A rule (``config.AlertRule``) watches one metric of every *subject* that reports it (a domain's
``memory_usage``, a client's ``cache_hit_rate``, ...). ``AlertEngine.observe(samples)`` takes the
latest value of each ``(metric, subject)`` and returns the events of that instant:

- **firing**: the value has been past the threshold (``above`` or ``below`` it, see
  ``AlertRule.direction``) in every sample for the whole ``window`` -- as Prometheus' ``for:``. A sample
  that is not past it starts the wait again. A rule in its ``cooldown`` after firing does not fire
  again for that subject (it still resolves);
- **resolved**: a firing subject's value is back on the right side of the threshold (or the subject
  no longer reports the metric).

Whoever runs the engine carries out each firing's ``action`` and delivers the events.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["AlertEngine", "AlertEvent"]


@dataclass(frozen=True)
class AlertEvent:
    rule: int  # index of the rule in the engine's list
    metric: str
    subject: str
    state: str  # "firing" or "resolved"
    value: float | None
    threshold: float
    action: str
    at: float  # wall-clock seconds
    result: Any = None  # what the action did (firing events, as the supervisor reports them)

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "metric": self.metric, "subject": self.subject, "state": self.state,
                "value": self.value, "threshold": self.threshold, "action": self.action, "at": self.at}


@dataclass
class _Track:
    breach_since: float | None = None
    firing: bool = False
    fired_at: float = field(default=float("-inf"))


class AlertEngine:
    def __init__(self, rules: Iterable[Any], *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.rules = list(rules)
        self._clock, self._wall = clock, wall
        self._tracks: dict[tuple[int, str], _Track] = {}
        self.fired = 0
        self.resolved = 0
        #: per rule (index): [firings, resolutions]
        self.counts: list[list[int]] = [[0, 0] for _ in self.rules]

    def observe(self, samples: dict[tuple[str, str], float]) -> list[AlertEvent]:
        """``samples``: ``{(metric, subject): value}`` now; the events this produces."""
        now, events = self._clock(), []
        for i, rule in enumerate(self.rules):
            subjects = {subject: v for (metric, subject), v in samples.items() if metric == rule.metric}
            for key in [k for k in self._tracks if k[0] == i and k[1] not in subjects]:
                track = self._tracks.pop(key)  # the subject went away
                if track.firing:
                    events.append(self._event(i, rule, key[1], "resolved", None))
            for subject, value in subjects.items():
                track = self._tracks.setdefault((i, subject), _Track())
                past = value > rule.threshold if rule.direction == "above" else value < rule.threshold
                if not past:
                    track.breach_since = None
                    if track.firing:
                        track.firing = False
                        events.append(self._event(i, rule, subject, "resolved", value))
                    continue
                if track.breach_since is None:
                    track.breach_since = now
                if (not track.firing and now - track.breach_since >= rule.window / 1000.0
                        and now - track.fired_at >= rule.cooldown / 1000.0):
                    track.firing, track.fired_at = True, now
                    events.append(self._event(i, rule, subject, "firing", value))
        return events

    def _event(self, i: int, rule: Any, subject: str, state: str, value: float | None) -> AlertEvent:
        if state == "firing":
            self.fired += 1
            self.counts[i][0] += 1
        else:
            self.resolved += 1
            self.counts[i][1] += 1
        return AlertEvent(i, rule.metric, subject, state, value, rule.threshold, rule.action, self._wall())

    def active(self) -> list[dict[str, Any]]:
        """The subjects a rule is firing for now."""
        return [{"rule": i, "metric": self.rules[i].metric, "subject": subject, "action": self.rules[i].action}
                for (i, subject), t in self._tracks.items() if t.firing]
