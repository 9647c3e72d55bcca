"""cachetools' own test suite, run against our eviction policies (issue "Drop-in cachetools caches").

At collection the sdist of the *installed* cachetools version is downloaded with pip into a
temporary directory (removed at exit; nothing is copied into the repository), and its ``tests``
package is imported with cachetools' classes swapped for ours; each of its test cases becomes a
test here:

    cachetools   ours           suite class run here
    LRUCache     LRUCache       test_lru.LRUCacheTest   (the shared CacheTestMixin + LRU order tests)
    LFUCache     LFUCache       test_lfu.LFUCacheTest
    FIFOCache    FIFOCache      test_fifo.FIFOCacheTest
    RRCache      RandomCache    test_rr.RRCacheTest
    TTLCache     TTLCache       test_ttl.TTLCacheTest   (its timer tests included)
    -            ARCCache       CacheTestMixin alone: cachetools has no such policy
    -            TinyLFUCache   CacheTestMixin alone

Not run: ``test_cache`` (cachetools' base class; ours has no policy of its own), ``test_tlru``
(no counterpart), and the decorator, key and threading modules (they test cachetools' functions).

The download happens at collection, not in a fixture, because the suite's cases must exist to be
collected one by one. Only an unreachable package index skips this module (with the reason);
any other failure (pip failed otherwise, the sdist lacks a module, the swap did not take) makes
``test_the_cachetools_suite_loads`` fail with the cause.
"""

from __future__ import annotations

import atexit
import functools
import importlib
import importlib.util
import shutil
import subprocess
import sys
import tarfile
import tempfile
import types
import unittest
from pathlib import Path

import cachetools
import pytest

from erlmcp_ray.eviction import ARCCache, FIFOCache, LFUCache, LRUCache, RandomCache, TinyLFUCache, TTLCache

VERSION = cachetools.__version__
PACKAGE = "_cachetools_suite"  # the name the sdist's tests/ package is imported under

#: cachetools' class name -> ours, as the suite's modules see it.
SWAP = {"LRUCache": LRUCache, "LFUCache": LFUCache, "FIFOCache": FIFOCache, "RRCache": RandomCache,
        "TTLCache": TTLCache}
#: suite module -> (its TestCase, the name of our subclass of it here)
MODULES = {
    "test_lru": ("LRUCacheTest", "TestLRUCache"),
    "test_lfu": ("LFUCacheTest", "TestLFUCache"),
    "test_fifo": ("FIFOCacheTest", "TestFIFOCache"),
    "test_rr": ("RRCacheTest", "TestRandomCache"),
    "test_ttl": ("TTLCacheTest", "TestTTLCache"),
}
#: our policies without a cachetools counterpart: the generic CacheTestMixin only
MIXIN_ONLY = {"TestARCCache": ARCCache, "TestTinyLFUCache": TinyLFUCache}

# What pip prints when it cannot reach the index (urllib3 / requests errors, on its retries).
_UNREACHABLE = (
    "NewConnectionError", "Failed to establish a new connection", "Temporary failure in name resolution",
    "Name or service not known", "Network is unreachable", "No route to host", "Connection refused",
    "ConnectTimeoutError", "ReadTimeoutError", "ProxyError", "Max retries exceeded", "Could not fetch URL",
)
_PIP_TIMEOUT_S = 300


def _unreachable(why: str) -> None:
    pytest.skip(f"package index unreachable: `pip download cachetools=={VERSION}` {why}",
                allow_module_level=True)


def _fetch_tests(workdir: Path) -> Path:
    """Download cachetools==VERSION's sdist into ``workdir`` and extract its ``tests`` package there."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--disable-pip-version-check", "--retries", "2", "--timeout", "30",
           "--dest", str(workdir), f"cachetools=={VERSION}"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        _unreachable(f"took over {_PIP_TIMEOUT_S} s")
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        errors = [line.strip() for line in output.splitlines() if any(m in line for m in _UNREACHABLE)]
        if errors:
            _unreachable(f"failed: {errors[-1]}")
        raise RuntimeError(f"`{' '.join(cmd)}` failed with exit code {proc.returncode}:\n{output}")
    sdist = workdir / f"cachetools-{VERSION}.tar.gz"
    if not sdist.is_file():
        raise RuntimeError(f"pip download left no {sdist.name} in {workdir}:\n{output}")
    root = f"cachetools-{VERSION}/tests/"
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(root) and (m.isfile() or m.isdir())]
        if hasattr(tarfile, "data_filter"):
            tar.extractall(workdir, members=members, filter="data")
        else:  # pragma: no cover - no extraction filters: the members are plain files and directories
            tar.extractall(workdir, members=members)
    tests = workdir / root
    if not (tests / "__init__.py").is_file():
        raise RuntimeError(f"the cachetools {VERSION} sdist has no tests/__init__.py")
    return tests


def _import_suite(tests: Path) -> tuple[types.ModuleType, dict[str, types.ModuleType]]:
    """Import the suite as package ``PACKAGE``; its modules see our classes under cachetools' names."""
    spec = importlib.util.spec_from_file_location(PACKAGE, tests / "__init__.py",
                                                  submodule_search_locations=[str(tests)])
    package = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = package  # the suite pickles its own classes (Timer, ...): found by module name
    spec.loader.exec_module(package)
    shim = types.ModuleType("cachetools", cachetools.__doc__)
    shim.__dict__.update({k: v for k, v in vars(cachetools).items() if not k.startswith("__")})
    shim.__dict__.update(SWAP)
    real = sys.modules["cachetools"]
    sys.modules["cachetools"] = shim  # only while the suite's modules run `from cachetools import ...`
    try:
        modules = {name: importlib.import_module(f"{PACKAGE}.{name}") for name in MODULES}
    finally:
        sys.modules["cachetools"] = real
    for name, module in modules.items():
        case = getattr(module, MODULES[name][0])
        if not (isinstance(case, type) and issubclass(case, unittest.TestCase)):
            raise TypeError(f"{PACKAGE}.{name}.{MODULES[name][0]} is not a TestCase")
        if not any(issubclass(case.Cache, ours) for ours in SWAP.values()):
            raise RuntimeError(f"{name}: the class under test is {case.Cache!r}, not one of ours")
    return package, modules


@functools.cache
def load_suite() -> tuple[types.ModuleType, dict[str, types.ModuleType]]:
    """Fetch (once per process) and import cachetools' suite: ``(package, {module name: module})``."""
    workdir = Path(tempfile.mkdtemp(prefix=f"cachetools-{VERSION}-suite-"))
    atexit.register(shutil.rmtree, workdir, True)
    return _import_suite(_fetch_tests(workdir))


def _build_cases() -> dict[str, type[unittest.TestCase]]:
    package, modules = load_suite()
    cases: dict[str, type[unittest.TestCase]] = {}
    for name, (source, ours) in MODULES.items():
        cases[ours] = type(ours, (getattr(modules[name], source),), {"__module__": __name__})
    for ours, cls in MIXIN_ONLY.items():
        bases = (unittest.TestCase, package.CacheTestMixin)
        cases[ours] = type(ours, bases, {"__module__": __name__, "Cache": cls})
    return cases


try:
    globals().update(_build_cases())
    _LOAD_ERROR: Exception | None = None
except Exception as exc:  # noqa: BLE001 - reported by the test below (pytest.skip is no Exception)
    _LOAD_ERROR = exc


def test_the_cachetools_suite_loads():
    if _LOAD_ERROR is not None:
        raise AssertionError(f"cachetools {VERSION}'s test suite could not be loaded") from _LOAD_ERROR
