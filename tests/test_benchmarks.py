"""The benchmarks' baselines are what they claim to be (no timing here: see benchmarks/)."""

import pytest
import torch

from bnlab.data import FashionMNIST


@pytest.fixture
def data_env(tiny_data, monkeypatch):
    monkeypatch.setenv("BNLAB_DATA", str(tiny_data))
    return tiny_data


def test_torchvision_style_dataset_gives_the_same_samples(data_env):
    pytest.importorskip("PIL")
    from benchmarks.notebook_data import TorchvisionStyleFashionMNIST, notebook_loaders

    ours = FashionMNIST(train=False, download=False)
    theirs = TorchvisionStyleFashionMNIST(train=False)
    assert len(theirs) == len(ours)
    for i in (0, len(ours) - 1):
        (x, y), (x2, y2) = theirs[i], ours[i]
        assert x.dtype == torch.float32 and x.shape == (1, 28, 28)
        assert torch.equal(x, x2) and y == y2
    train, test = notebook_loaders(8)
    assert next(iter(test))[0].shape == (8, 1, 28, 28)
    assert len(train.dataset) == len(FashionMNIST(train=True, download=False))


@pytest.mark.parametrize("norm", ["bnlab", "torch", "none"])
@pytest.mark.parametrize("fused", [False, True])
def test_training_step_trains(norm, fused, monkeypatch):
    from benchmarks.training import training_step
    from bnlab.models import lenet

    built = []

    class Recorded(torch.optim.AdamW):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(torch.optim, "AdamW", Recorded)
    torch.manual_seed(0)
    model = lenet(norm)
    before = [p.detach().clone() for p in model.parameters()]
    training_step(model, 8, fused=fused)()
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert built[0].defaults["fused"] is (True if fused else None)


def test_notebook_lenet_is_the_notebooks():
    from benchmarks.notebook_bn import notebook_lenet
    from bnlab.models import count_parameters

    net = notebook_lenet()
    assert net(torch.rand(4, 1, 28, 28)).shape == (4, 10)
    assert count_parameters(net) == 44878


def test_gpu_benchmark_interleaves_and_reports_ratios(capsys):
    from benchmarks import gpu

    calls = []

    def timer(name, seconds):
        def run():
            calls.append(name)
            return seconds
        return run

    ratios, ours, theirs = gpu.interleaved(timer("ours", 1.0), timer("torch", 4.0), repeats=4)
    assert ratios == [0.25] * 4 and (ours, theirs) == (1.0, 4.0)
    assert calls == ["ours", "torch", "torch", "ours"] * 2  # order flips every repeat
    row = {"shape": (64, 120), "eager": ([1.5, 1.6], 3e-4, 2e-4),
           "graph": ([0.4, 0.5], 9e-6, 2e-5), "first_s": 1.2, "max_abs_diff": 1e-6,
           "kernels": (["rows_forward_kernel 2.2us"], ["cudnn 3.0us"])}
    gpu.print_table([row])
    out = capsys.readouterr().out
    assert ("| (64, 120) | 300.0 / 200.0 | 1.50 / 1.55 / 1.60 | 9.0 / 20.0 "
            "| 0.40 / 0.45 / 0.50 |") in out
    assert "rows_forward_kernel 2.2us || cudnn 3.0us" in out


def test_gpu_benchmark_says_it_needs_a_gpu(monkeypatch):
    from benchmarks import gpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        gpu.main([])


def test_host_benchmark_times_each_path_it_names(capsys):
    from benchmarks import host
    from bnlab.norm import gpu

    if gpu._node() is None:
        pytest.skip(f"the Triton path's C++ node is not built here: {gpu.node_status()}")
    threads = torch.get_num_threads()
    host.main(["--rounds", "1", "--iters", "3"])  # raises if a row ran another path
    assert torch.get_num_threads() == threads  # (it times on one thread, then restores)
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| bnlab") or
            line.startswith("| torch")]
    assert [r.split(" | ")[0][2:] for r in rows] == list(host.ROWS)
    assert rows[-1].endswith("| 1.00 |")


def test_host_benchmark_skips_where_the_node_is_not_built(capsys, monkeypatch):
    from benchmarks import host
    from bnlab.norm import gpu

    monkeypatch.setattr(gpu, "_node", lambda: None)
    host.main(["--rounds", "1", "--iters", "3"])  # (python -m benchmarks goes on after it)
    assert capsys.readouterr().out.startswith("skipped: the Triton path's C++ node")
