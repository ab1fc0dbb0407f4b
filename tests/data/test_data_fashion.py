"""load_data_fashion_mnist and the FashionMNIST Dataset over tiny IDX files in a root."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from bnlab.data import CLASSES, DatasetError, FashionMNIST, encode_idx, load_data_fashion_mnist


@pytest.fixture
def tiny(tmp_path, make_tiny):
    return make_tiny(tmp_path / "fm", n_train=20, n_test=9)


def test_loaders_yield_the_files_contents(tiny):
    train, test = load_data_fashion_mnist(8, root=tiny.directory, shuffle=False)
    assert (len(train), len(test)) == (3, 2)
    x, y = next(iter(train))
    images = tiny.arrays["train-images-idx3-ubyte"]
    assert x.shape == (8, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x, torch.from_numpy(images[:8, None].astype(np.float32)) / 255)
    assert y.tolist() == tiny.arrays["train-labels-idx1-ubyte"][:8].tolist()


def test_test_loader_never_shuffles(tiny):
    train, test = load_data_fashion_mnist(4, root=tiny.directory, seed=0)
    labels = tiny.arrays["t10k-labels-idx1-ubyte"].tolist()
    assert sum((y.tolist() for _, y in test), []) == labels
    assert sum((y.tolist() for _, y in test), []) == labels  # and not in a second epoch either
    assert test.shuffle is False and train.shuffle is True


def test_seed_reproduces_and_limit_truncates(tiny):
    a, _ = load_data_fashion_mnist(4, root=tiny.directory, seed=7, limit=10)
    b, _ = load_data_fashion_mnist(4, root=tiny.directory, seed=7, limit=10)
    order = [y.tolist() for _, y in a]
    assert order == [y.tolist() for _, y in b] and len(a) == 3
    first10 = tiny.arrays["train-labels-idx1-ubyte"][:10].tolist()
    assert sorted(sum(order, [])) == sorted(first10)


def test_resize_and_drop_last(tiny):
    train, test = load_data_fashion_mnist(8, 32, root=tiny.directory, drop_last=True)
    assert len(train) == 2 and len(test) == 2  # drop_last is for training only
    assert next(iter(train))[0].shape == (8, 1, 32, 32)


def test_sharded_evaluation_covers_the_test_set_once(tiny):
    seen = []
    for rank in range(4):
        _, test = load_data_fashion_mnist(2, root=tiny.directory, seed=1, rank=rank, world_size=4)
        seen += [y for _, y in test]
    assert sorted(torch.cat(seen).tolist()) == sorted(tiny.arrays["t10k-labels-idx1-ubyte"])
    assert len(torch.cat(seen)) == 9


def test_missing_data_without_network_is_a_dataset_error(isolated):
    with pytest.raises(DatasetError) as info:  # isolated: no files anywhere, mirror refused
        load_data_fashion_mnist(64)
    assert "127.0.0.1:9" in info.value.found and "dataset-fashion-mnist" in info.value.fix


def test_out_of_range_label_and_count_mismatch_are_errors(tiny):
    path = tiny.directory / "train-labels-idx1-ubyte.gz"
    labels = tiny.arrays["train-labels-idx1-ubyte"].copy()
    labels[5] = 10
    path.write_bytes(gzip.compress(encode_idx(labels)))
    with pytest.raises(DatasetError, match="labels 0..9, found label 10 at index 5"):
        load_data_fashion_mnist(4, root=tiny.directory)
    path.write_bytes(gzip.compress(encode_idx(labels[:19])))
    with pytest.raises(DatasetError, match="found 19 labels for 20 images"):
        load_data_fashion_mnist(4, root=tiny.directory)


def test_images_of_wrong_rank_are_errors(tiny):
    path = tiny.directory / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(encode_idx(np.zeros((9, 784), dtype=np.uint8))))
    with pytest.raises(DatasetError, match="uint8 data of rank 3"):
        load_data_fashion_mnist(4, root=tiny.directory)


def test_custom_files_are_refused_outside_explicit_directories(isolated, make_tiny):
    make_tiny(isolated / "system")
    with pytest.raises(DatasetError, match="the official train-images-idx3-ubyte"):
        load_data_fashion_mnist(4, download=False)


def test_bad_arguments_fail_before_loading(isolated):
    with pytest.raises(ValueError, match="limit"):
        load_data_fashion_mnist(4, limit=0)
    with pytest.raises(ValueError, match="rank"):
        load_data_fashion_mnist(4, rank=1)


def test_dataset_items_match_the_files_and_work_with_dataloader(tiny):
    dataset = FashionMNIST(tiny.directory, train=False)
    images = tiny.arrays["t10k-images-idx3-ubyte"]
    assert len(dataset) == 9 and dataset.location.kind == "root" and dataset.status == "custom"
    image, label = dataset[3]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32
    assert torch.equal(image, torch.from_numpy(images[3:4].astype(np.float32)) / 255)
    assert label == int(tiny.arrays["t10k-labels-idx1-ubyte"][3])
    x, y = next(iter(DataLoader(dataset, batch_size=4)))
    assert x.shape == (4, 1, 28, 28) and y.dtype == torch.int64


def test_dataset_applies_the_transform(tiny):
    dataset = FashionMNIST(tiny.directory, transform=lambda image: image.sum().item())
    expected = tiny.arrays["train-images-idx3-ubyte"][0].astype(np.float64).sum() / 255
    assert dataset[0][0] == pytest.approx(expected, rel=1e-5)


def test_classes_are_zalandos_ten_names():
    assert len(CLASSES) == 10 and CLASSES[0] == "T-shirt/top" and CLASSES[9] == "Ankle boot"
    assert FashionMNIST.classes is CLASSES


def test_splits_with_different_image_sizes_are_an_error(tiny):
    path = tiny.directory / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(encode_idx(np.zeros((9, 10, 10), np.uint8))))
    with pytest.raises(DatasetError, match=r"train split's size \(28, 28\).*size \(10, 10\)"):
        load_data_fashion_mnist(4, root=tiny.directory)


def test_images_with_an_empty_dimension_are_an_error(tiny):
    path = tiny.directory / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(encode_idx(np.zeros((20, 0, 28), np.uint8))))
    with pytest.raises(DatasetError, match="no empty dimension"):
        load_data_fashion_mnist(4, root=tiny.directory)
