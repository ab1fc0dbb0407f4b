"""The notebook's LeNet: layer sequence, parameter counts, state_dict compatibility."""

import pytest
import torch
from torch import nn

import bnlab
from bnlab.models import count_parameters, lenet, lenet_relu

BNLAB_BN = (bnlab.BatchNorm2d, bnlab.BatchNorm1d)


def _notebook_net() -> nn.Sequential:
    """Cell In [6] of the notebook, verbatim, with bnlab's BatchNorm."""
    BatchNorm = bnlab.BatchNorm  # noqa: N806
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5), BatchNorm(6, num_dims=4), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), BatchNorm(16, num_dims=4), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2), nn.Flatten(),
        nn.Linear(16*4*4, 120), BatchNorm(120, num_dims=2), nn.Sigmoid(),
        nn.Linear(120, 84), BatchNorm(84, num_dims=2), nn.Sigmoid(),
        nn.Linear(84, 10)
    )  # fmt: skip


def _layout(net: nn.Module) -> list[tuple]:
    """One row per layer; a BN layer's fused activation (and pooling) shows where its
    Identity (the next one) stands."""
    rows, fused = [], []
    for m in net:
        if isinstance(m, nn.Identity) and fused:
            rows.append(fused.pop(0))
            continue
        act, pool = getattr(m, "activation", None), getattr(m, "pool", None)
        fused = [({"sigmoid": "Sigmoid", "relu": "ReLU"}[act],)] if act else []
        fused += [("avgpool", pool, pool)] if pool else []
        if isinstance(m, nn.Conv2d):
            rows.append(("conv", m.in_channels, m.out_channels, m.kernel_size))
        elif isinstance(m, nn.Linear):
            rows.append(("linear", m.in_features, m.out_features))
        elif isinstance(m, (bnlab.BatchNormBase, nn.BatchNorm2d, nn.BatchNorm1d)):
            rows.append(("bn", m.num_features))
        elif isinstance(m, nn.AvgPool2d):
            rows.append(("avgpool", m.kernel_size, m.stride))
        elif isinstance(m, nn.MaxPool2d):
            rows.append(("maxpool", m.kernel_size, m.stride))
        else:
            rows.append((type(m).__name__,))
    return rows


NOTEBOOK_LAYOUT = [
    ("conv", 1, 6, (5, 5)), ("bn", 6), ("Sigmoid",), ("avgpool", 2, 2),
    ("conv", 6, 16, (5, 5)), ("bn", 16), ("Sigmoid",), ("avgpool", 2, 2), ("Flatten",),
    ("linear", 256, 120), ("bn", 120), ("Sigmoid",),
    ("linear", 120, 84), ("bn", 84), ("Sigmoid",),
    ("linear", 84, 10),
]  # fmt: skip


def test_layout_matches_the_notebook():
    assert _layout(lenet("bnlab")) == NOTEBOOK_LAYOUT
    assert _layout(lenet("torch")) == NOTEBOOK_LAYOUT
    assert _layout(lenet("none")) == [row for row in NOTEBOOK_LAYOUT if row[0] != "bn"]
    assert _layout(_notebook_net()) == NOTEBOOK_LAYOUT


def test_bnlab_layers_fuse_the_activation():
    for build, act in ((lenet, "sigmoid"), (lenet_relu, "relu")):
        net = build("bnlab")
        assert [m.activation for m in net if isinstance(m, BNLAB_BN)] == [act] * 4
        assert not any(isinstance(m, (nn.Sigmoid, nn.ReLU)) for m in net)
        assert all(getattr(m, "activation", None) is None for m in build("torch"))


def test_bnlab_lenet_fuses_the_average_pooling_into_its_conv_bn_layers():
    net = lenet("bnlab")
    assert [m.pool for m in net if isinstance(m, BNLAB_BN)] == [2, 2, None, None]
    assert not any(isinstance(m, nn.AvgPool2d) for m in net)
    # max pooling is not fused; torch's and no-BN LeNets keep their pooling layers
    assert sum(isinstance(m, nn.MaxPool2d) for m in lenet_relu("bnlab")) == 2
    assert sum(isinstance(m, nn.AvgPool2d) for m in lenet("torch")) == 2
    assert sum(isinstance(m, nn.AvgPool2d) for m in lenet("none")) == 2


def test_norm_selects_the_batch_norm_classes():
    net = lenet("bnlab")
    assert [type(m) for m in net if isinstance(m, BNLAB_BN)] == [
        bnlab.BatchNorm2d, bnlab.BatchNorm2d, bnlab.BatchNorm1d, bnlab.BatchNorm1d
    ]  # fmt: skip
    net = lenet("torch")
    kinds = [type(m) for m in net if type(m).__module__.startswith("torch.nn")]
    assert kinds.count(nn.BatchNorm2d) == 2 and kinds.count(nn.BatchNorm1d) == 2
    assert not any(isinstance(m, BNLAB_BN) for m in net)
    assert not any("BatchNorm" in type(m).__name__ for m in lenet("none"))


def test_parameter_counts_by_hand():
    conv1, conv2 = 6 * 1 * 25 + 6, 16 * 6 * 25 + 16
    fc1, fc2, fc3 = 256 * 120 + 120, 120 * 84 + 84, 84 * 10 + 10
    bn = 2 * (6 + 16 + 120 + 84)
    assert (conv1, conv2, fc1, fc2, fc3, bn) == (156, 2416, 30840, 10164, 850, 452)
    assert count_parameters(lenet("bnlab")) == 44878
    assert count_parameters(lenet("torch")) == 44878
    assert count_parameters(lenet("none")) == conv1 + conv2 + fc1 + fc2 + fc3 == 44426
    assert count_parameters(_notebook_net()) == 44878
    assert count_parameters(lenet_relu("bnlab")) == 44878


def test_count_parameters_trainable_only():
    net = lenet("bnlab")
    for p in net[0].parameters():
        p.requires_grad_(False)
    assert count_parameters(net) == 44878
    assert count_parameters(net, trainable_only=True) == 44878 - 156


def test_state_dict_keys_match_notebook_and_torch():
    keys = list(lenet("bnlab").state_dict())
    assert keys == list(lenet("torch").state_dict())
    assert keys == list(_notebook_net().state_dict())
    assert "1.running_mean" in keys and "13.num_batches_tracked" in keys


def test_torch_weights_load_into_bnlab_and_agree():
    torch.manual_seed(0)
    reference = lenet("torch")
    x = torch.randn(32, 1, 28, 28)
    reference(x)  # move the running statistics off their initial values
    ours = lenet("bnlab")
    ours.load_state_dict(reference.state_dict())
    reference.eval()
    ours.eval()
    torch.testing.assert_close(ours(x), reference(x))


@pytest.mark.parametrize("builder", [lenet, lenet_relu])
@pytest.mark.parametrize("norm", ["bnlab", "torch", "none"])
def test_forward_shape(builder, norm):
    net = builder(norm)
    out = net(torch.randn(4, 1, 28, 28))
    assert out.shape == (4, 10)
    out.sum().backward()


def test_relu_variant_layout():
    rows = _layout(lenet_relu("torch"))
    assert [r[0] for r in rows] == [
        r[0].replace("Sigmoid", "ReLU").replace("avgpool", "maxpool") for r in NOTEBOOK_LAYOUT
    ]


def test_unknown_norm():
    with pytest.raises(ValueError, match="bnlab, torch, none"):
        lenet("group")
