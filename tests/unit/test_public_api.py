from __future__ import annotations

import json
import subprocess
import sys
import types

import erlmcp_ray


def test_all_is_exactly_the_public_names():
    eager = {n for n, v in vars(erlmcp_ray).items()
             if not n.startswith("_") and not isinstance(v, types.ModuleType)} - {"Any"}
    eager |= {"errors", "memory_guard"}
    lazy = set(erlmcp_ray._LAZY)
    assert set(erlmcp_ray.__all__) == eager | lazy
    for name in erlmcp_ray.__all__:
        assert getattr(erlmcp_ray, name) is not None
    assert {"start", "connect", "shutdown", "MemoryClient"} <= set(erlmcp_ray.__all__)


def test_core_never_imports_ray():
    code = "import sys, erlmcp_ray, erlmcp_ray.core.shard_state, erlmcp_ray.core.entry; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cli_config_show_and_check(tmp_path):
    good = tmp_path / "c.toml"
    good.write_text('[domains.session]\nmax_bytes = "10MB"\n')
    out = subprocess.run([sys.executable, "-m", "erlmcp_ray.cli", "config", "show", str(good)],
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["domains"]["session"]["max_bytes"] == 10 * 1024 * 1024
    bad = tmp_path / "bad.yaml"
    bad.write_text("domains:\n  session:\n    max_bytes: -1\n")
    out = subprocess.run([sys.executable, "-m", "erlmcp_ray.cli", "config", "check", str(bad)],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "domains.session.max_bytes" in out.stderr


def test_pressure_acts_before_rays_oom_killer_with_the_defaults():
    from erlmcp_ray.config import MemoryConfig
    from erlmcp_ray.system import headroom_below_ray_oom

    gib = 1024**3
    assert headroom_below_ray_oom(MemoryConfig().limits.max_bytes, 24 * gib, 0.95)
    assert not headroom_below_ray_oom(30 * gib, 24 * gib, 0.95)
