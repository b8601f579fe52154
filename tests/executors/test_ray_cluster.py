"""A three-node Ray cluster on one machine (ray.cluster_utils.Cluster), every node and service on
127.0.0.1: a node removed while shards are being written loses no shard and duplicates none."""

from __future__ import annotations

import tarfile
import threading
import time

import pytest

from capmill.config import parse_config
from capmill.run import run
from capmill.testing import write_webdataset
from tests.conftest import make_config, snapshot

pytestmark = [pytest.mark.timeout(400), pytest.mark.slow]
RUN_JSON = frozenset({"_run.json"})


@pytest.fixture
def three_nodes():
    pytest.importorskip("ray", reason="needs ray: pip install 'capmill[ray]'")
    import ray
    from ray.cluster_utils import Cluster

    from capmill.executors.ray import _loopback_node

    loopback = {"node_ip_address": "127.0.0.1", "include_dashboard": False,
                "object_store_memory": 80 * 1024 * 1024}
    with _loopback_node():
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, **loopback})
        workers = [cluster.add_node(num_cpus=2, **loopback) for _ in range(2)]
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    try:
        cluster.wait_for_nodes()
        yield cluster, workers
    finally:
        ray.shutdown()
        cluster.shutdown()


def owner_nodes() -> dict[str, int]:
    """node id → live shard owners on it."""
    import ray

    counts: dict[str, int] = {}
    for actor in ray._private.state.actors().values():
        if actor.get("ActorClassName", "").endswith("ShardOwner") and actor.get("State") == "ALIVE":
            node = actor["Address"]["NodeID"]
            counts[node] = counts.get(node, 0) + 1
    return counts


def test_a_node_removed_mid_run_loses_no_shard_and_duplicates_none(tmp_path, three_nodes):
    import ray

    cluster, workers = three_nodes
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}  # loopback only
    assert len([n for n in ray.nodes() if n["Alive"]]) == 3
    write_webdataset(tmp_path / "data", shards=8, per_shard=4, photos=False)
    fast = [{"type": "caption", "backend": {"type": "fake"}, "formats": ["ssc"]}]
    assert run(parse_config(make_config(tmp_path / "data", tmp_path / "local", stages=fast)), progress=False).ok

    slow = [{"type": "caption", "backend": {"type": "fake", "delay_s": 0.15}, "formats": ["ssc"]}]
    cfg = make_config(tmp_path / "data", tmp_path / "ray", stages=slow)
    # Three owners of one CPU each: the two CPUs left after a worker node goes hold the restarted ones.
    cfg["executor"] = {"type": "ray", "batch_size": 1, "shards_in_flight": 3}
    result: dict = {}

    def go():
        try:
            result["summary"] = run(parse_config(cfg), progress=False)
        except BaseException as e:  # reported below
            result["error"] = e

    thread = threading.Thread(target=go)
    thread.start()
    stats = tmp_path / "ray" / "_stats"
    deadline = time.time() + 180
    victim = None
    while time.time() < deadline and thread.is_alive():
        busy = owner_nodes()
        candidates = [w for w in workers if busy.get(w.node_id)]
        if candidates and stats.exists() and list(stats.glob("*.json")):
            victim = candidates[0]
            break
        time.sleep(0.1)
    assert victim is not None, "no shard owner ran on a worker node while shards were in progress"
    cluster.remove_node(victim, allow_graceful=False)  # its owners die mid-shard
    thread.join(timeout=240)
    assert "error" not in result, result.get("error")
    summary = result["summary"]
    assert summary.ok, summary.render()
    assert summary.shards_done == 8 and summary.samples == 32  # each shard counted once
    assert snapshot(tmp_path / "ray", RUN_JSON) == snapshot(tmp_path / "local", RUN_JSON)
    for tar in (tmp_path / "ray").glob("*.tar"):
        with tarfile.open(tar) as t:
            names = t.getnames()
        assert len(names) == len(set(names)) == 4 * 3
