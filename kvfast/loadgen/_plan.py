"""What a load writes: models (``ModelLoad``), the mix (``Mix``), ops (``LoadGenerator``)."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import kvfast

__all__ = ["DEFAULT_MIX", "LoadGenerator", "Mix", "ModelLoad", "Op"]


# -- what to write ---------------------------------------------------------------------


@dataclass(frozen=True)
class ModelLoad:
    """One model of a load: its key of index ``i``, an object of index ``i``, a change."""

    model: type
    key: Callable[[int], Any]
    make: Callable[[int, random.Random], Any]
    change: Callable[[random.Random], dict[str, Any]]
    #: share of the calls that go to this model (relative to the other models)
    weight: float = 1.0

    @classmethod
    def of(cls, model: type, values: Callable[[random.Random], dict[str, Any]], *,
           key: Callable[[int], Any] = lambda i: i + 1, weight: float = 1.0) -> ModelLoad:
        """Objects ``model(key(i), **values(rng))``; changes drawn from ``values`` too."""
        info = kvfast.model_info(model)

        def make(i: int, rng: random.Random) -> Any:
            # key(i) is a tuple for a composite key: its parts in key_names order
            parts = info.key_parts(key(i))
            return model(**dict(zip(info.key_names, parts, strict=True)), **values(rng))

        return cls(model, key, make, values, weight)


@dataclass(frozen=True)
class Mix:
    """The operations of a load."""

    create: float = 0.6
    update: float = 0.3
    delete: float = 0.1
    #: records per call, one drawn per call
    sizes: tuple[int, ...] = (500,)
    #: share of one-record calls made as create()/update()/delete() (not the *_many form)
    single: float = 0.0
    #: updates change a random non-empty subset of the fields ``change`` returns
    partial: bool = False
    #: chance that an update item repeats the previous item's key (applied in order)
    repeat: float = 0.0

    def with_batch(self, batch: int) -> Mix:
        return dataclasses.replace(self, sizes=(batch,))


#: share of creates, updates, deletes in the records written (demo and benchmarks)
DEFAULT_MIX = Mix()


@dataclass
class Op:
    """One call: ``payload`` is objects (create), (key, changes) pairs (update) or keys."""

    kind: str
    model: type
    payload: list[Any]
    single: bool = False


class _Live:
    """Keys created and not deleted, with O(1) random pick and removal."""

    def __init__(self) -> None:
        self.keys: list[Any] = []

    def pick(self, rng: random.Random) -> Any:
        return self.keys[rng.randrange(len(self.keys))]

    def pop(self, rng: random.Random) -> Any:
        i = rng.randrange(len(self.keys))
        self.keys[i], self.keys[-1] = self.keys[-1], self.keys[i]
        return self.keys.pop()


class LoadGenerator:
    """Ops over ``loads`` from ``seed``: a shared key space (``keys``) or owned (``first``)."""

    def __init__(self, loads: Sequence[ModelLoad], *, mix: Mix = DEFAULT_MIX, seed: int = 0,
                 keys: int | None = None, first: int = 1) -> None:
        self.loads = list(loads)
        self.by_model = {ml.model: ml for ml in self.loads}
        self.mix = mix
        self.rng = random.Random(seed)
        self.keys = keys
        self._weights = [ml.weight for ml in self.loads]
        self._next = dict.fromkeys(self.by_model, first)
        self._live = {m: _Live() for m in self.by_model}

    def key(self, model: type) -> Any:
        """A key of ``model``: any of the shared space, or one this generator created."""
        if self.keys is not None:
            return self.by_model[model].key(self.rng.randrange(self.keys))
        return self._live[model].pick(self.rng)

    def make(self, model: type) -> Any:
        """An object of ``model`` on a key of the space (a fresh one when owned)."""
        ml = self.by_model[model]
        if self.keys is not None:
            return ml.make(self.rng.randrange(self.keys), self.rng)
        i = self._next[model]
        self._next[model] = i + 1
        obj = ml.make(i, self.rng)
        self._live[model].keys.append(ml.key(i))
        return obj

    def create(self, model: type, n: int) -> Op:
        return Op("create", model, [self.make(model) for _ in range(n)], self._single(n))

    def update(self, model: type, n: int) -> Op:
        ml, rng = self.by_model[model], self.rng
        items: list[tuple[Any, dict[str, Any]]] = []
        for _ in range(n):
            key = (items[-1][0] if items and rng.random() < self.mix.repeat
                   else self.key(model))
            changes = ml.change(rng)
            if self.mix.partial:
                names = rng.sample(sorted(changes), rng.randrange(1, len(changes) + 1))
                changes = {name: changes[name] for name in names}
            items.append((key, changes))
        return Op("update", model, items, self._single(n))

    def delete(self, model: type, n: int) -> Op:
        if self.keys is not None:
            doomed = [self.key(model) for _ in range(n)]
        else:
            doomed = [self._live[model].pop(self.rng) for _ in range(n)]
        return Op("delete", model, doomed, self._single(n))

    def next_op(self, limit: int | None = None) -> Op:
        """A random op of the mix, of at most ``limit`` records."""
        rng, mix = self.rng, self.mix
        model = (self.loads[0] if len(self.loads) == 1
                 else rng.choices(self.loads, self._weights)[0]).model
        n = rng.choice(mix.sizes)
        if limit is not None:
            n = max(1, min(n, limit))
        x = rng.random()
        if x < mix.create or (self.keys is None and len(self._live[model].keys) < n):
            return self.create(model, n)
        if x < mix.create + mix.update:
            return self.update(model, n)
        return self.delete(model, n)

    def _single(self, n: int) -> bool:
        return n == 1 and self.mix.single > 0 and self.rng.random() < self.mix.single
