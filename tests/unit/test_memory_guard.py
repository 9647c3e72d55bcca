"""Per-process memory guard (erlmcp_ray.memory_guard): the pure guard, the measure, enforcement. No Ray."""

from __future__ import annotations

import mmap
import threading

import pytest

from erlmcp_ray import memory_guard as mg
from erlmcp_ray.config import GuardLimits, MemoryConfig
from erlmcp_ray.errors import ConfigError

MB = 1_000_000


@pytest.fixture(autouse=True)
def _no_guard_left():
    mg.disable_guard()
    yield
    mg.disable_guard()


class Sequence:
    """A fake measure: returns the given (heap, bin_heap) values in turn, then repeats the last."""

    def __init__(self, *values):
        self.values = list(values)
        self.calls = 0

    def __call__(self):
        value = self.values[min(self.calls, len(self.values) - 1)]
        self.calls += 1
        if isinstance(value, Exception):
            raise value
        return value


class FakeExit:
    def __init__(self):
        self.codes = []
        self.called = threading.Event()

    def __call__(self, code):
        self.codes.append(code)
        self.called.set()


def fresh_private_memory(size: int) -> mmap.mmap:
    """``size`` bytes of new, written, private memory of this process.

    A fresh anonymous private mapping, not a ``bytes``: malloc may serve a large block from heap
    pages an earlier test freed but that are still resident, and then the process's memory does
    not grow at all (this made these tests fail in a full run). Python's default mmap is shared.
    """
    block = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    block.write(b"x" * size)
    return block


def limits(heap=100, bin_heap=50):
    return GuardLimits(max_heap_size=heap, max_bin_vheap_size=bin_heap)


# --------------------------------------------------------------------------- MemoryGuard


def test_guard_reports_once_per_excursion():
    seen = []
    measure = Sequence((10, 0), (150, 0), (160, 0), (100, 50), (200, 0), (0, 51), (0, 0))
    guard = mg.MemoryGuard("context", limits(), measure, seen.append)
    statuses = [guard.poll() for _ in range(7)]
    assert [s.exceeded for s in statuses] == [False, True, True, False, True, True, False]
    # 150 starts an excursion, 160 continues it; (100, 50) is at the limits, not over: re-armed.
    # (200, 0) and (0, 51) are one excursion: the heap, then the bin heap, stays over.
    assert seen == [statuses[1], statuses[4]] and guard.excursions == 2 and not guard.over
    s = statuses[1]
    assert (s.kind, s.heap, s.bin_heap, s.limits) == ("context", 150, 0, limits())
    assert s.heap_percent == 150.0 and s.bin_heap_percent == 0.0
    assert s.reason == "heap 150 > 100 bytes"
    assert statuses[5].reason == "bin heap 51 > 50 bytes" and statuses[0].reason == ""
    assert s.to_dict() == {
        "kind": "context",
        "heap": 150,
        "bin_heap": 0,
        "max_heap_size": 100,
        "max_bin_vheap_size": 50,
        "heap_percent": 150.0,
        "exceeded": True,
    }


def test_guard_status_does_not_act():
    seen = []
    guard = mg.MemoryGuard("tool", limits(), Sequence((500, 500)), seen.append)
    assert guard.status().exceeded and seen == [] and guard.excursions == 0
    with pytest.raises(ValueError, match="unknown memory guard kind"):
        mg.MemoryGuard("nope", limits(), Sequence((0, 0)))


# --------------------------------------------------------------------------- limits and module API


def test_enable_guards_use_the_spec_defaults_and_overrides():
    assert mg.enable_context_guard().limits == GuardLimits(max_heap_size=100 * MB, max_bin_vheap_size=50 * MB)
    assert mg.check().kind == "context"
    assert mg.enable_tool_guard().limits == GuardLimits(max_heap_size=50 * MB, max_bin_vheap_size=25 * MB)
    guard = mg.enable_transport_guard()
    assert guard.limits == GuardLimits(max_heap_size=30 * MB, max_bin_vheap_size=15 * MB)
    assert mg.check().kind == "transport"  # one guard per process: the last one enabled
    assert mg.enable_context_guard(max_heap_size="200MB").limits == GuardLimits(
        max_heap_size=200 * 1024**2, max_bin_vheap_size=50 * MB
    )
    cfg = MemoryConfig.load({"memory_guard": {"tool": {"max_bin_vheap_size": 7}}})
    assert mg.enable_tool_guard(config=cfg).limits == GuardLimits(max_heap_size=50 * MB, max_bin_vheap_size=7)
    assert mg.enable_guard("tool", config=cfg.memory_guard, max_heap_size=9).limits.max_heap_size == 9
    with pytest.raises(ConfigError):
        mg.enable_context_guard(max_heap_size=0)
    with pytest.raises(ValueError, match="unknown memory guard kind"):
        mg.enable_guard("worker")


def test_validate_memory_percent_math():
    # A fake measure through guard_current_actor (the exit is never reached: 25 MB is under limit).
    exit_ = FakeExit()
    mg.guard_current_actor("context", 60.0, measure=Sequence((25 * MB, 1)), exit_process=exit_)
    assert mg.get_memory_usage() == (25 * MB, 1)
    assert mg.validate_memory() == 25.0  # the enabled guard: context, 100 MB
    assert mg.validate_memory("context") == 25.0
    assert mg.validate_memory("tool") == 50.0  # 25 of the tool limit's 50 MB
    assert mg.validate_memory("transport") == pytest.approx(100 * 25 / 30)
    cfg = MemoryConfig.load({"memory_guard": {"context": {"max_heap_size": 20 * MB}}})
    assert mg.validate_memory("context", config=cfg) == 125.0  # over 100 % is reported, not clipped
    with pytest.raises(ValueError, match="unknown memory guard kind"):
        mg.validate_memory("heap")
    status = mg.check()
    assert not status.exceeded and status.heap == 25 * MB and exit_.codes == []


def test_no_guard_enabled():
    with pytest.raises(RuntimeError, match="no memory guard"):
        mg.check()
    with pytest.raises(RuntimeError, match="no memory guard"):
        mg.validate_memory()
    assert mg.validate_memory("transport") > 0  # the whole process against 30 MB


def test_get_memory_usage_measures_this_process():
    heap, bin_heap = mg.get_memory_usage()  # no guard: the whole process
    assert isinstance(heap, int) and isinstance(bin_heap, int)
    assert 1 * MB < heap < 64 * 1024 * MB and 0 <= bin_heap < 64 * 1024 * MB
    assert (heap, bin_heap) == pytest.approx(mg.process_memory(), rel=0.5)

    mg.enable_context_guard()
    before, _ = mg.get_memory_usage()  # growth since enabling: small
    assert 0 <= before < 20 * MB
    block = fresh_private_memory(40 * MB)
    after, after_bin = mg.get_memory_usage()
    assert after - before > 30 * MB and after_bin >= 0
    assert mg.check().heap >= after - 1 * MB
    block.close()


# --------------------------------------------------------------------------- enforcement


def test_watcher_poll_enforces_once(capsys):
    exit_ = FakeExit()
    before = mg.events()
    watcher = mg.GuardWatcher(
        "tool", limits(), Sequence((10, 0), (101, 0)), 1.0, exit_process=exit_, label="actor abc"
    )
    assert not watcher.poll().exceeded and exit_.codes == [] and not watcher.stopped
    status = watcher.poll()
    assert status.exceeded and exit_.codes == [1] and watcher.exited and watcher.stopped
    assert mg.events() == {**before, "tool": before["tool"] + 1}
    err = capsys.readouterr().err
    assert "tool guard of actor abc exceeded (heap 101 > 100 bytes)" in err and "Ray restarts" in err
    watcher.run()  # already stopped: returns at once
    assert exit_.codes == [1]


def test_guard_current_actor_thread_exits_the_process(capsys):
    exit_ = FakeExit()
    before = mg.events()["transport"]
    measure = Sequence((1, 0), (2, 0), RuntimeError("psutil hiccup"), (3, 0), (1, 16 * MB))
    watcher = mg.guard_current_actor("transport", 0.001, measure=measure, exit_process=exit_)
    assert watcher.thread is not None and watcher.thread.daemon
    assert exit_.called.wait(10), "the watcher never enforced"
    watcher.thread.join(5)
    assert not watcher.thread.is_alive()  # the loop ends once the process "exited"
    assert exit_.codes == [1] and mg.events()["transport"] == before + 1
    assert measure.calls == 5  # a failed measurement is logged and the loop goes on
    assert "bin heap 16000000 > 15000000 bytes" in capsys.readouterr().err


def test_guard_current_actor_with_the_real_measure():
    exit_ = FakeExit()
    watcher = mg.guard_current_actor("tool", 0.005, max_heap_size=2 * MB, exit_process=exit_)
    block = fresh_private_memory(30 * MB)
    assert exit_.called.wait(10), "30 MB over a 2 MB heap limit was not caught"
    assert watcher.guard.excursions == 1 and exit_.codes == [1]
    block.close()


def test_disable_guard_stops_the_watcher():
    exit_ = FakeExit()
    watcher = mg.guard_current_actor("context", 0.001, measure=Sequence((0, 0)), exit_process=exit_)
    mg.disable_guard()
    assert watcher.stopped and not watcher.thread.is_alive() and exit_.codes == []
    with pytest.raises(RuntimeError):
        mg.check()
    # Enabling another guard also stops the previous watcher.
    first = mg.guard_current_actor("context", 0.001, measure=Sequence((0, 0)), exit_process=exit_)
    mg.enable_tool_guard()
    assert first.stopped and mg.check().kind == "tool"
    with pytest.raises(ValueError):
        mg.GuardWatcher("tool", limits(), Sequence((0, 0)), 0)


def test_the_stderr_line_shows_once_when_logging_already_writes_to_stderr(capsys):
    import logging
    import sys

    handler = logging.StreamHandler(sys.stderr)  # as in a Ray worker, whose logs go to stderr
    mg.logger.addHandler(handler)
    try:
        watcher = mg.GuardWatcher("tool", limits(), Sequence((0, 99)), exit_process=FakeExit(), label="w")
        watcher.poll()
    finally:
        mg.logger.removeHandler(handler)
    assert capsys.readouterr().err.count("tool guard of w exceeded (bin heap 99 > 50 bytes)") == 1
