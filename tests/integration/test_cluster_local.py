"""cluster.yaml's head commands, run on this machine: a Ray head started with `ray start --head` (token
authentication, as on the cluster), Redis and the memory system started by `erlmcp-ray start
--address auto`; then a client in a separate process (`ray.init(address="auto")`) writes and reads,
`erlmcp-ray status` shows it, `erlmcp-ray stop` stops it, and that head (only) is stopped.

What differs from a cloud head, and why: `ray stop` is skipped (it would stop every Ray on this
machine, the test's own included); the fixed ports (GCS 6379 -- this machine's Redis --, object
manager 8076, Redis 6380, the dashboard's) become free ones; `--autoscaling-config` (written by
`ray up`) becomes a temporary directory for the head; HOME is a temporary directory holding what
file_mounts would ship (the token, deploy/); RAY_ADDRESS names the head, which `auto` then finds.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import redis
import yaml

pytestmark = [pytest.mark.ray]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_head_commands(commands: list[str], *, gcs: int, redis_port: int, temp_dir: Path) -> list[str]:
    """cluster.yaml's head_start_ray_commands as this machine runs them (see the module docstring)."""
    out = []
    for command in commands:
        if command.strip() == "ray stop":
            continue
        for cloud, here in (("--port=6379", f"--port={gcs}"),
                            ("--object-manager-port=8076", f"--object-manager-port={_free_port()}"),
                            ("--autoscaling-config=~/ray_bootstrap_config.yaml", f"--temp-dir={temp_dir}"),
                            ("--dashboard-host=0.0.0.0", f"--dashboard-host=127.0.0.1 --dashboard-port={_free_port()}"),
                            ("--port 6380", f"--port {redis_port}")):
            command = command.replace(cloud, here)
        out.append(command)
    return out


def _stop_head(temp_dir: Path) -> None:
    """Stop the processes of the head started in ``temp_dir`` (and their children) -- not `ray stop`,
    which would stop every Ray on this machine."""
    procs = {p for p in psutil.process_iter(["cmdline"])
             if any(str(temp_dir) in (arg or "") for arg in (p.info["cmdline"] or []))}
    for p in list(procs):
        try:
            procs.update(p.children(recursive=True))
        except psutil.Error:
            pass
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _gone, alive = psutil.wait_procs(list(procs), timeout=15)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass


def _run(command: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command, shell=True, env=env, capture_output=True, text=True, timeout=timeout,
                          executable="/bin/bash", check=False)


CLIENT = """
import json, ray, erlmcp_ray
ray.init(address="auto", logging_level="ERROR")
c = erlmcp_ray.connect("erlmcp")
for i in range(20):
    c.put("shared", f"k{i}", {"i": i}, consistency="strong")
values = [c.get("shared", f"k{i}", consistency="strong") for i in range(20)]
checkpoint = c.recovery.create_checkpoint()  # into the durable tier: the head's Redis
print(json.dumps({"values": values, "client": c.client_id, "checkpoint": checkpoint.id}))
c.close()
"""


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server (.ci/run installs it)")
def test_cluster_yaml_head_commands_start_a_working_system_here(tmp_path, capsys):
    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    home, temp_dir = tmp_path / "home", Path(f"/tmp/erlmcp-head-{os.getpid()}")
    home.mkdir()
    shutil.copytree(ROOT / "deploy", home / "erlmcp_deploy")  # file_mounts: ~/erlmcp_deploy <- ./deploy
    gcs, redis_port = _free_port(), _free_port()
    shipped = home / "erlmcp_deploy" / "erlmcp.toml"
    assert "@HEAD_IP:6380/" in shipped.read_text()
    shipped.write_text(shipped.read_text().replace("@HEAD_IP:6380/", f"@HEAD_IP:{redis_port}/"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), PATH=f"{BIN}:{env['PATH']}", RAY_ADDRESS=f"127.0.0.1:{gcs}",
               RAY_USAGE_STATS_ENABLED="0")
    made = _run("ray get-auth-token --generate", env)  # what the README asks before `ray up`
    assert made.returncode == 0 and (home / ".ray" / "auth_token").is_file(), made.stderr[-2000:]
    token = (home / ".ray" / "auth_token").read_text().strip()
    try:
        t0 = time.monotonic()
        for command in local_head_commands(cfg["head_start_ray_commands"], gcs=gcs, redis_port=redis_port,
                                           temp_dir=temp_dir):
            done = _run(command, env)
            assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-3000:])
        started = time.monotonic() - t0
        assert "memory system running in namespace 'erlmcp'" in done.stdout
        run_cfg = (home / "erlmcp.run.toml").read_text()
        assert "HEAD_IP" not in run_cfg and f":{token}@" in run_cfg  # the durable tier's URL, filled in

        # a user's driver on the cluster, in its own process: plain ray.init(address="auto") presents
        # the token only with RAY_AUTH_MODE=token, which cluster.yaml's setup puts in ~/.bashrc
        # (the erlmcp-ray commands here run without it: they set it when they find a token)
        bashrc = [c for c in cfg["setup_commands"] if ".bashrc" in c]
        assert bashrc and "RAY_AUTH_MODE=token" in bashrc[0]
        client = subprocess.run([sys.executable, "-c", CLIENT], env={**env, "RAY_AUTH_MODE": "token"},
                                capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path)
        assert client.returncode == 0, client.stderr[-3000:]
        out = json.loads(client.stdout.strip().splitlines()[-1])
        assert out["values"] == [{"i": i} for i in range(20)]

        status = _run("erlmcp-ray status --address auto --json", env)
        assert status.returncode == 0, status.stderr[-3000:]
        shown = json.loads(status.stdout[status.stdout.index("{"):])
        assert next(d for d in shown["domains"] if d["domain"] == "shared")["entries"] == 20
        assert len(shown["nodes"]) == 1

        # the durable tier is the head's Redis (password: the token): the checkpoint is there
        r = redis.Redis(port=redis_port, password=token)
        assert any(out["checkpoint"].encode() in key for key in r.keys("erlmcp:erlmcp*")), r.keys("*")[:20]

        stopped = _run("erlmcp-ray stop --address auto --purge", env)
        assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stderr[-3000:]
        again = _run("erlmcp-ray status --address auto", env)
        assert again.returncode == 3 and "Traceback" not in again.stderr
        with capsys.disabled():
            print(f"\n[cluster.yaml head commands here: Ray head + Redis + memory system ready in {started:.1f} s]")
    finally:
        _stop_head(temp_dir)
        try:
            redis.Redis(port=redis_port, password=token).shutdown(nosave=True)
        except redis.RedisError:
            pass
        shutil.rmtree(temp_dir, ignore_errors=True)
