"""Health checks and failover, as the supervisor runs them (decisions in ``core.failover``).

Every ``failure_timeout_ms / 4`` (a period: rounds start one apart, however long the last one waited
for answers, and answers are taken as they come) the supervisor sends each shard copy a ``health``
check that carries its topology for that shard (the owner it names renews its lease, from when the
check was sent: the check returns the token of the copy's previous answer with how long ago it was
taken, see ``core.failover.CheckTokens``; a copy behind it adopts it), and reads Ray's node table. A
check still unanswered is not sent again (a paused process must not pile them up). A copy is failed
after ``failure_timeout_ms`` without an answer, or at once when its node is dead
(``core.failover.FailureDetector``).

A failed owner of a shard with replicas is replaced by promotion:

1. **assess**: the successor is the in-sync replica with the highest op-log position of the owner's
   incarnation (``plan_promotion``); none in sync: no promotion (logged), the shard waits for Ray to
   restart its owner;
2. **fence**: every other live copy adopts the new topology under a new epoch (from then on it
   refuses the old owner's syncs and strong writes; the old owner's lease is no longer renewed). If
   one cannot be reached and the old owner is not known to be gone (its node dead, or its process:
   a check that failed rather than timed out), no promotion this round -- an unfenced copy could keep
   the old owner's lease alive and take its strong writes;
3. **promote**: the successor joins what the other live copies and the durable store hold, fences
   the store at the new epoch, and serves once the old owner's lease has surely run out, renewed by
   replicas or by the last check sent to it (``promotion_wait``; 0 when the old owner was silent for
   longer than a lease, the usual case);
4. **publish**: the topology goes to Ray's KV store and the durable store, and the coordinator
   answers every waiting poll with the new layout generation: clients re-route (a client that meets
   the old owner first is refused and looks the owner up again).

The old owner's slot comes back as a replica: Ray restarts a dead process (its constructor reads the
topology), a paused one that wakes adopts the topology at the next check, and a slot whose actor is
gone for good (killed without restart) is created again here (one this supervisor saw answer before,
or any after the supervisor itself was restarted: at a first start, ``start()`` may still be creating it).
A one-copy shard has no one to promote: its actor, silent for five timeouts, is killed so that Ray
restarts it (reloading its durable shard, or the latest checkpoint).

Partition healing (``heal``): copies cut off from their owner take eventual writes into a stash (and
a deposed owner stashes what its replicas may not hold); a health check reports a stash, and once
the owner and the stashing copy reach each other, the round hands the stash to the owner, which
joins it (the CRDT join: conflicts resolved by last writer, the losers published as conflict
events) and replicates the result; ``heal_partition()`` does the same for every shard at once.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from erlmcp_ray import _faults, _ray
from erlmcp_ray.actors.options import SUPERVISOR, actor_class, shard_name, shard_options, shard_settings
from erlmcp_ray.config import MemoryConfig
from erlmcp_ray.core.failover import FailureDetector, plan_promotion, promotion_wait
from erlmcp_ray.core.layout import Layout

log = logging.getLogger(__name__)

__all__ = ["Failover", "failover_key"]

_HISTORY = 100


def failover_key(namespace: str) -> bytes:
    return f"erlmcp:{namespace}:failovers".encode()


class Failover:
    def __init__(self, config: MemoryConfig, namespace: str, *, layout: Callable[[], Layout],
                 running: Callable[[], MemoryConfig], set_owner: Callable[[str, int, int, int], None],
                 restarted: bool = False, clock: Callable[[], float] = time.monotonic) -> None:
        """``restarted``: this supervisor is a restart (copies it never heard from may be dead); at a
        first start, a copy is failed only once it answered a check (``start()`` may still be
        creating it)."""
        self._cfg, self.namespace = config, namespace
        self._layout, self._running, self._set_owner = layout, running, set_owner
        self.timeout_s = config.distributed_memory.failure_timeout_ms / 1000.0
        self.lease_s = self.timeout_s / 2
        self.period_s = self.timeout_s / 4
        self._clock = clock
        self._restarted = restarted
        self.detector = FailureDetector(self.timeout_s, clock=clock)
        self._handles: dict[tuple, Any] = {}
        self._pending: dict[Any, tuple] = {}  # health check ref -> copy
        self._asked: set[tuple] = set()
        self.facts: dict[tuple, dict] = {}
        self._restarted_at: dict[tuple, float] = {}
        self._missing_since: dict[tuple, float] = {}
        self._died: set[tuple] = set()  # a check failed (not timed out): the process that answered it is gone
        self._answered: dict[tuple, tuple[int, float]] = {}  # copy -> (its last answer's token, when taken)
        self._sent_at: dict[tuple, float] = {}  # copy -> when its last check was sent (it renews a lease)
        self._lock = threading.Lock()  # one round (and so one failover) at a time
        self._seam = _faults.seam(namespace)
        raw = _ray.kv_get(failover_key(namespace))
        self.history: list[dict] = json.loads(raw) if raw else []
        self.rounds = 0
        #: stashed keys lost with a copy that restarted before the heal (seen by this incarnation)
        self.stash_lost = 0

    # ------------------------------------------------------------------ the loop
    def run(self, stop: threading.Event) -> None:
        # Rounds start a period apart however long one took: a round waits up to a period for its
        # checks' answers (all of it when a copy does not answer), and checks two periods apart
        # are a lease apart -- an owner living on them alone would lapse every cycle.
        wait_s = self.period_s
        while not stop.wait(timeout=wait_s):
            started = self._clock()
            try:
                self.round()
            except Exception:
                log.exception("health round failed")
            wait_s = max(0.0, self.period_s - (self._clock() - started))

    def _copies(self, running: MemoryConfig) -> list[tuple[str, int, int]]:
        return [(d, s, slot) for d in running.domains for s in range(running.domain(d).shards)
                for slot in range(running.replication_factor_for(d))]

    def _handle(self, copy: tuple) -> Any:
        self._seam.check(SUPERVISOR, shard_name(*copy))  # a (test) partition may cut this copy off
        h = self._handles.get(copy)
        if h is None:
            h = self._handles[copy] = _ray.get_actor(shard_name(*copy), self.namespace)
        return h

    def round(self) -> None:
        with self._lock:
            self.rounds += 1
            layout, running = self._layout(), self._running()
            alive = {n["NodeID"] for n in _ray.alive_nodes()}
            copies = self._copies(running)
            self._ask(copies, layout)
            self._collect()
            for domain in running.domains:
                n = running.replication_factor_for(domain)
                for shard in range(running.domain(domain).shards):
                    owner = (domain, shard, layout.owner(domain, shard))
                    if not (owner in self.facts or self._restarted):
                        continue
                    # (A check that failed outright -- a dead process -- is not enough on its own: Ray
                    # restarts the process, and promoting at the same time raced with that restart.)
                    if not self.detector.failed(owner, alive):
                        continue
                    if n > 1:
                        self._failover(domain, shard, owner[2], n, layout, alive)
                    else:
                        self._restart(owner)
            self._replace_missing(copies, running, alive)
            stashed = {(d, s) for (d, s, _slot), f in self.facts.items() if f.get("stash")}
            if stashed:
                self._heal(stashed)

    def _ask(self, copies: list[tuple], layout: Layout) -> None:
        for copy in copies:
            if copy in self._asked:
                continue  # its last check is still unanswered
            if self._seam.blocks(SUPERVISOR, shard_name(*copy)):
                continue  # cut off from us: silent, not missing
            domain, shard, _slot = copy
            try:
                answered = self._answered.get(copy)  # the copy's token, and when we took that answer
                since = None if answered is None else (answered[0], self._clock() - answered[1])
                ref = self._handle(copy).health.remote(layout.owner(domain, shard), layout.epoch(domain, shard),
                                                       since)
            except Exception:  # noqa: BLE001 - no such actor (yet, or any more)
                self._handles.pop(copy, None)
                self._missing_since.setdefault(copy, self._clock())
                continue
            self._missing_since.pop(copy, None)
            self._sent_at[copy] = self._clock()
            self._pending[ref] = copy
            self._asked.add(copy)

    def _collect(self) -> None:
        """Take the checks' answers as they come, for up to a period: each answer's receipt time is
        what the copy's next check counts its lease from (see ``_ask``), so it is taken when the
        answer is, not when the slowest copy answered."""
        deadline = self._clock() + self.period_s
        while self._pending:
            ready = _ray.wait_any(list(self._pending), timeout=max(0.0, deadline - self._clock()))
            if not ready:
                return
            for ref in ready:
                self._take(ref)

    def _take(self, ref: Any) -> None:
        copy = self._pending.pop(ref)
        self._asked.discard(copy)
        try:
            facts = _ray.get(ref, timeout=1.0, what=f"health of {copy}")
        except Exception as exc:  # noqa: BLE001 - dead, or restarting: silent for the detector
            self._handles.pop(copy, None)
            self._died.add(copy)
            self._sent_at.pop(copy, None)  # the process that could renew a lease from it is gone
            log.debug("health check of %s failed: %s", copy, exc)
            return
        self._died.discard(copy)
        before = self.facts.get(copy)
        if before and before.get("stash") and before["incarnation"] != facts["incarnation"]:
            self._stash_lost(copy, before["stash"])
        self.facts[copy] = facts
        self._answered[copy] = (facts["check_token"], self._clock())
        self.detector.answered(copy, facts["node_id"])

    def _stash_lost(self, copy: tuple, keys: int) -> None:
        """A copy restarted while it held a stash this supervisor had seen: those writes are gone
        (a stash lives in its copy's memory). Counted, logged and kept in the history."""
        self.stash_lost += keys
        log.error("%s/%s slot %s restarted holding %d stashed keys not yet merged: those writes are lost", *copy,
                  keys)
        self._record({"domain": copy[0], "shard": copy[1], "kind": "stash_lost", "slot": copy[2], "keys": keys,
                      "at": time.time()})

    def _restart(self, copy: tuple) -> None:
        """A one-copy shard's actor that does not answer: kill it so that Ray restarts it -- only after
        five timeouts of silence (a process Ray saw die is restarted by Ray anyway; killing a live but
        stalled one costs a memory domain what it wrote since its latest checkpoint)."""
        if self.detector.silence_s(copy) < 5 * self.timeout_s:
            return
        now = self._clock()
        if now - self._restarted_at.get(copy, float("-inf")) < 2 * self.timeout_s:
            return
        self._restarted_at[copy] = now
        handle = self._handles.pop(copy, None)
        if handle is None:
            return
        log.warning("%s/%s slot %s does not answer (%.1f s): restarting it", *copy, self.detector.silence_s(copy))
        _ray.restart(handle)
        self._record({"domain": copy[0], "shard": copy[1], "kind": "restart", "slot": copy[2], "at": time.time()})

    # ------------------------------------------------------------------ failover
    def _failover(self, domain: str, shard: int, owner: int, copies: int, layout: Layout, alive: set[str]) -> None:
        started, wall = self._clock(), time.time()
        silence = self.detector.silence_s((domain, shard, owner))
        live = {slot: self.facts[(domain, shard, slot)] for slot in range(copies)
                if slot != owner and (domain, shard, slot) in self.facts
                and not self.detector.failed((domain, shard, slot), alive)}
        # In sync: as the owner itself counts replicas (a replica that acked within out_of_sync_after_s
        # of the owner's last sign of life was waited for by its strong writes).
        in_sync_s = silence + shard_settings(self._running(), domain).out_of_sync_after_s
        plan = plan_promotion(owner, live, layout.epoch(domain, shard), in_sync_s=in_sync_s)
        if plan is None:
            if self._clock() - self._restarted_at.get((domain, shard, owner), float("-inf")) > 2 * self.timeout_s:
                log.error("%s/%s: owner slot %s failed and no replica is in sync: not promoting (waiting for Ray "
                          "to restart it); replicas heard from: %s", domain, shard, owner,
                          {slot: round(f["sync_age_s"], 2) for slot, f in live.items()})
                self._restarted_at[(domain, shard, owner)] = self._clock()
            return
        log.warning("%s/%s: owner slot %s silent for %.1f s: promoting %s, epoch %s", domain, shard, owner, silence,
                    plan.reason, plan.epoch)
        ages, all_fenced = [], True
        for slot in live:
            target = (domain, shard, slot)
            try:
                if slot == plan.successor:
                    facts = _ray.get(self._handle(target).health.remote(), timeout=self.timeout_s,
                                     what=f"{domain}/{shard} slot {slot}")
                else:
                    facts = _ray.get(self._handle(target).adopt.remote(plan.successor, plan.epoch),
                                     timeout=self.timeout_s, what=f"fencing {domain}/{shard} slot {slot}")
                ages.append(facts["sync_age_s"])
            except Exception as exc:  # noqa: BLE001
                if slot == plan.successor:
                    log.error("%s/%s: the successor slot %s does not answer: %s", domain, shard, slot, exc)
                    return
                all_fenced = False
                log.warning("%s/%s: could not fence slot %s: %s", domain, shard, slot, exc)
        owner_node = self.facts.get((domain, shard, owner), {}).get("node_id")
        owner_gone = (domain, shard, owner) in self._died or (owner_node is not None and owner_node not in alive)
        if not all_fenced and not owner_gone:
            # The old owner may be alive (paused, cut off from us) and an unfenced copy could still renew
            # its lease and take its strong writes: promoting now could leave two owners. Next round.
            log.warning("%s/%s: not promoting yet: a copy could not be fenced and the old owner may still be "
                        "alive", domain, shard)
            return
        check_age = self._clock() - self._sent_at.get((domain, shard, owner), float("-inf"))
        wait_s = promotion_wait(self.lease_s, ages, all_fenced, check_age)
        promoted = _ray.get(self._handle((domain, shard, plan.successor)).promote.remote(plan.epoch, copies, wait_s,
                                                                                     list(live)),
                            timeout=60.0, what=f"promoting {domain}/{shard} slot {plan.successor}")
        self._set_owner(domain, shard, plan.successor, promoted["epoch"])
        # The old owner, if it still runs (paused, or cut off), is told at once; else at its next check.
        try:
            self._handle((domain, shard, owner)).adopt.remote(plan.successor, promoted["epoch"])
        except Exception:  # noqa: BLE001 - gone: Ray restarts it, its constructor reads the topology
            self._handles.pop((domain, shard, owner), None)
        self.detector.forget((domain, shard, owner))
        record = {"domain": domain, "shard": shard, "kind": "promotion", "from": owner, "to": plan.successor,
                  "epoch": promoted["epoch"], "reason": plan.reason, "silent_s": round(silence, 3),
                  "wait_s": round(wait_s, 3), "fenced_all": all_fenced, "entries": promoted["entries"],
                  "at": wall, "seconds": round(self._clock() - started, 3)}
        self._record(record)
        log.warning("%s/%s: slot %s owns the shard now (epoch %s, %.2f s)", domain, shard, plan.successor,
                    promoted["epoch"], record["seconds"])

    def _replace_missing(self, copies: list[tuple], running: MemoryConfig, alive: set[str]) -> None:
        """A copy whose actor is gone for good (killed without restart; Ray gave up on it) is created
        again, on a node none of its shard's other copies is on (when there is one): it starts as a
        replica and takes its state from the owner's next snapshot."""
        now = self._clock()
        for copy in copies:
            since = self._missing_since.get(copy)
            # only a copy seen before: at a first start, start() may still be creating it
            if since is None or now - since < self.timeout_s or not (copy in self.facts or self._restarted):
                continue
            domain, shard, slot = copy
            if slot == self._layout().owner(domain, shard):
                continue  # never an empty new owner: the owner's slot is failed over first, then replaced
            n = running.replication_factor_for(domain)
            used = sorted({self.facts[(domain, shard, s)]["node_id"] for s in range(n)
                           if s != slot and (domain, shard, s) in self.facts})
            opts = {**shard_options(self.namespace, domain, shard, slot), "get_if_exists": True}
            if len(alive) > len(used) and used:
                opts["label_selector"] = {"ray.io/node-id": f"!in({','.join(used)})"}
            actor_class(_shard_actor(), opts).remote(domain, shard, slot, n, self.namespace, 1,
                                                      shard_settings(running, domain), True)
            self._missing_since.pop(copy, None)
            self.detector.forget(copy)
            log.warning("%s/%s slot %s was gone: created again", domain, shard, slot)
            self._record({"domain": domain, "shard": shard, "kind": "replacement", "slot": slot, "at": time.time()})

    # ------------------------------------------------------------------ partition healing
    def heal(self) -> dict:
        """``heal_partition()``: every shard's copies are asked for their stash now (not only those
        whose last check reported one), and every stash is merged into its owner."""
        self._seam.refresh()
        with self._lock:
            running = self._running()
            shards = {(d, s) for d in running.domains if running.replication_factor_for(d) > 1
                      for s in range(running.domain(d).shards)}
            return self._heal(shards)

    def _heal(self, shards: set[tuple[str, int]]) -> dict:
        """Hand the stashes of ``shards``' copies to their owners (caller holds ``_lock``)."""
        layout, running = self._layout(), self._running()
        nodes, unreachable, done = set(), [], []
        conflicts = changed = handed = 0
        for domain, shard in sorted(shards):
            if domain not in running.domains:
                continue
            stashes = {}
            for slot in range(running.replication_factor_for(domain)):
                copy = (domain, shard, slot)
                try:
                    items = _ray.get(self._handle(copy).stashed.remote(), timeout=self.timeout_s,
                                     what=f"the stash of {domain}/{shard} slot {slot}")
                except Exception as exc:  # noqa: BLE001 - cut off, or dead: merged at a later heal
                    unreachable.append(f"{domain}/{shard}/{slot}")
                    log.info("heal: %s/%s slot %s not reached: %s", domain, shard, slot, exc)
                    continue
                nodes.add(self.facts.get(copy, {}).get("node_id"))
                if items:
                    stashes[slot] = items
            if not stashes:
                continue
            owner = (domain, shard, layout.owner(domain, shard))
            records = [item for items in stashes.values() for item in items]
            try:
                out = _ray.get(self._handle(owner).absorb.remote(records), timeout=60.0,
                               what=f"the owner of {domain}/{shard} merging stashes")
            except Exception as exc:  # noqa: BLE001 - the owner cut off or failing over: next round
                unreachable.append(f"{domain}/{shard}/{owner[2]}")
                log.warning("heal: the owner of %s/%s could not merge %d stashed writes: %s", domain, shard,
                            len(records), exc)
                continue
            for slot, items in stashes.items():
                try:
                    _ray.get(self._handle((domain, shard, slot)).clear_stash.remote(items), timeout=self.timeout_s,
                             what=f"clearing the stash of {domain}/{shard} slot {slot}")
                except Exception as exc:  # noqa: BLE001 - merged already; a second merge changes nothing
                    log.info("heal: %s/%s slot %s stash not cleared: %s", domain, shard, slot, exc)
                self.facts.get((domain, shard, slot), {})["stash"] = 0
            conflicts += out["conflicts"]
            changed += out["merged"]
            handed += len(records)
            done.append({"domain": domain, "shard": shard, "owner": owner[2], "from": sorted(stashes),
                         "stashed": len(records), "changed": out["merged"], "conflicts": out["conflicts"]})
        result = {"nodes": len(nodes - {None}), "merged": not unreachable, "conflicts_resolved": conflicts,
                  "entries_changed": changed, "stashed_writes": handed, "shards": done,
                  "unreachable": unreachable}
        if done:
            log.warning("heal: %d stashed writes of %d shards merged (%d changed, %d conflicts)", handed, len(done),
                        changed, conflicts)
            self._record({"kind": "heal", "shards": len(done), "stashed": handed, "changed": changed,
                          "conflicts": conflicts, "at": time.time()})
        return result

    def _record(self, record: dict) -> None:
        self.history = [*self.history, record][-_HISTORY:]
        try:
            _ray.kv_put(failover_key(self.namespace), json.dumps(self.history).encode())
        except Exception as exc:  # noqa: BLE001 - the log has it anyway
            log.warning("could not keep the failover history: %s", exc)

    def report(self) -> dict:
        layout = self._layout()
        return {"failure_timeout_s": self.timeout_s, "lease_s": self.lease_s, "rounds": self.rounds,
                "stash_lost": self.stash_lost,
                "stashed": {f"{d}/{s}/{slot}": f["stash"] for (d, s, slot), f in self.facts.items() if f.get("stash")},
                "owners": {f"{d}/{s}": {"slot": slot, "epoch": ep} for (d, s), (slot, ep) in layout.owners.items()},
                "history": list(self.history),
                "silent": {f"{d}/{s}/{slot}": round(self.detector.silence_s((d, s, slot)), 3)
                           for (d, s, slot) in self.facts if self.detector.silence_s((d, s, slot)) > self.period_s * 2}}


def _shard_actor() -> type:
    from erlmcp_ray.actors.shard import ShardActor

    return ShardActor
