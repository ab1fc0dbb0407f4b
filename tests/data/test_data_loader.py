"""TensorLoader: batch contents, epochs and seeds, sharding coverage, resize."""

from __future__ import annotations

import pytest
import torch

from bnlab.data import TensorLoader
from bnlab.data.loader import epoch_order


def loader(n: int, batch_size: int, **kwargs) -> TensorLoader:
    """Images whose single pixel holds the sample index (mod 256); labels = index."""
    images = (torch.arange(n) % 256).to(torch.uint8).view(n, 1, 1)
    return TensorLoader(images, torch.arange(n), batch_size, **kwargs)


def epoch_labels(data: TensorLoader) -> list[list[int]]:
    return [y.tolist() for _, y in data]


def test_batches_hold_scaled_images_and_int64_labels():
    images = torch.tensor([[[0, 255]], [[51, 102]], [[1, 2]]], dtype=torch.uint8)  # (3, 1, 2)
    data = TensorLoader(images, torch.tensor([7, 8, 9], dtype=torch.uint8), 2)
    (x1, y1), (x2, y2) = list(data)
    assert x1.dtype == torch.float32 and x1.shape == (2, 1, 1, 2) and y1.dtype == torch.int64
    assert torch.equal(x1.flatten(), torch.tensor([0.0, 1.0, 0.2, 0.4])) and y1.tolist() == [7, 8]
    assert x2.shape == (1, 1, 1, 2) and y2.tolist() == [9]


def test_len_counts_batches_as_in_the_notebook():
    assert (len(loader(60000, 64)), len(loader(10000, 64))) == (938, 157)
    assert len(loader(60000, 64, drop_last=True)) == 937
    assert [len(b) for b in epoch_labels(loader(10, 4))] == [4, 4, 2]
    assert [len(b) for b in epoch_labels(loader(10, 4, drop_last=True))] == [4, 4]


def test_no_shuffle_keeps_file_order_every_epoch():
    data = loader(7, 3)
    assert epoch_labels(data) == epoch_labels(data) == [[0, 1, 2], [3, 4, 5], [6]]


def test_each_epoch_is_a_fresh_permutation():
    data = loader(50, 8, shuffle=True, seed=1)
    first, second = sum(epoch_labels(data), []), sum(epoch_labels(data), [])
    assert sorted(first) == sorted(second) == list(range(50)) and first != second


def test_seed_makes_epochs_reproducible_and_set_epoch_replays_them():
    a, b = loader(50, 8, shuffle=True, seed=3), loader(50, 8, shuffle=True, seed=3)
    epochs_a = [epoch_labels(a) for _ in range(3)]
    assert [epoch_labels(b) for _ in range(3)] == epochs_a
    b.set_epoch(1)
    assert epoch_labels(b) == epochs_a[1] and b.epoch == 2
    assert epoch_labels(loader(50, 8, shuffle=True, seed=4)) != epochs_a[0]


def test_state_dict_resumes_an_unseeded_loader():
    a = loader(40, 8, shuffle=True)
    epoch_labels(a)
    state = a.state_dict()
    expected = epoch_labels(a)
    b = loader(40, 8, shuffle=True)
    b.load_state_dict(state)
    assert state["epoch"] == 1 and epoch_labels(b) == expected


def test_loader_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    state = torch.get_rng_state()
    data = loader(30, 4, shuffle=True)
    for _ in range(2):
        epoch_labels(data)
    assert torch.equal(torch.get_rng_state(), state)


def test_epoch_order_mixes_seed_and_epoch():
    assert not torch.equal(epoch_order(20, 1, 2, True), epoch_order(20, 2, 1, True))
    assert torch.equal(epoch_order(5, 1, 2, False), torch.arange(5))


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize(("n", "batch_size", "world_size"),
                         [(10, 3, 3), (60, 8, 4), (7, 2, 5), (3, 4, 5), (64, 4, 4), (1, 1, 2)])
def test_shards_cover_every_index_exactly_once(n, batch_size, world_size, shuffle):
    ranks = [loader(n, batch_size, shuffle=shuffle, seed=5, rank=r, world_size=world_size)
             for r in range(world_size)]
    per_rank = [sum(epoch_labels(data), []) for data in ranks]
    assert sorted(sum(per_rank, [])) == list(range(n))
    assert [len(p) for p in per_rank] == [data.num_samples for data in ranks]
    assert [len(epoch_labels(data)) for data in ranks] == [len(data) for data in ranks]
    assert max(map(len, per_rank)) - min(map(len, per_rank)) <= 1


def test_one_sharded_step_is_one_global_batch():
    """Ranks' step-k batches together are a single process's step-k batch of B*W samples."""
    single = epoch_labels(loader(45, 8, shuffle=True, seed=9))
    shards = [epoch_labels(loader(45, 4, shuffle=True, seed=9, rank=r, world_size=2))
              for r in range(2)]
    assert [a + b for a, b in zip(*shards, strict=True)] == single
    # 45 = 5 * 8 + 5: the last 5 are split 3 + 2
    assert [len(b) for b in shards[0]] == [4] * 5 + [3]
    assert [len(b) for b in shards[1]] == [4] * 5 + [2]


def test_sharded_drop_last_gives_equal_full_batches():
    ranks = [loader(45, 4, rank=r, world_size=2, drop_last=True) for r in range(2)]
    assert [len(d) for d in ranks] == [5, 5]
    assert all(len(b) == 4 for d in ranks for b in epoch_labels(d))


def test_tiny_remainder_leaves_some_ranks_without_a_last_batch():
    ranks = [loader(9, 4, rank=r, world_size=2) for r in range(2)]
    assert [epoch_labels(d) for d in ranks] == [[[0, 1, 2, 3], [8]], [[4, 5, 6, 7]]]
    assert [len(d) for d in ranks] == [2, 1]


def test_resize_is_bilinear_without_corner_alignment():
    row = torch.tensor([[0, 255], [0, 255]], dtype=torch.uint8)  # (2, 2): columns 0 and 1
    label = torch.zeros(1, dtype=torch.long)
    x, _ = next(iter(TensorLoader(row.unsqueeze(0), label, 1, resize=(2, 4))))
    assert x.shape == (1, 1, 2, 4)
    # output column c samples input x = (c + 0.5) / 2 - 0.5, clamped to [0, 1]
    assert torch.allclose(x[0, 0, 0], torch.tensor([0.0, 0.25, 0.75, 1.0]))
    gray = torch.full((1, 28, 28), 51, dtype=torch.uint8)
    x, _ = next(iter(TensorLoader(gray, label, 1, resize=7)))
    assert x.shape == (1, 1, 7, 7) and torch.allclose(x, torch.full_like(x, 0.2))


def test_data_lives_on_the_requested_device():
    data = loader(5, 2, device="cpu")
    assert data.images.device == torch.device("cpu") and data.images.shape == (5, 1, 1, 1)
    assert all(x.device == y.device == torch.device("cpu") for x, y in data)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_size": 0}, {"batch_size": True}, {"rank": 2, "world_size": 2},
        {"world_size": 0}, {"resize": 0}, {"resize": (1, 2, 3)},
        {"shuffle": True, "world_size": 2},  # sharded shuffling needs an explicit seed
    ],
)
def test_bad_arguments_are_rejected(kwargs):
    args = {"batch_size": 2} | kwargs
    with pytest.raises(ValueError):
        loader(4, **args)


def test_bad_tensors_are_rejected():
    with pytest.raises(ValueError, match="uint8"):
        TensorLoader(torch.zeros(4, 28, 28), torch.zeros(4, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="labels"):
        TensorLoader(torch.zeros(4, 28, 28, dtype=torch.uint8), torch.zeros(3), 2)


def test_images_are_float32_whatever_the_default_dtype():
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        x, _ = next(iter(loader(4, 2, resize=3)))
    finally:
        torch.set_default_dtype(default)
    assert x.dtype == torch.float32


@pytest.mark.parametrize("kwargs", [
    {"rank": True, "world_size": 2}, {"resize": True}, {"resize": 2.5}, {"seed": 7.0},
    {"seed": True}, {"seed": "7"},
])
def test_bools_floats_and_strings_are_not_ints(kwargs):
    with pytest.raises(ValueError):
        loader(4, 2, **kwargs)


def test_numpy_integers_are_ints():
    import numpy as np

    data = loader(8, np.int64(4), resize=np.int64(2), seed=np.int64(7), shuffle=True)
    assert data.batch_size == 4 and data.resize == (2, 2) and type(data.seed) is int
    resumed = loader(8, 4, resize=2, seed=0, shuffle=True)
    resumed.load_state_dict(data.state_dict())
    assert epoch_labels(resumed) == epoch_labels(data)
