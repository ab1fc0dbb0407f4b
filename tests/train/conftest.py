"""Tiny in-memory loaders for the training tests (no dependency on bnlab.data)."""

from __future__ import annotations

import pytest
import torch


class ListLoader:
    """Re-iterable batches with ``len()``; counts epochs and batches handed out.

    ``inject=(epoch, index)`` puts an inf into the input of that batch (1-based epoch,
    0-based index) to make the loss non-finite there.
    """

    def __init__(self, batches, inject: tuple[int, int] | None = None) -> None:
        self.batches = batches
        self.inject = inject
        self.epochs = 0
        self.yielded = 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        self.epochs += 1
        for index, (X, y) in enumerate(self.batches):
            self.yielded += 1
            if self.inject == (self.epochs, index):
                X = X.clone()
                X[0, 0, 0, 0] = float("inf")
            yield X, y


def make_batches(sizes, seed: int = 0):
    """Fashion-MNIST-shaped batches (X (n,1,28,28) float32, y (n,) int64) of the given
    sizes, with a class-dependent pattern (the same for every seed) so that a model can
    learn something that carries over to another seed's batches."""
    templates = torch.randn(10, 1, 28, 28, generator=torch.Generator().manual_seed(1234))
    g = torch.Generator().manual_seed(seed)
    batches = []
    for n in sizes:
        y = torch.randint(0, 10, (n,), generator=g)
        X = 0.7 * templates[y] + torch.randn(n, 1, 28, 28, generator=g)
        batches.append((X, y))
    return batches


@pytest.fixture
def make_loader():
    def factory(sizes, seed: int = 0, inject=None) -> ListLoader:
        return ListLoader(make_batches(sizes, seed), inject)

    return factory
