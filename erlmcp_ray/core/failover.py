"""Failure detection and the failover decision (pure: no Ray; the supervisor acts on it).

``FailureDetector`` keeps, per shard copy, when it last answered a health check and on which node
it runs. A copy is failed when it has not answered for ``timeout_s`` (counted from the detector's
start for a copy never heard from: a restarted supervisor waits a whole timeout before failing
anything), or at once when its node is dead.

``plan_promotion`` picks the successor of a failed owner: a replica that took a sync from that owner
within ``in_sync_s`` (in sync), with the highest op-log position of the owner's latest incarnation;
ties go to the one synced most recently, then to the lowest slot. The new epoch is above every
epoch any copy (or the topology) reported. ``promotion_wait`` is how long the successor must wait
before serving: the deposed owner renews its lease from replica acks of rounds it *sent*, so its
lease can outlive its last ack by up to ``lease_s``; once every other copy is fenced (refuses the
old epoch) nothing renews it any more. The supervisor's health checks renew it too, and so from when
each was *sent* (``CheckTokens``): a check that waited in a paused owner's queue renews nothing
when the owner wakes; the lease the supervisor's last check granted is waited out as well.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

__all__ = ["CheckTokens", "FailureDetector", "Promotion", "plan_promotion", "promotion_wait"]


class FailureDetector:
    def __init__(self, timeout_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.timeout_s = timeout_s
        self._clock = clock
        self._started = clock()
        self._last_ok: dict[Hashable, float] = {}
        self._node: dict[Hashable, str] = {}

    def answered(self, copy: Hashable, node_id: str | None = None) -> None:
        self._last_ok[copy] = self._clock()
        if node_id is not None:
            self._node[copy] = node_id

    def silence_s(self, copy: Hashable) -> float:
        """Seconds since ``copy`` last answered (since the detector started, if never)."""
        return self._clock() - self._last_ok.get(copy, self._started)

    def failed(self, copy: Hashable, alive_nodes: set[str] | None = None) -> bool:
        node = self._node.get(copy)
        if alive_nodes is not None and node is not None and node not in alive_nodes:
            return True
        return self.silence_s(copy) > self.timeout_s

    def forget(self, copy: Hashable) -> None:
        """A new copy in that place (a promotion, a replacement): heard from as of now."""
        self._last_ok[copy] = self._clock()
        self._node.pop(copy, None)


@dataclass(frozen=True)
class Promotion:
    successor: int
    epoch: int
    reason: str


def plan_promotion(owner: int, facts: dict[int, dict], topology_epoch: int, in_sync_s: float) -> Promotion | None:
    """The successor of failed ``owner``, from the last health facts of each live copy
    (``{slot: {"epoch", "position": [incarnation, seq] | None, "sync_age_s"}}``); None when no
    replica is in sync (promoting one could lose acknowledged writes)."""
    epoch = max([topology_epoch, *(f["epoch"] for f in facts.values())]) + 1
    candidates = {slot: f for slot, f in facts.items() if slot != owner and f["sync_age_s"] <= in_sync_s}
    if not candidates:
        return None
    # The owner's latest incarnation is the one whose positions are highest in epoch terms; within it,
    # positions compare. A replica in an older incarnation (it missed the owner's restart) ranks below.
    newest = max(candidates.values(), key=lambda f: (f["epoch"], -f["sync_age_s"]))
    incarnation = newest["position"][0] if newest["position"] else None

    def rank(item: tuple[int, dict]) -> tuple:
        slot, f = item
        pos = f["position"]
        same = pos is not None and pos[0] == incarnation
        return (same, pos[1] if same else -1, -f["sync_age_s"], -slot)

    slot, best = max(candidates.items(), key=rank)
    pos = best["position"]
    return Promotion(slot, epoch, f"slot {slot}: in sync {best['sync_age_s'] * 1000:.0f} ms ago, op-log position "
                                  f"{pos[1] if pos else 'none'} of {len(candidates)} in-sync replica(s)")


def promotion_wait(lease_s: float, sync_ages_s: list[float], all_fenced: bool,
                   check_age_s: float = float("inf")) -> float:
    """Seconds the successor waits before serving: until ``lease_s`` after the latest sync any copy
    took from the old owner (all of them fenced now), and after the supervisor's last health check
    of the old owner was sent (``check_age_s`` ago: a check renews a lease from its sending); a
    whole ``lease_s`` when some copy could not be fenced (it may still be renewing the old owner's
    lease)."""
    if not all_fenced:
        return lease_s
    synced = max(0.0, lease_s - min(sync_ages_s)) if sync_ages_s else 0.0
    return max(synced, lease_s - check_age_s)


class CheckTokens:
    """A shard copy's side of the supervisor's lease renewals. A health check confirms an owner as
    of when it was *sent*, which the copy cannot see -- and a check that waited in the queue of a
    paused process, renewing from when it was received, would renew the lease of an owner failed
    over meanwhile. So each answer carries a token (``issue``), and the supervisor's next check
    returns it with the seconds between receiving that answer and sending the check: that check was
    sent no earlier than this copy's clock at the answer plus those seconds (``sent_after``).
    Durations, not timestamps, cross between the two processes: no clock needs to agree with
    another. Tokens are random (a restarted copy knows none it issued before) and only the latest
    ``keep`` are known. Not thread-safe: the copy's health checks run on one thread."""

    def __init__(self, *, keep: int = 8, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self._keep = keep
        self._clock = clock
        self._rng = rng or random.Random()
        self._answered: dict[int, float] = {}

    def issue(self) -> int:
        """A token for the answer being sent now."""
        token = self._rng.getrandbits(63)
        self._answered[token] = self._clock()
        if len(self._answered) > self._keep:
            del self._answered[next(iter(self._answered))]
        return token

    def sent_after(self, since: tuple | list | None) -> float | None:
        """The earliest time (this copy's clock) the check carrying ``since`` = ``(token, seconds
        the supervisor held that answer before sending the check)`` can have been sent; None when
        it carries none, or a token this copy does not know (issued by its previous process, or
        too long ago)."""
        if since is None:
            return None
        try:
            token, held_s = since
        except (TypeError, ValueError):
            raise TypeError(f"since must be (token, seconds) or None, got {since!r}") from None
        if isinstance(held_s, bool) or not isinstance(held_s, (int, float)) or not held_s >= 0:
            raise ValueError(f"since: the seconds must be a number >= 0, got {held_s!r}")
        at = self._answered.get(token)
        return None if at is None else at + held_s
