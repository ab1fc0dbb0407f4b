"""SyncBatchNorm across 3 gloo processes equals single-process BN on the concatenated batch.

One spawn runs every case (spawning is the slow part); the parent recomputes each case with
``bnlab.BatchNorm`` on the whole batch and compares: outputs and input gradients rank by
rank, weight/bias gradients as the sum of the ranks' local ones (what DDP's reduction
combines), running statistics on every rank.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from unittest import mock

import pytest
import torch
import torch.distributed as dist
from dist_harness import run_ranks

import bnlab.norm.sync as sync_module
from bnlab.norm import BatchNorm, SyncBatchNorm

WORLD = 3
TOL = {"atol": 1e-6, "rtol": 1e-6}


@dataclass(frozen=True)
class Case:
    name: str
    sizes: tuple[int, ...]  # per-rank batch sizes, one per rank of the group
    tail: tuple[int, ...]  # input shape after (N, C)
    channels: int = 3
    steps: int = 2
    kwargs: dict = field(default_factory=dict)
    pair: bool = False  # synchronize over ranks {0, 1} only (rank 2 sits it out)


CASES = [
    Case("even_4d", (2, 2, 2), (3, 4)),
    Case("uneven_3d", (5, 1, 3), (4,), kwargs={"momentum": None}),
    Case("empty_rank_2d", (4, 0, 3), (), channels=5, kwargs={"affine": False}),
    Case("empty_rank_5d_no_stats", (0, 2, 1), (2, 2, 2), kwargs={"track_running_stats": False}),
    Case("all_empty", (0, 0, 0), (3,), steps=1),
    Case("pair_group", (3, 2), (2, 2), pair=True),
    Case("shifted_mean", (6, 7, 5), (), kwargs={"eps": 1e-3}),
]


def case_data(case: Case, step: int):
    """The step's global input and output gradient, and the layer's initial weight/bias."""
    g = torch.Generator().manual_seed(1000 * step + len(case.name))
    shape = (sum(case.sizes), case.channels, *case.tail)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 2
    if case.name == "shifted_mean":
        x = x * 1e-3 + 1e4  # |mean| >> std: a cancelling variance formula would fail here
    dy = torch.randn(shape, generator=g, dtype=torch.float64)
    w = torch.rand(case.channels, generator=g, dtype=torch.float64) + 0.5
    b = torch.randn(case.channels, generator=g, dtype=torch.float64)
    return x, dy, w, b


def _init(layer, case):
    _, _, w, b = case_data(case, 0)
    if layer.weight is not None:
        with torch.no_grad():
            layer.weight.copy_(w)
            layer.bias.copy_(b)


def run_steps(layer, case, rows: slice):
    """Train-mode steps on this process's ``rows`` of each batch. Returns what to compare."""
    record = {"y": [], "dx": [], "dw": [], "db": []}
    for step in range(case.steps):
        x, dy, _, _ = case_data(case, step)
        x = x[rows].clone().requires_grad_()
        layer.zero_grad()
        y = layer(x)
        y.backward(dy[rows])
        record["y"].append(y.detach())
        record["dx"].append(x.grad)
        if layer.weight is not None:
            record["dw"].append(layer.weight.grad.clone())
            record["db"].append(layer.bias.grad.clone())
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        value = getattr(layer, name)
        record[name] = None if value is None else value.clone()
    return record


def syncbn_worker(rank: int, world: int) -> dict:
    # new_group is collective: every rank creates every group, members or not.
    pair = dist.new_group([0, 1])
    alone = [dist.new_group([r]) for r in range(world)][rank]
    results: dict = {}
    for case in CASES:
        if case.pair and rank not in (0, 1):
            continue
        layer = SyncBatchNorm(case.channels, process_group=pair if case.pair else None,
                              dtype=torch.float64, **case.kwargs)
        _init(layer, case)
        start = sum(case.sizes[:rank])
        results[case.name] = run_steps(layer, case, slice(start, start + case.sizes[rank]))
    results["one_value"] = _one_value_per_channel(rank)
    results["odd_strides"] = _odd_strides(rank)
    results["bad_args"] = _bad_arguments(rank)
    results["disagreeing_channels"] = _disagreeing_channels(rank)
    results.update(_local_paths(rank, alone))
    return results


def odd_strided_batch(rank: int) -> torch.Tensor:
    """Rank ``rank``'s (N, C, L) batch as the transpose of an (N, L, C) tensor."""
    gen = torch.Generator().manual_seed(100 + rank)
    return torch.randn(2 + rank, 5, 3, generator=gen, dtype=torch.float64).transpose(1, 2)


def _odd_strides(rank: int) -> dict:
    y = SyncBatchNorm(3, dtype=torch.float64)(odd_strided_batch(rank))
    return {"y": y.detach(), "contiguous": y.is_contiguous()}


def _disagreeing_channels(rank: int) -> str:
    """Rank 1 built its layer with 4 channels, the others with 3 (each input matching)."""
    channels = 4 if rank == 1 else 3
    layer = SyncBatchNorm(channels, affine=False, dtype=torch.float64)
    try:
        layer(torch.randn(2, channels, dtype=torch.float64))
    except RuntimeError as err:
        return f"{type(err).__name__}: {err} | running_mean {layer.running_mean.tolist()}"
    return "no error"


def _bad_arguments(rank: int) -> list[str]:
    """Each refused on every rank before any communication (or the ranks would block)."""
    x = torch.randn(4, 3, 2, dtype=torch.float64)
    ones, zeros = torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    calls = [
        lambda: SyncBatchNorm(3)(x),  # float64 input, float32 layer
        lambda: SyncBatchNorm(3, dtype=torch.float64)(x[:, :2]),
        lambda: sync_module.sync_batch_norm(x, None, None, torch.ones(4, dtype=torch.float64),
                                            None, 0.1, 1e-5),
        lambda: sync_module.sync_batch_norm(x, zeros, None, ones, zeros, 0.1, 1e-5),
    ]
    caught = []
    for call in calls:
        try:
            call()
            caught.append("no error")
        except (ValueError, RuntimeError) as err:
            caught.append(f"{type(err).__name__}: {err}")
    return caught


def _one_value_per_channel(rank: int) -> str:
    """Global count 1 (rank 0 has one row, the others none) must fail on every rank."""
    layer = SyncBatchNorm(2, dtype=torch.float64)
    x = torch.ones(1 if rank == 0 else 0, 2, dtype=torch.float64)
    try:
        layer(x)
    except ValueError as err:
        return f"{err} | counted {int(layer.num_batches_tracked)}"
    return "no error"


def _local_paths(rank: int, alone) -> dict:
    """Eval mode and a group of one must not synchronize: run on rank 0 alone with the
    collective path disabled (a collective here would raise or block until the timeout)."""
    if rank != 0:
        return {}
    x = torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    with mock.patch.object(sync_module, "sync_batch_norm", side_effect=AssertionError("synced")):
        solo = SyncBatchNorm(3, process_group=alone, dtype=torch.float64)
        solo_y = solo(x)
        trained = SyncBatchNorm(3, dtype=torch.float64)
        with torch.no_grad():
            trained.running_mean.fill_(0.5)
            trained.running_var.fill_(2.0)
        eval_y = trained.eval()(x)
    return {"solo_y": solo_y.detach(), "solo_mean": solo.running_mean.clone(),
            "eval_y": eval_y.detach()}


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return run_ranks(syncbn_worker, WORLD, tmp_path_factory.mktemp("syncbn"), timeout_s=90)


def reference(case: Case) -> dict:
    layer = BatchNorm(case.channels, 2 + len(case.tail), dtype=torch.float64, **case.kwargs)
    _init(layer, case)
    return run_steps(layer, case, slice(None))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_sync_equals_single_process_on_the_concatenated_batch(ranks, case):
    members = range(len(case.sizes))
    expected = reference(case)
    for step in range(case.steps):
        for key in ("y", "dx"):
            got = torch.cat([ranks[r][case.name][key][step] for r in members])
            torch.testing.assert_close(got, expected[key][step], **TOL)
        if expected["dw"]:
            for key in ("dw", "db"):
                got = sum(ranks[r][case.name][key][step] for r in members)
                torch.testing.assert_close(got, expected[key][step], **TOL)
    for r in members:
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            got, want = ranks[r][case.name][name], expected[name]
            if want is None:
                assert got is None
            else:
                torch.testing.assert_close(got, want, **TOL)


def test_empty_rank_gets_an_empty_output_and_zero_parameter_grads(ranks):
    record = ranks[1]["empty_rank_5d_no_stats"]
    assert ranks[0]["empty_rank_5d_no_stats"]["y"][0].shape == (0, 3, 2, 2, 2)
    assert ranks[0]["empty_rank_5d_no_stats"]["dx"][0].shape == (0, 3, 2, 2, 2)
    assert record["y"][0].shape == (2, 3, 2, 2, 2)
    assert torch.count_nonzero(ranks[0]["empty_rank_5d_no_stats"]["dw"][0]) == 0


def test_running_stats_move_only_with_data(ranks):
    fresh = ranks[0]["all_empty"]
    assert torch.equal(fresh["running_mean"], torch.zeros(3, dtype=torch.float64))
    assert torch.equal(fresh["running_var"], torch.ones(3, dtype=torch.float64))
    assert int(fresh["num_batches_tracked"]) == 1  # as torch: the counter counts calls


def test_one_value_per_channel_fails_on_every_rank(ranks):
    for r in range(WORLD):
        assert "Expected more than 1 value per channel when training" in ranks[r]["one_value"]
        assert ranks[r]["one_value"].endswith("| counted 0")  # a rejected batch is not counted


def test_eval_and_group_of_one_take_the_local_path(ranks):
    x = torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    local = BatchNorm(3, 3, dtype=torch.float64)
    torch.testing.assert_close(ranks[0]["solo_y"], local(x), rtol=0, atol=0)
    torch.testing.assert_close(ranks[0]["solo_mean"], local.running_mean, rtol=0, atol=0)
    trained = BatchNorm(3, 3, dtype=torch.float64)
    with torch.no_grad():
        trained.running_mean.fill_(0.5)
        trained.running_var.fill_(2.0)
    torch.testing.assert_close(ranks[0]["eval_y"], trained.eval()(x), rtol=0, atol=0)


def test_odd_strided_input_gives_a_contiguous_output_equal_to_one_process(ranks):
    # torch's layers return it contiguous: a .view of it must work on every rank
    expected = BatchNorm(3, 3, dtype=torch.float64)(
        torch.cat([odd_strided_batch(r) for r in range(WORLD)]))
    assert all(ranks[r]["odd_strides"]["contiguous"] for r in range(WORLD))
    got = torch.cat([ranks[r]["odd_strides"]["y"] for r in range(WORLD)])
    torch.testing.assert_close(got, expected, **TOL)


def test_bad_arguments_are_refused_on_every_rank_as_locally(ranks):
    for r in range(WORLD):
        mixed, channels, weight, pairing = ranks[r]["bad_args"]
        assert mixed.startswith("MixedDtypeError: mixed dtypes: torch.float64 input")
        assert channels.startswith("BatchNormArgumentError: SyncBatchNorm(3) got input with 2")
        assert weight.startswith("BatchNormArgumentError: channel mismatch")
        assert "weight has 4" in weight
        assert pairing.startswith("ValueError: running_mean and running_var must either both")


def test_processes_that_disagree_on_the_channel_count_all_get_one_clear_error(ranks):
    # (unchecked, gloo's all_gather aborted one process and gave the others wrong numbers)
    for r in range(WORLD):
        result = ranks[r]["disagreeing_channels"]
        assert result.startswith("BatchNormArgumentError: SyncBatchNorm: the processes "
                                 "disagree on the channel count ([3, 4, 3], by rank")
        assert result.endswith("running_mean [0.0, 0.0, 0.0]" if r != 1
                               else "running_mean [0.0, 0.0, 0.0, 0.0]")  # untouched
