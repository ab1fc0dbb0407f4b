"""Small models, training steps and comparisons shared by the checkpoint tests."""

import torch
from torch import nn

import bnlab


def make_model(seed: int) -> nn.Sequential:
    """bnlab and torch batch norm (buffers incl. int64 num_batches_tracked) and dropout."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(6, 8),
        bnlab.BatchNorm1d(8),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(8, 8),
        nn.BatchNorm1d(8),
        nn.Linear(8, 3),
    )


def make_optimizer(model: nn.Module, lr: float = 1e-2) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)


def train_steps(model, optimizer, steps: int, scheduler=None) -> None:
    """Draws data and dropout masks from the global RNG, so resuming needs the RNG state."""
    model.train()
    for _ in range(steps):
        x = torch.randn(16, 6)
        y = torch.randint(0, 3, (16,))
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def bitwise_equal(a, b) -> bool:
    """Recursive equality where tensors must match in dtype, shape and every bit."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(bits(a), bits(b))
        )
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(bitwise_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(bitwise_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return repr(a) == repr(b)  # tells -0.0 from 0.0 and matches nan
    return a == b


def trained_pair(seed: int = 0, steps: int = 3):
    """A model and AdamW optimizer after ``steps`` training steps."""
    model = make_model(seed)
    optimizer = make_optimizer(model)
    train_steps(model, optimizer, steps)
    return model, optimizer
