"""Run a tiny scenario on a two-node local Ray cluster; print the metrics and actors' nodes as JSON.

Used by tests/test_ray_cluster.py in a fresh process (a test session's own Ray cannot
host a second cluster).
"""

from __future__ import annotations

import json
import sys

import ray
from ray.cluster_utils import Cluster

import fedsim
from fedsim.config import from_dict
from fedsim.engine.executors.ray import RayExecutor


def main() -> None:
    raw = json.loads(sys.argv[1])
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)  # fedsim joins the already connected cluster and leaves it running
    nodes: list[str] = []
    original = RayExecutor.shutdown

    def record(self: RayExecutor) -> None:
        nodes.extend(self.actor_nodes)
        original(self)

    RayExecutor.shutdown = record  # type: ignore[method-assign]
    try:
        raw["executor"] = {"name": "ray"}
        raw["ray"] = {"address": cluster.address, "num_actors": 2, "cpus_per_actor": 1.0}
        res = fedsim.run(from_dict(raw), write=False)
        cluster_nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
        print(json.dumps({"history": res.history, "actor_nodes": nodes, "cluster_nodes": cluster_nodes}))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
