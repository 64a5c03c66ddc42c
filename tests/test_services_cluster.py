"""``tools/services up|status|env|down cluster``: a local 3-master, 3-replica Redis Cluster.

Run on ports of its own and a services folder of its own, so it never touches the
cluster (or the single Redis) the rest of the suite uses.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ROOT / "tools" / "services"


def free_base(n: int = 6) -> int:
    """A first port with ``n`` free ports after it, and their cluster bus ports (+10000)."""
    for base in range(18201, 19000, 10):
        ports = [*range(base, base + n), *range(base + 10000, base + 10000 + n)]
        if all(_free(p) for p in ports):
            return base
    raise RuntimeError("no free port range for a test cluster")


def _free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = dict(os.environ, KVFAST_SERVICES_DIR=str(tmp_path / "svc"),
               KVFAST_CLUSTER_PORT=str(free_base()))
    try:
        yield env
    finally:
        subprocess.run([str(SERVICES), "down", "cluster"], env=env, capture_output=True)


def services(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SERVICES), *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_up_cluster_forms_three_masters_with_a_replica_each(env: dict[str, str]) -> None:
    base = int(env["KVFAST_CLUSTER_PORT"])
    assert services(env, "status", "cluster").returncode == 3
    up = services(env, "up", "cluster")
    assert up.returncode == 0, up.stdout + up.stderr
    assert "3 masters, 3 replicas" in up.stdout
    assert services(env, "status", "cluster").returncode == 0
    node = redis.Redis(port=base)
    try:
        info = node.execute_command("CLUSTER", "INFO").decode()
        assert "cluster_state:ok" in info and "cluster_size:3" in info
        roles = [line.split()[2] for line in
                 node.execute_command("CLUSTER", "NODES").decode().splitlines()]
        assert sorted("slave" in r for r in roles) == [False] * 3 + [True] * 3
        assert int(node.config_get("cluster-node-timeout")["cluster-node-timeout"]) <= 5000
    finally:
        node.close()
    # up again is a no-op on a running cluster
    again = services(env, "up", "cluster")
    assert again.returncode == 0 and "up on" in again.stdout
    # A replica killed with -9 (as a failover test leaves its old master): `up` starts
    # it again and returns only once it is in sync, so a failover test can start.
    node = redis.Redis(port=base)
    try:
        replica_port = next(int(line.split()[1].split(":")[1].split("@")[0]) for line in
                            node.execute_command("CLUSTER", "NODES").decode().splitlines()
                            if "slave" in line.split()[2])
    finally:
        node.close()
    replica = redis.Redis(port=replica_port)
    try:
        os.kill(int(replica.info("server")["process_id"]), signal.SIGKILL)
        assert services(env, "status", "cluster").returncode == 3
        again = services(env, "up", "cluster")
        assert again.returncode == 0, again.stdout + again.stderr
        info = replica.info("replication")
        assert info["role"] == "slave" and info["master_link_status"] == "up", info
        assert info["master_sync_in_progress"] == 0
    finally:
        replica.close()
    exports = services(env, "env", "cluster").stdout
    assert f"export KVFAST_REDIS_URL=redis://127.0.0.1:{base}/0" in exports
    assert "KVFAST_PG_DSN=" in exports
    down = services(env, "down", "cluster")
    assert down.returncode == 0 and "stopped" in down.stdout
    assert services(env, "status", "cluster").returncode == 3
    assert not (Path(env["KVFAST_SERVICES_DIR"]) / "cluster").exists()


def test_a_bad_cluster_port_is_a_clear_error(env: dict[str, str]) -> None:
    env["KVFAST_CLUSTER_PORT"] = "seventeen"
    out = services(env, "up", "cluster")
    assert out.returncode == 1
    assert "KVFAST_CLUSTER_PORT='seventeen' is not a port number" in out.stderr
    assert "Traceback" not in out.stderr
