"""Per-process memory limits: the spec's ``erlmcp_memory_guard`` (OTP ``max_heap_size``) for Ray actors.

OTP caps one process's heap and kills the process that outgrows it; its supervisor restarts it clean.
Python has no per-process heap cap, but a Ray actor *is* a process, so the port measures the process
and, when asked to enforce, ends it so that Ray restarts the actor (``max_restarts`` permitting).

The measure (what ``get_memory_usage()`` returns and the limits apply to)::

    heap      growth of the process's *private* resident memory (RSS - shared) since the guard was
              enabled: everything this process allocated itself, Python objects and native buffers
              (numpy, Arrow, msgpack output) alike, and exactly what ending the process gives back.
    bin heap  growth of its *shared* resident memory since then: chiefly pages of the Ray object
              store that the process mapped by reading objects zero-copy. That is the spec's
              ``max_bin_vheap_size``: OTP's large binaries are shared, reference-counted and
              live off the process heap, as Ray objects do.

Why these and not the alternatives:

- RSS alone counts object-store pages in every process that reads them; Ray's own guidance
  ("Memory Management": worker heap is best measured as RSS minus SHR) subtracts them for the same
  reason. Here they are not dropped but counted apart, as the bin heap, so heap and bin heap never
  count one page twice.
- Growth above a baseline, not the absolute size: an idle Ray worker already holds 100 MB or more
  of interpreter, Ray core worker and imported modules, more than the spec's 30 MB transport limit.
  The limit is on what the actor's own work adds, taken from the moment its guard is enabled (call
  ``enable_*_guard`` / ``guard_current_actor`` at the end of the actor's ``__init__``).
- Not tracemalloc: it sees only Python's allocators (an Arrow buffer or a C extension's malloc is
  invisible to it), makes allocation-heavy code several times slower and itself costs memory per
  traced block. A guard must see what the operating system sees.
- Resident, not allocated, memory: memory Python or the C allocator freed but kept (pymalloc arenas,
  fragmented malloc heaps) still counts, as it still is unavailable to the node; only ending the
  process returns it, which is the point of the guard.

With no guard enabled the baseline is zero: ``get_memory_usage()`` is then the whole private and
shared resident memory of the process. On platforms where psutil reports no shared memory (macOS,
Windows) the bin heap is 0 and the heap is the RSS growth. One measurement is one psutil call
(about 10 µs on Linux), cheap enough to poll every second.

Enforcement: :func:`guard_current_actor` starts a daemon thread that polls the measure and, when a
limit is exceeded, logs, counts the event (:func:`events`), writes one line to stderr (which Ray
copies to the worker's log) and ends the process with ``os._exit(1)``. ``ray.actor.exit_actor()``
only works in the actor's own thread and waits for the running method; ``os._exit`` is immediate,
which matters when memory is running out, and Ray treats it as a crash and restarts the actor.
:class:`MemoryGuard` is the pure part (limits, an injected measure, a callback once per excursion)
and is tested without Ray or real allocations. ``check()`` and ``validate_memory()`` only read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from erlmcp_ray.config import GuardLimits, MemoryConfig, MemoryGuardConfig

__all__ = [
    "KINDS",
    "GuardStatus",
    "GuardWatcher",
    "MemoryGuard",
    "check",
    "disable_guard",
    "enable_context_guard",
    "enable_guard",
    "enable_tool_guard",
    "enable_transport_guard",
    "events",
    "get_memory_usage",
    "guard_current_actor",
    "process_memory",
    "validate_memory",
]

logger = logging.getLogger(__name__)

#: The kinds of guarded process, as in the spec's ``memory_guard`` config.
KINDS = ("context", "tool", "transport")

Measure = Callable[[], "tuple[int, int]"]


def _check_kind(kind: object) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown memory guard kind {kind!r}; expected one of: {', '.join(KINDS)}")
    return kind  # type: ignore[return-value]


# --------------------------------------------------------------------------- the pure part


@dataclass(frozen=True, slots=True)
class GuardStatus:
    """One measurement against a guard's limits; ``exceeded`` if either limit is passed."""

    kind: str
    heap: int
    bin_heap: int
    limits: GuardLimits
    exceeded: bool = field(init=False)

    def __post_init__(self) -> None:
        over = self.heap > self.limits.max_heap_size or self.bin_heap > self.limits.max_bin_vheap_size
        object.__setattr__(self, "exceeded", over)

    @property
    def heap_percent(self) -> float:
        return 100.0 * self.heap / self.limits.max_heap_size

    @property
    def bin_heap_percent(self) -> float:
        return 100.0 * self.bin_heap / self.limits.max_bin_vheap_size

    @property
    def reason(self) -> str:
        """Which limit is passed, e.g. ``"heap 120000000 > 100000000 bytes"``; "" if none."""
        parts = []
        if self.heap > self.limits.max_heap_size:
            parts.append(f"heap {self.heap} > {self.limits.max_heap_size} bytes")
        if self.bin_heap > self.limits.max_bin_vheap_size:
            parts.append(f"bin heap {self.bin_heap} > {self.limits.max_bin_vheap_size} bytes")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "heap": self.heap,
            "bin_heap": self.bin_heap,
            "max_heap_size": self.limits.max_heap_size,
            "max_bin_vheap_size": self.limits.max_bin_vheap_size,
            "heap_percent": self.heap_percent,
            "exceeded": self.exceeded,
        }


class MemoryGuard:
    """Limits of one kind, an injected ``measure() -> (heap, bin_heap)``, a callback per excursion."""

    def __init__(
        self,
        kind: str,
        limits: GuardLimits,
        measure: Measure,
        on_exceeded: Callable[[GuardStatus], object] | None = None,
    ) -> None:
        self.kind = _check_kind(kind)
        self.limits = limits
        self.measure = measure
        self._on_exceeded = on_exceeded
        self._over = False
        #: Times usage went over a limit (each excursion counts once, however long it lasts).
        self.excursions = 0

    @property
    def over(self) -> bool:
        """True while the last poll found a limit exceeded."""
        return self._over

    def status(self) -> GuardStatus:
        """Measure now; no callback, no state change."""
        heap, bin_heap = self.measure()
        return GuardStatus(self.kind, heap, bin_heap, self.limits)

    def poll(self) -> GuardStatus:
        """Measure now; call ``on_exceeded`` if this starts an excursion over a limit."""
        status = self.status()
        if status.exceeded and not self._over:
            self._over = True
            self.excursions += 1
            if self._on_exceeded is not None:
                self._on_exceeded(status)
        elif not status.exceeded:
            self._over = False  # re-armed: the next excursion is reported again
        return status


# --------------------------------------------------------------------------- measuring this process

_process_cache: list[Any] = []  # [(pid, psutil.Process)]: rebuilt after a fork


def process_memory() -> tuple[int, int]:
    """``(private, shared)`` resident bytes of this process, absolute (no baseline)."""
    import psutil  # a declared dependency; imported here so importing this module stays cheap

    pid = os.getpid()
    if not _process_cache or _process_cache[0][0] != pid:
        _process_cache[:] = [(pid, psutil.Process(pid))]
    info = _process_cache[0][1].memory_info()
    shared = getattr(info, "shared", 0)  # Linux only; elsewhere everything counts as private
    return info.rss - shared, shared


def _growth_since(baseline: tuple[int, int]) -> Measure:
    base_private, base_shared = baseline

    def measure() -> tuple[int, int]:
        private, shared = process_memory()
        return max(0, private - base_private), max(0, shared - base_shared)

    return measure


# --------------------------------------------------------------------------- the process's guard

_lock = threading.Lock()
_guard: MemoryGuard | None = None
_watcher: GuardWatcher | None = None
_events = dict.fromkeys(KINDS, 0)


def _limits(
    kind: str,
    config: MemoryConfig | MemoryGuardConfig | None,
    max_heap_size: int | str | None,
    max_bin_vheap_size: int | str | None,
) -> GuardLimits:
    guard_config = config.memory_guard if isinstance(config, MemoryConfig) else config or MemoryGuardConfig()
    base: GuardLimits = getattr(guard_config, _check_kind(kind))
    overrides = {"max_heap_size": max_heap_size, "max_bin_vheap_size": max_bin_vheap_size}
    overrides = {name: value for name, value in overrides.items() if value is not None}
    # Through the model, so "200MB" parses and a zero or negative limit is a ConfigError.
    return GuardLimits(**{**base.model_dump(), **overrides}) if overrides else base


def _install(guard: MemoryGuard, watcher: GuardWatcher | None) -> None:
    global _guard, _watcher
    with _lock:
        old, _guard, _watcher = _watcher, guard, watcher
    if old is not None:
        old.stop()


def enable_guard(
    kind: str,
    *,
    max_heap_size: int | str | None = None,
    max_bin_vheap_size: int | str | None = None,
    config: MemoryConfig | MemoryGuardConfig | None = None,
) -> MemoryGuard:
    """Guard this process as a ``kind`` process, from now: the baseline is taken here.

    Limits come from ``config.memory_guard`` (default: the spec's), each overridable. One guard per
    process, as one ``max_heap_size`` per Erlang process: this replaces any enabled guard (and
    stops its enforcement). This only sets what ``check``/``validate_memory`` compare against;
    :func:`guard_current_actor` enforces.
    """
    limits = _limits(kind, config, max_heap_size, max_bin_vheap_size)
    guard = MemoryGuard(kind, limits, _growth_since(process_memory()))
    _install(guard, None)
    return guard


def enable_context_guard(
    *,
    max_heap_size: int | str | None = None,
    max_bin_vheap_size: int | str | None = None,
    config: MemoryConfig | MemoryGuardConfig | None = None,
) -> MemoryGuard:
    """Guard this process as a context process (spec defaults: 100 MB heap, 50 MB bin heap)."""
    return enable_guard(
        "context", max_heap_size=max_heap_size, max_bin_vheap_size=max_bin_vheap_size, config=config
    )


def enable_tool_guard(
    *,
    max_heap_size: int | str | None = None,
    max_bin_vheap_size: int | str | None = None,
    config: MemoryConfig | MemoryGuardConfig | None = None,
) -> MemoryGuard:
    """Guard this process as a tool process (spec defaults: 50 MB heap, 25 MB bin heap)."""
    return enable_guard(
        "tool", max_heap_size=max_heap_size, max_bin_vheap_size=max_bin_vheap_size, config=config
    )


def enable_transport_guard(
    *,
    max_heap_size: int | str | None = None,
    max_bin_vheap_size: int | str | None = None,
    config: MemoryConfig | MemoryGuardConfig | None = None,
) -> MemoryGuard:
    """Guard this process as a transport process (spec defaults: 30 MB heap, 15 MB bin heap)."""
    return enable_guard(
        "transport", max_heap_size=max_heap_size, max_bin_vheap_size=max_bin_vheap_size, config=config
    )


def disable_guard() -> None:
    """Remove this process's guard and stop its enforcement, if any."""
    global _guard, _watcher
    with _lock:
        watcher, _guard, _watcher = _watcher, None, None
    if watcher is not None:
        watcher.stop()


def get_memory_usage() -> tuple[int, int]:
    """``(heap, bin_heap)`` bytes of this process by the enabled guard's measure (module docstring).

    Growth since the guard was enabled; with no guard, the process's whole private and shared
    resident memory.
    """
    guard = _guard
    return guard.measure() if guard is not None else process_memory()


def check() -> GuardStatus:
    """The enabled guard's status now (never acts). RuntimeError if no guard is enabled."""
    guard = _guard
    if guard is None:
        raise RuntimeError("no memory guard is enabled in this process; call enable_*_guard() first")
    return guard.status()


def validate_memory(
    kind: str | None = None, *, config: MemoryConfig | MemoryGuardConfig | None = None
) -> float:
    """Percent of the ``kind`` guard's heap limit this process uses (may exceed 100).

    ``kind`` None means the enabled guard's kind (RuntimeError if there is none). For the enabled
    guard's kind its limits (overrides included) apply; for another kind, that kind's limits from
    ``config`` (default: the spec's). ValueError for an unknown kind.
    """
    guard = _guard
    if kind is None:
        if guard is None:
            raise RuntimeError("no memory guard is enabled in this process; pass kind= or enable one")
        kind = guard.kind
    _check_kind(kind)
    limits = (
        guard.limits
        if guard is not None and guard.kind == kind and config is None
        else _limits(kind, config, None, None)
    )
    heap, _ = get_memory_usage()
    return 100.0 * heap / limits.max_heap_size


def events() -> dict[str, int]:
    """Per kind, how many limit excursions a :class:`GuardWatcher` caught in this process."""
    with _lock:
        return dict(_events)


# --------------------------------------------------------------------------- enforcement


def _process_label() -> str:
    """``"actor <id> (pid N)"`` in a Ray actor, else ``"pid N"``."""
    label = f"pid {os.getpid()}"
    if "ray" not in sys.modules:  # not a Ray process: importing Ray here would cost seconds
        return label
    import ray

    try:
        actor_id = ray.get_runtime_context().get_actor_id() if ray.is_initialized() else None
    except Exception:  # noqa: BLE001 - a label must never break the guard
        actor_id = None
    return f"actor {actor_id} ({label})" if actor_id else label


def _logged_to_stderr() -> bool:
    """True if an ERROR record of ``logger`` is written to stderr by the logging configuration."""
    if not logger.isEnabledFor(logging.ERROR):
        return False
    if not logger.hasHandlers():  # logging's last resort handler writes to stderr
        return logging.lastResort is not None and logging.lastResort.level <= logging.ERROR
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            stream = getattr(handler, "stream", None)
            if (
                handler.level <= logging.ERROR
                and stream is not None
                and stream in (sys.stderr, sys.__stderr__)
            ):
                return True
        current = current.parent if current.propagate else None
    return False


class GuardWatcher:
    """Polls a guard every ``interval_s`` and ends the process at the first excursion.

    ``run()`` is the loop (it returns once stopped or once the process "exited", which only an
    injected ``exit_process`` lets it see); ``start()`` runs it in a daemon thread; ``poll()`` is one
    iteration. ``exit_process`` defaults to ``os._exit``.
    """

    def __init__(
        self,
        kind: str,
        limits: GuardLimits,
        measure: Measure,
        interval_s: float = 1.0,
        *,
        exit_process: Callable[[int], object] = os._exit,
        label: str | None = None,
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s!r}")
        self.guard = MemoryGuard(kind, limits, measure, self._enforce)
        self.interval_s = interval_s
        self.label = label if label is not None else _process_label()
        self._exit_process = exit_process
        self._stop = threading.Event()
        self.exited = False
        self.thread: threading.Thread | None = None

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def poll(self) -> GuardStatus:
        """Measure once; enforce if this starts an excursion."""
        return self.guard.poll()

    def run(self) -> None:
        """Poll until stopped (or exited); the first poll is immediate."""
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:  # a failed measurement must not end the guard
                logger.exception("memory guard of %s: measurement failed", self.label)
            self._stop.wait(self.interval_s)

    def start(self) -> GuardWatcher:
        """Run the loop in a daemon thread (it never keeps the process alive)."""
        self.thread = threading.Thread(
            target=self.run, name=f"erlmcp-memory-guard-{self.guard.kind}", daemon=True
        )
        self.thread.start()
        return self

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop polling; waits for the thread unless called from it."""
        self._stop.set()
        thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _enforce(self, status: GuardStatus) -> None:
        line = (
            f"erlmcp_ray.memory_guard: {status.kind} guard of {self.label} exceeded "
            f"({status.reason}); ending the process so that Ray restarts it"
        )
        logger.error("%s", line)
        with _lock:
            _events[status.kind] += 1
        # The line must reach stderr (Ray copies it to the worker's log) before os._exit, which
        # flushes nothing. Written only if logging did not already put it there (Ray workers log
        # to stderr), so it shows once. A closed or broken stderr must not save the process.
        with contextlib.suppress(Exception):
            if not _logged_to_stderr():
                sys.stderr.write(line + "\n")
            sys.stderr.flush()
        self.exited = True
        self._stop.set()
        self._exit_process(1)


def guard_current_actor(
    kind: str,
    interval_s: float = 1.0,
    *,
    max_heap_size: int | str | None = None,
    max_bin_vheap_size: int | str | None = None,
    config: MemoryConfig | MemoryGuardConfig | None = None,
    measure: Measure | None = None,
    exit_process: Callable[[int], object] = os._exit,
) -> GuardWatcher:
    """Enable the ``kind`` guard for this process (baseline now) and enforce it in a daemon thread.

    Meant for the end of a Ray actor's ``__init__``; works in any process. Over a limit, the
    watcher logs, counts the event, writes a line to stderr and calls ``exit_process(1)``
    (``os._exit``): Ray restarts the actor if its ``max_restarts`` allows. ``measure`` (default:
    this process, see the module docstring) and ``exit_process`` are injectable for tests.
    Replaces any guard enabled before; :func:`disable_guard` stops it.
    """
    limits = _limits(kind, config, max_heap_size, max_bin_vheap_size)
    watcher = GuardWatcher(
        kind,
        limits,
        measure if measure is not None else _growth_since(process_memory()),
        interval_s,
        exit_process=exit_process,
    )
    _install(watcher.guard, watcher)
    return watcher.start()
