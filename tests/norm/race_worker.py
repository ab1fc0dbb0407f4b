"""Run as ``python race_worker.py PATH N``: N times, two threads run backward through the
same node at once, one releasing its saved tensors (``retain_graph=False``) while the other
keeps them. torch's outcomes are success or its "backward through the graph a second time"
error; this prints every other error and exits 1 on any (a crash exits with the signal).

PATH: ``triton`` (the Triton path's C++ node; its launches replaced by cheap tensor ops, so
no Triton is needed) or ``fused`` (bnlab's fused CPU batch norm).
"""

import collections
import sys
import threading

import torch

import bnlab
from bnlab.norm import gpu

SECOND_TIME = "Trying to backward through the graph a second time"


def _cheap_forward(x, *args):
    return torch.empty_like(x), torch.zeros(2, x.shape[1])


def _cheap_backward(dy, x, weight, *args):
    return torch.zeros_like(x), None if weight is None else torch.zeros_like(weight), None


def make_output(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y, x)``: an output whose backward runs the node under test, and its input."""
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    if path == "triton":
        return gpu.triton_batch_norm(x, torch.ones(3, requires_grad=True), None, None, None,
                                     True, 0.1, 1e-5), x
    return bnlab.functional.batch_norm(x, None, None, torch.ones(3, requires_grad=True), None,
                                       True, kernel="fused"), x


def main(path: str, n: int) -> int:
    if path == "triton":
        if gpu._node() is None:
            print(f"no node: {gpu.node_status()}")
            return 1
        gpu.forward, gpu._backward = _cheap_forward, _cheap_backward
    y, _ = make_output(path)
    expected = {"triton": "BnlabTritonBatchNormBackward",
                "fused": "BnlabBatchNormBackward"}[path]
    if y.grad_fn.name() != expected:
        print(f"{path} took {y.grad_fn.name()}, not {expected}")
        return 1
    outcomes = collections.Counter()

    def run(loss: torch.Tensor, x: torch.Tensor, keep: bool, start: threading.Barrier) -> None:
        start.wait()
        try:
            torch.autograd.grad(loss, [x], retain_graph=keep)
            outcomes["ok"] += 1
        except RuntimeError as err:
            outcomes[SECOND_TIME if SECOND_TIME in str(err) else str(err)[:80]] += 1

    for _ in range(n):
        y, x = make_output(path)
        start = threading.Barrier(2)
        threads = [threading.Thread(target=run, args=(y.sum(), x, keep, start))
                   for keep in (False, True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    print(dict(outcomes))
    return 0 if set(outcomes) <= {"ok", SECOND_TIME} else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
