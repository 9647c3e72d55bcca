"""cluster.yaml is a config Ray's cluster launcher accepts: a JSON-schema pass on the raw YAML (clean
messages), then the autoscaler's own prepare_config and validate_config; what it ships exists, and its
start commands are the ones the README documents. (tests/integration/test_cluster_local.py runs them.)"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from erlmcp_ray.config import MemoryConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_ray_accepts_it(raw):
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(raw), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)
    prepared = prepare_config(raw)
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]
    assert prepared["available_node_types"]["ray.worker.default"]["min_workers"] >= 2  # replicas have nodes


def test_the_schema_pass_catches_a_mistake(raw):
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    broken = {**raw, "max_workerz": 4}
    assert list(jsonschema.Draft7Validator(schema).iter_errors(broken))


def test_what_it_ships_exists_and_the_config_is_valid(raw):
    mounts = raw["file_mounts"]
    assert (ROOT / mounts["~/erlmcp_ray"]).resolve() == ROOT
    deploy = ROOT / mounts["~/erlmcp_deploy"]
    cfg = MemoryConfig.load(deploy / "erlmcp.toml")
    assert cfg.durable.kind.value == "redis" and "HEAD_IP" in cfg.durable.redis_url
    assert mounts["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_every_node_runs_ray_with_token_authentication_and_the_same_ray(raw):
    for command in raw["head_start_ray_commands"] + raw["worker_start_ray_commands"]:
        if "ray start" in command:
            assert "RAY_AUTH_MODE=token" in command, command
    assert any("ray[default]>=2.60" in c for c in raw["setup_commands"])
    head = next(c for c in raw["head_start_ray_commands"] if "ray start --head" in c)
    for knob in ("health_check_period_ms=500", "health_check_timeout_ms=500", "health_check_failure_threshold=3"):
        assert f"RAY_{knob}" in head  # as erlmcp_ray.actors.options.RAY_HEALTH_FOR_FAILOVER
    start = raw["head_start_ray_commands"][-1]
    assert shlex.split(start)[1:4] == ["erlmcp-ray", "start", "--address"] and "--config" in start


def test_the_readme_documents_these_start_commands(raw):
    readme = (ROOT / "README.md").read_text()
    for command in raw["head_start_ray_commands"] + raw["worker_start_ray_commands"]:
        assert command in readme, f"README does not show cluster.yaml's command: {command}"


def test_the_on_premise_variant_in_the_comments_is_valid_too(raw):
    text = (ROOT / "cluster.yaml").read_text()
    block = text[text.index("#     provider:\n"):text.index("# and keep the rest")]
    local = yaml.safe_load("\n".join(line[len("#     "):] for line in block.splitlines()))
    variant = {k: v for k, v in raw.items() if k not in ("provider", "auth", "available_node_types", "head_node_type")}
    variant.update(local)
    prepared = prepare_config(variant)
    validate_config(prepared)
    assert os.path.basename(prepared["provider"]["type"]) == "local"
