"""Issue 15 item 1: the dataset mixing strategies, the mixed sampler (exact resume, ranks) and head naming."""

from __future__ import annotations

import json
from collections import Counter
from itertools import islice
from types import SimpleNamespace

import pytest

from sak.manifests.errors import ConfigError
from sak.student.data.mixed import assign_heads, head_kinds
from sak.student.data.sampler import (
    BlockShuffleSampler,
    MixedSampler,
    make_blocks,
    mix_counts,
    mix_probabilities,
    parse_mix,
    parse_position,
)
from sak.student.runs.config import TrainConfig


def test_mix_probabilities_are_proportional_balanced_or_tempered() -> None:
    assert mix_probabilities("proportional", [30, 10]) == [0.75, 0.25]
    assert mix_probabilities("balanced", [30, 10]) == [0.5, 0.5]
    assert mix_probabilities("temperature:2", [9, 1]) == [0.75, 0.25]  # sqrt: 3 and 1
    assert mix_probabilities("temperature:1", [30, 10]) == [0.75, 0.25]
    assert mix_counts([0.75, 0.25], 5) == [4, 1]  # 3.75 / 1.25: the larger remainder gets the slot
    assert mix_counts([1 / 3, 1 / 3, 1 / 3], 4) == [2, 1, 1]  # ties: the first dataset
    assert parse_mix("temperature:0.5") == 0.5 and parse_mix("balanced") is None
    for bad in ("temperature", "temperature:0", "temperature:-1", "temperature:x", "uniform", "temperature:inf"):
        with pytest.raises(ConfigError, match="--mix must be proportional, balanced or temperature:T"):
            parse_mix(bad)
    with pytest.raises(ConfigError, match="--mix must be"):
        TrainConfig(cache="c", mix="uniform")


def _sampler(n: int, offset_seed: int, *, rank: int = 0, world: int = 1) -> BlockShuffleSampler:
    blocks = make_blocks(["s0"] * n, list(range(n)), 3)
    return BlockShuffleSampler(blocks, seed=offset_seed, rank=rank, world=world, window=2)


def _mixed(mix: str, sizes=(12, 6), *, rank: int = 0, world: int = 1) -> MixedSampler:
    samplers = [_sampler(n, 10 + k, rank=rank, world=world) for k, n in enumerate(sizes)]
    offsets = [0, sizes[0]]
    return MixedSampler(samplers, offsets, mix_probabilities(mix, list(sizes)), seed=3, rank=rank)


def test_proportional_epoch_serves_every_item_of_every_dataset_once() -> None:
    s = _mixed("proportional")
    assert s.length == 18 and s.counts == [12, 6]
    draws = list(islice(s.draws(), 36))
    for epoch in (0, 1):
        items = [d.item for d in draws if d.epoch == epoch]
        assert sorted(items) == list(range(18))  # dataset 0 items 0..11, dataset 1 items 12..17
    assert draws[17].after[:2] == (1, 0) and draws[17].after[2] == ((1, 0), (1, 0))  # both datasets wrapped
    assert [d.item for d in draws[:18]] != sorted(d.item for d in draws[:18])  # datasets interleaved
    assert s.schedule(0) != s.schedule(1)


def test_balanced_mix_repeats_the_small_dataset_and_keeps_its_own_epochs() -> None:
    s = _mixed("balanced")
    assert s.counts == [9, 9]
    draws = list(islice(s.draws(), 36))
    per_epoch = Counter((d.epoch, d.item >= 12) for d in draws)
    assert per_epoch == {(0, False): 9, (0, True): 9, (1, False): 9, (1, True): 9}
    small = [d for d in draws if d.item >= 12]
    assert [d.flip_epoch for d in small] == [0] * 6 + [1] * 6 + [2] * 6  # the small set's own epochs advance
    assert draws[-1].after == (2, 0, ((1, 6), (3, 0)))


@pytest.mark.parametrize("mix", ["proportional", "balanced", "temperature:3"])
def test_any_mixed_position_resumes_the_same_stream_after_a_json_round_trip(mix) -> None:
    full = list(islice(_mixed(mix).draws(), 60))
    for j in (0, 4, 17, 18, 33):
        saved = parse_position(json.loads(json.dumps([list(map(list, v)) if isinstance(v, tuple) else v
                                                      for v in full[j].after])))
        assert saved == full[j].after
        again = list(islice(_mixed(mix).draws(saved), 60 - j - 1))  # a fresh sampler, as after a restart
        assert again == full[j + 1:]


def test_ranks_draw_disjoint_shares_of_equal_length() -> None:
    ranks = [_mixed("proportional", rank=r, world=2) for r in (0, 1)]
    assert ranks[0].length == ranks[1].length
    epochs = [[d.item for d in islice(s.draws(), s.length)] for s in ranks]
    assert not set(epochs[0]) & set(epochs[1])
    assert ranks[0].schedule(0) != ranks[1].schedule(0)


def test_a_single_dataset_position_cannot_resume_a_mixed_run() -> None:
    assert parse_position([3, 5]) == (3, 5)
    with pytest.raises(ConfigError, match="single-dataset position; this run mixes 2 datasets"):
        next(_mixed("proportional").draws((3, 5)))
    with pytest.raises(ConfigError, match="holds 3 dataset positions, this run mixes 2"):
        next(_mixed("proportional").draws((0, 0, ((0, 0),) * 3)))


def test_heads_are_shared_within_a_format_and_named_after_the_format_across() -> None:
    ds = [SimpleNamespace(name="nyud", format="nyud", tasks=("semseg", "depth")),
          SimpleNamespace(name="pascal", format="pascal", tasks=("semseg", "normals")),
          SimpleNamespace(name="nyud2", format="nyud", tasks=("depth",)),
          SimpleNamespace(name="plain", format="folder", tasks=())]
    heads = assign_heads(ds)
    assert heads == {"nyud": {"semseg": "semseg", "depth": "depth"},
                     "pascal": {"semseg": "semseg_pascal", "normals": "normals"},
                     "nyud2": {"depth": "depth"}, "plain": {}}
    assert head_kinds(heads) == {"semseg": "semseg", "depth": "depth", "semseg_pascal": "semseg", "normals": "normals"}


def test_old_data_records_name_one_dataset() -> None:
    old = TrainConfig.from_dict({"data": {"cache": "c", "dataset": "nyud"}})
    assert old.data.names == ("nyud",) and old.data.datasets == () and old.data.mix == "proportional"
    assert TrainConfig(cache="c").data.names == ()
    with pytest.raises(ConfigError, match="name a dataset twice"):
        TrainConfig(cache="c", datasets=("a", "a"))
