"""Partition hash tags spread evenly over Redis Cluster's slots (keys.partition_tags).

``{ns:p}`` alone put 64 partitions on correlated slots: the busiest of 3, 6 and
10 masters had 1.08x, 1.31x and 1.41x its fair share.  The tags now sit one per
equal slot range, so the busiest master has at most ceil(N/M) of N partitions.
"""

from __future__ import annotations

import math

import pytest
from drainkeys import tag
from redis.cluster import RedisCluster
from redis.crc import key_slot

import kvfast
from kvfast.keys import Keys


def busiest_share(slots: list[int], masters: int) -> float:
    """The busiest master's partitions over its fair share, masters on equal slot ranges
    (what ``redis-cli --cluster create`` gives)."""
    counts = [0] * masters
    for s in slots:
        counts[s * masters // 16384] += 1
    return max(counts) / (len(slots) / masters)


@pytest.mark.parametrize("n", [1, 8, 64, 256, 1024])
def test_each_tag_is_in_its_own_slot_range(n: int) -> None:
    tags = Keys("kvfast", n).tags
    slots = [key_slot(t.encode()) for t in tags]
    assert all(p * 16384 // n <= s < (p + 1) * 16384 // n for p, s in enumerate(slots))
    settings = kvfast.Settings(partitions=n)
    assert tags == [tag(settings, p) for p in range(n)]  # the documented rule


@pytest.mark.parametrize("masters", [3, 6, 10])
def test_the_busiest_master_has_at_most_its_rounded_up_share(masters: int) -> None:
    slots = [key_slot(t.encode()) for t in Keys("kvfast", 64).tags]
    bound = math.ceil(64 / masters) / (64 / masters)
    assert busiest_share(slots, masters) <= bound  # 1.03x on 3 and 6 masters, 1.09x on 10
    old = [key_slot(f"kvfast:{p}".encode()) for p in range(64)]
    assert busiest_share(old, masters) > busiest_share(slots, masters)


def test_many_partitions_keep_the_plain_tag() -> None:
    assert Keys("ns", 2048).tags[5] == "{ns:5}"


def test_on_the_test_cluster_each_master_serves_an_even_share(
        cluster_settings: kvfast.Settings, rc: RedisCluster) -> None:
    with kvfast.Client(kvfast.Settings(redis_url=cluster_settings.redis_url,
                                       partitions=64)) as client:
        assert client.topology is not None
        per_master: dict[str, int] = {}
        for slot in client.topology.partition_slots:
            node = rc.nodes_manager.get_node_from_slot(slot)
            per_master[node.name] = per_master.get(node.name, 0) + 1
    assert len(per_master) == 3 and max(per_master.values()) <= 22  # 64/3 = 21.3
