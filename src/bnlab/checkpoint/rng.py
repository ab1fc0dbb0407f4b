"""Capture and restore every global random number generator a training run draws from, as a
JSON-serializable dict so it can sit in a checkpoint's ``state.json``.

Layout of the dict; ``b64`` strings are base64 of raw bytes — torch's uint8 state tensors,
and the Mersenne Twister words of Python and numpy as little-endian uint32::

    {"torch": b64,                      # torch CPU default generator
     "cuda": [b64, ...],                # one per CUDA device; [] without CUDA
     "mps": b64,                        # only where Apple MPS is available
     "python": {"version": int, "internal": b64 (625 words), "gauss_next": float | None},
     "numpy": {"bit_generator": "MT19937", "key": b64 (624 words), "pos": int,
               "has_gauss": int, "gauss": float}}

Every value is an integer, raw bytes or a float written with ``repr``, so restoring
reproduces the generators bit for bit.
"""

from __future__ import annotations

import base64
import binascii
import random
import warnings
from typing import Any

import numpy as np
import torch

from .errors import CheckpointError

__all__ = ["capture_rng_state", "restore_rng_state"]

_HINT = "pass a dict made by capture_rng_state() (a checkpoint's state['rng'])"


def _rng_error(problem: str) -> CheckpointError:
    """An error about the RNG state itself (no file to name: ``path`` is None)."""
    return CheckpointError(f"RNG state: {problem}; {_HINT}")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _encode(state: torch.Tensor) -> str:
    return base64.b64encode(state.cpu().contiguous().numpy().tobytes()).decode("ascii")


def _words(values: Any) -> str:
    return base64.b64encode(np.asarray(values, dtype="<u4").tobytes()).decode("ascii")


def _raw(text: Any, name: str) -> bytes:
    if not isinstance(text, str):
        raise _rng_error(f"{name!r} is not a base64 string")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise _rng_error(f"{name!r} is not valid base64 ({exc})") from exc


def _decode(text: Any, name: str) -> torch.Tensor:
    raw = _raw(text, name)
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.empty(0)


def _decode_words(text: Any, name: str) -> np.ndarray:
    raw = _raw(text, name)
    if len(raw) % 4:
        raise _rng_error(f"{name!r} is not a whole number of uint32 words")
    return np.frombuffer(raw, dtype="<u4").astype(np.uint32)


def capture_rng_state() -> dict[str, Any]:
    """The current states of torch (CPU, every CUDA device, MPS), Python ``random`` and numpy's
    global generator, as a JSON-serializable dict (layout in the module docstring)."""
    version, internal, gauss_next = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "torch": _encode(torch.get_rng_state()),
        "cuda": [_encode(s) for s in torch.cuda.get_rng_state_all()]
        if torch.cuda.is_available()
        else [],
        "python": {"version": version, "internal": _words(internal), "gauss_next": gauss_next},
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": _words(np_state["state"]["key"]),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
    }
    if _mps_available():
        state["mps"] = _encode(torch.mps.get_rng_state())
    return state


def _field(d: Any, key: str, where: str = "") -> Any:
    if not isinstance(d, dict) or key not in d:
        raise _rng_error(f"missing '{where}{key}'")
    return d[key]


def restore_rng_state(state: dict[str, Any]) -> None:
    """Set the global generators to ``state`` from :func:`capture_rng_state`. Everything is
    checked before any generator changes; raises :class:`CheckpointError` for a malformed dict.
    CUDA states beyond this machine's devices (or without CUDA) are skipped with a warning."""
    torch_state = _decode(_field(state, "torch"), "torch")
    cuda_states = _field(state, "cuda")
    if not isinstance(cuda_states, list):
        raise _rng_error("'cuda' is not a list")
    cuda = [_decode(s, f"cuda[{i}]") for i, s in enumerate(cuda_states)]
    mps = _decode(state["mps"], "mps") if "mps" in state else None

    py = _field(state, "python")
    np_dict = _field(state, "numpy")
    try:
        py_state = (
            int(_field(py, "version", "python.")),
            tuple(int(v) for v in _decode_words(_field(py, "internal", "python."), "internal")),
            _field(py, "gauss_next", "python."),
        )
        np_state = {
            "bit_generator": _field(np_dict, "bit_generator", "numpy."),
            "state": {
                "key": _decode_words(_field(np_dict, "key", "numpy."), "key"),
                "pos": int(_field(np_dict, "pos", "numpy.")),
            },
            "has_gauss": int(_field(np_dict, "has_gauss", "numpy.")),
            "gauss": float(_field(np_dict, "gauss", "numpy.")),
        }
        # validate on throwaway generators so a bad dict changes nothing
        random.Random().setstate(py_state)
        np.random.RandomState().set_state(np_state)
        torch.Generator().set_state(torch_state)
    except CheckpointError:
        raise
    except (TypeError, ValueError, OverflowError, RuntimeError) as exc:
        raise _rng_error(f"malformed generator state ({exc})") from exc
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    # The device generators cannot be tried on throwaway copies (and reading theirs would
    # start CUDA, which setting them does not): their states' sizes are checked instead —
    # torch's CUDA (Philox) generator takes 16 bytes (seed, offset), or 8 (a seed) — so a
    # bad one fails before anything is set.
    for index, cuda_state in enumerate(cuda[:available]):
        if cuda_state.numel() not in (8, 16):
            raise _rng_error(f"'cuda[{index}]' holds {cuda_state.numel()} bytes, not a CUDA "
                             "generator's 16 (seed and offset)")

    torch.set_rng_state(torch_state)
    random.setstate(py_state)
    np.random.set_state(np_state)
    for index, cuda_state in enumerate(cuda[:available]):
        torch.cuda.set_rng_state(cuda_state, index)
    if len(cuda) > available:
        warnings.warn(
            f"RNG state has {len(cuda)} CUDA generator(s) but this machine has {available} "
            "CUDA device(s); the extra states were not restored",
            stacklevel=2,
        )
    if mps is not None and _mps_available():
        torch.mps.set_rng_state(mps)
