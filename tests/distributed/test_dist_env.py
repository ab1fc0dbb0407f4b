"""The distributed helpers without a process group: environment, no-op collectives, and
the errors a multi-process run reports before it starts."""

from __future__ import annotations

import socket

import pytest
import torch
from torch import nn

from bnlab.cli import main
from bnlab.data.loader import TensorLoader
from bnlab.distributed import (
    DistributedSetupError,
    WorldInfo,
    all_reduce_sum,
    backend_for,
    init_distributed,
    is_main_process,
    same_on_all_ranks,
    unwrap,
    world_info,
)
from bnlab.experiment.errors import RunError
from bnlab.experiment.parallel import check_global_batch, rank_device

ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def env(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_world_of_one_without_the_environment(env):
    assert world_info() == WorldInfo(0, 0, 1, None, None)
    assert not world_info().distributed and is_main_process()


def test_torchrun_environment(env):
    for name, value in zip(ENV, ("3", "1", "4", "10.0.0.1", "29500")):
        env.setenv(name, value)
    assert world_info() == WorldInfo(3, 1, 4, "10.0.0.1", 29500)
    assert world_info().distributed and not is_main_process()


@pytest.mark.parametrize("values, message", [
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
    ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK=2 must be smaller than WORLD_SIZE=2"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE=0 must be >= 1"),
    ({"MASTER_PORT": "99999"}, r"MASTER_PORT=99999 must be in \[1, 65535\]"),
])
def test_malformed_environment(env, values, message):
    for name, value in values.items():
        env.setenv(name, value)
    with pytest.raises(DistributedSetupError, match=message):
        world_info()


def test_a_malformed_environment_is_one_cli_line(env, capsys):
    env.setenv("WORLD_SIZE", "abc")
    assert main(["train", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "WORLD_SIZE='abc' is not an integer" in err and len(err.strip().splitlines()) == 1


def test_init_needs_a_rendezvous_address_and_leaves_a_world_of_one_alone(env):
    assert init_distributed() == WorldInfo()
    assert not torch.distributed.is_initialized()
    env.setenv("WORLD_SIZE", "2")
    with pytest.raises(DistributedSetupError, match="MASTER_ADDR/MASTER_PORT are not set"):
        init_distributed("gloo", timeout_s=5)



def _rendezvous_env(env, port: int) -> None:
    for name, value in zip(ENV, ("0", "0", "2", "127.0.0.1", str(port))):
        env.setenv(name, value)


def test_a_rendezvous_that_times_out_names_the_address_and_what_to_check(env):
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _rendezvous_env(env, port)
    with pytest.raises(DistributedSetupError) as caught:
        init_distributed("gloo", timeout_s=1)
    message = str(caught.value)
    assert f"rank 0 of 2 could not join the process group at 127.0.0.1:{port}" in message
    assert "1/2 clients joined" in message and "same MASTER_ADDR" in message
    assert not torch.distributed.is_initialized()


def test_a_port_in_use_is_a_setup_error_and_one_cli_line(env, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        _rendezvous_env(env, s.getsockname()[1])
        with pytest.raises(DistributedSetupError, match="address already in use"):
            init_distributed("gloo", timeout_s=30)
        assert main(["train", "--device", "cpu", "--dist-timeout", "30"]) == 2
    err = capsys.readouterr().err
    assert "could not join the process group" in err and len(err.strip().splitlines()) == 1
    assert not torch.distributed.is_initialized()

def test_backend_follows_the_device():
    assert backend_for("cpu") == "gloo" and backend_for(torch.device("cuda", 1)) == "nccl"


def test_collectives_are_no_ops_without_a_group():
    t = torch.tensor([1.0, 2.0])
    assert all_reduce_sum(t) is t and t.tolist() == [1.0, 2.0]
    assert same_on_all_ranks(7)
    layer = nn.Linear(2, 2)
    assert unwrap(layer) is layer


def test_a_run_without_a_full_global_batch_is_refused():
    images, labels = torch.zeros(40, 28, 28, dtype=torch.uint8), torch.zeros(40, dtype=torch.long)
    loader = TensorLoader(images, labels, 16, shuffle=True, seed=0, drop_last=True, rank=1,
                          world_size=3)
    with pytest.raises(RunError, match=r"40 training samples make no global batch of 48 "
                                       r"\(--batch-size 16 x 3 processes\)"):
        check_global_batch(loader)
    check_global_batch(TensorLoader(images, labels, 16, drop_last=True, world_size=2))


def test_rank_device_on_cpu():
    assert rank_device("cpu", WorldInfo(1, 1, 2)) == torch.device("cpu")


@pytest.mark.parametrize("argv, message", [
    (["train", "--nproc", "2"], "--nproc starts the processes itself"),
    (["compare"], "compare is not data-parallel"),
])
def test_cli_under_torchrun_refuses_what_it_cannot_do(env, capsys, argv, message, tmp_path):
    env.setenv("WORLD_SIZE", "2")
    env.chdir(tmp_path)
    env.setenv("BNLAB_DATA", str(tmp_path / "no-data-here"))  # refused before any loading
    assert main([*argv, "--device", "cpu", "--no-download"]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing created (no runs/...)


@pytest.mark.parametrize("argv, message", [
    (["--nproc", "0"], "argument --nproc: must be in [1, 1024]"),
    (["--nproc", "2147483647"], "argument --nproc: must be in [1, 1024]"),
    (["--dist-timeout", "0"], "argument --dist-timeout: must be in (0, 604800]"),
    (["--dist-timeout", "inf"], "argument --dist-timeout: must be in (0, 604800]"),
    (["--dist-timeout", "1e15"], "argument --dist-timeout: must be in (0, 604800]"),
])
def test_bad_distributed_options(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(["train", *argv])
    assert exc.value.code == 2 and message in capsys.readouterr().err
