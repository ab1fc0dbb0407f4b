"""capture_rng_state / restore_rng_state: every generator comes back bit for bit, through JSON."""

import base64
import json
import random
import warnings

import numpy as np
import pytest
import torch

from bnlab.checkpoint import CheckpointError, capture_rng_state, restore_rng_state


def draws():
    """Values from every global generator, including the cached second Gaussians."""
    return (
        random.random(),
        random.gauss(0, 1),
        np.random.standard_normal(),
        np.random.randint(0, 2**31),
        torch.rand(4).tolist(),
        torch.randn(3).tolist(),
    )


def test_round_trip_through_json_is_exact():
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves gauss_next cached
    np.random.standard_normal()  # leaves numpy's has_gauss set
    state = json.loads(json.dumps(capture_rng_state()))
    expected = draws()
    draws()
    restore_rng_state(state)
    assert draws() == expected


def test_restores_what_a_seed_sets():
    # independent reference: seeding sets the same generator states
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    state = capture_rng_state()
    random.seed(8)
    np.random.seed(8)
    torch.manual_seed(8)
    restore_rng_state(state)
    got = draws()
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    assert got == draws()


def test_layout_is_json_with_base64_generators():
    state = capture_rng_state()
    assert json.loads(json.dumps(state)) == state
    assert set(state) >= {"torch", "cuda", "python", "numpy"}
    assert isinstance(state["torch"], str)
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert len(state["cuda"]) == cuda and all(isinstance(s, str) for s in state["cuda"])
    assert state["numpy"]["bit_generator"] == "MT19937"


@pytest.mark.parametrize(
    "damage, pattern",
    [
        (lambda s: s.pop("numpy"), "missing 'numpy'"),
        (lambda s: s["python"].pop("internal"), "missing 'python.internal'"),
        (lambda s: s.update(torch="not base64!"), "'torch' is not valid base64"),
        (lambda s: s.update(torch="AAAA"), "malformed generator state"),
        (lambda s: s["numpy"].update(key="AAA="), "not a whole number of uint32 words"),
        (lambda s: s["python"].update(version=99), "malformed generator state"),
        (lambda s: s.update(cuda="x"), "'cuda' is not a list"),
    ],
)
def test_malformed_state_raises_and_changes_nothing(damage, pattern):
    state = capture_rng_state()
    damage(state)
    torch.manual_seed(11)
    random.seed(11)
    np.random.seed(11)
    with pytest.raises(CheckpointError, match=pattern):
        restore_rng_state(state)
    got = draws()
    torch.manual_seed(11)
    random.seed(11)
    np.random.seed(11)
    assert got == draws()


def test_cuda_states_are_captured_and_restored_per_device(monkeypatch):
    states = [torch.arange(16, dtype=torch.uint8), torch.arange(16, 32, dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: states)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, d: restored.append((s.clone(), d)))
    state = capture_rng_state()
    assert len(state["cuda"]) == 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        restore_rng_state(json.loads(json.dumps(state)))
    assert len(restored) == 1 and restored[0][1] == 0
    assert torch.equal(restored[0][0], states[0])
    assert "2 CUDA generator(s) but this machine has 1" in str(caught[0].message)


def test_a_cuda_state_of_the_wrong_size_fails_before_any_generator_is_set(monkeypatch):
    live = torch.arange(16, dtype=torch.uint8)  # Philox: seed and offset
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [live])
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, d: restored.append(d))

    def never(*_args):
        raise AssertionError("reading a CUDA generator starts CUDA; restoring must not")

    monkeypatch.setattr(torch.cuda, "get_rng_state", never)
    state = capture_rng_state()
    state["cuda"][0] = "AAAA"  # 3 bytes
    torch.manual_seed(11)
    random.seed(11)
    np.random.seed(11)
    with pytest.raises(CheckpointError, match=r"'cuda\[0\]' holds 3 bytes, not a CUDA gen"):
        restore_rng_state(state)
    got = draws()
    torch.manual_seed(11)
    random.seed(11)
    np.random.seed(11)
    assert got == draws() and restored == []
    state["cuda"][0] = base64.b64encode(bytes(8)).decode()  # a seed alone: torch takes it
    restore_rng_state(state)
    assert restored == [0]
