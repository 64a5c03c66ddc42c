"""kvfast.loadgen: the plan is a function of its seed, and a load's journal is its truth.

The last tests write a load through the sync and the async repository and
check that replaying the journal ``Produced`` kept gives exactly what Redis holds.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

from drainhelpers import MIX
from drainmodels import LOADS, MODELS

import kvfast
import kvfast.aio
from kvfast import loadgen


def _plan(gen: loadgen.LoadGenerator, n: int) -> list[tuple[str, type, str, bool]]:
    return [(op.kind, op.model, repr(op.payload), op.single) for op in
            (gen.next_op() for _ in range(n))]


def test_the_same_seed_makes_the_same_ops_and_another_seed_others() -> None:
    def gen(seed: int) -> loadgen.LoadGenerator:
        return loadgen.LoadGenerator(LOADS, mix=MIX, seed=seed, keys=50)

    assert _plan(gen(1), 200) == _plan(gen(1), 200)
    assert _plan(gen(1), 200) != _plan(gen(2), 200)


def test_the_mix_shapes_the_ops() -> None:
    gen = loadgen.LoadGenerator(LOADS, mix=MIX, seed=3, keys=50)
    ops = [gen.next_op() for _ in range(3000)]
    kinds = Counter(op.kind for op in ops)
    assert 0.30 < kinds["create"] / len(ops) < 0.46
    assert 0.34 < kinds["update"] / len(ops) < 0.50
    assert {len(op.payload) for op in ops} == set(MIX.sizes)
    assert all(len(op.payload) == 1 for op in ops if op.single)
    updates = [changes for op in ops if op.kind == "update" for _, changes in op.payload]
    assert any(len(c) < len(LOADS[0].change(gen.rng)) for c in updates)  # partial updates
    rides = sum(op.model is LOADS[0].model for op in ops) / len(ops)
    assert 0.52 < rides < 0.68  # weight 0.6


def test_an_owned_space_updates_and_deletes_only_keys_it_created() -> None:
    gen = loadgen.LoadGenerator(LOADS, mix=loadgen.Mix(create=0.3, update=0.4, delete=0.3,
                                                       sizes=(1, 4, 9)), seed=4, first=100)
    live: set[Any] = set()
    for _ in range(2000):
        op = gen.next_op(limit=5)
        assert len(op.payload) <= 5
        if op.kind == "create":
            keys = [getattr(o, kvfast.model_info(op.model).key) for o in op.payload]
            assert not live & set(keys), "an owned create reuses no key"
            live |= set(keys)
        elif op.kind == "update":
            assert {k for k, _ in op.payload} <= live
        else:
            assert set(op.payload) <= live
            live -= set(op.payload)


def _truth(journal: list[loadgen.Op]) -> dict[type, dict[Any, Any]]:
    """Each key's object after replaying the journal in order (None: deleted)."""
    state: dict[type, dict[Any, Any]] = {m: {} for m in MODELS}
    for op in journal:
        objs = state[op.model]
        key_name = kvfast.model_info(op.model).key
        if op.kind == "create":
            for obj in op.payload:
                objs[getattr(obj, key_name)] = obj
        elif op.kind == "update":
            for key, changes in op.payload:
                if objs.get(key) is not None:  # a missing key is NotFound, nothing queued
                    objs[key] = dataclasses.replace(objs[key], **changes)
        else:
            for key in op.payload:
                objs[key] = None
    return state


def _redis_only(settings: kvfast.Settings) -> kvfast.Settings:
    return dataclasses.replace(settings, pg_dsn=None)


def _check_against_redis(settings: kvfast.Settings, produced: loadgen.Produced) -> None:
    assert produced.journal is not None
    truth = _truth(produced.journal)
    with kvfast.Client(settings) as client:
        for model, expected in truth.items():
            keys = sorted(expected, key=repr)
            got = kvfast.Repository(model, client=client).get_many(keys)
            assert dict(zip(keys, got, strict=True)) == expected, model.__name__
    assert produced.entries == produced.creates + produced.updates + produced.deletes
    assert produced.ops == len(produced.journal)


def test_a_sync_load_s_journal_replays_to_what_redis_holds(settings: kvfast.Settings) -> None:
    settings = _redis_only(settings)
    gen = loadgen.LoadGenerator(LOADS, mix=MIX, seed=5, keys=40)
    with kvfast.Client(settings) as client:
        produced = loadgen.produce(gen, loadgen.repositories(client, MODELS), None, ops=400,
                                   produced=loadgen.Produced(journal=[]))
    assert produced.not_found > 0, "a shared space of 40 keys meets deleted keys"
    _check_against_redis(settings, produced)


def test_an_async_load_s_journal_replays_to_what_redis_holds(settings: kvfast.Settings) -> None:
    settings = _redis_only(settings)
    gen = loadgen.LoadGenerator(LOADS, mix=MIX, seed=6, keys=40)
    produced = loadgen.Produced(journal=[])

    async def go() -> None:
        repos = {m: await kvfast.aio.AsyncRepository.open(m, settings) for m in MODELS}
        try:
            for _ in range(400):
                op = gen.next_op()
                await loadgen.apply_async(op, repos[op.model], produced)
        finally:
            for repo in repos.values():
                await repo.close()

    kvfast.aio.run(go())
    _check_against_redis(settings, produced)
