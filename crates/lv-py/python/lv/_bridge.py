"""Calls into a target written in PyTorch, for the Rust side (crates/lv-py/src/target.rs).

``x_np`` is a NumPy view of libtorch memory (float32 or float64, ``[n, d]``); it becomes a
``torch.Tensor`` without a copy. The callable must not modify it in place.
"""

import torch


def _values(y, n, what):
    if not isinstance(y, torch.Tensor):
        y = torch.as_tensor(y)
    y = y.detach()
    if tuple(y.shape) == (n, 1):
        y = y[:, 0]
    if tuple(y.shape) != (n,):
        raise ValueError(
            f"{what} returned a tensor of shape {tuple(y.shape)} for a batch of {n}; expected ({n},)"
        )
    return y.to("cpu", torch.float64).numpy()


def call_log_prob(log_prob, x_np, n):
    x = torch.from_numpy(x_np)
    with torch.no_grad():
        y = log_prob(x)
    return _values(y, n, "log_prob")


def call_score(log_prob, score, x_np, n, d):
    x = torch.from_numpy(x_np)
    if score is not None:
        with torch.no_grad():
            g = score(x)
        what = "score"
    else:
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            y = log_prob(xg)
            if tuple(y.shape) == (n, 1):
                y = y[:, 0]
            if tuple(y.shape) != (n,):
                raise ValueError(
                    f"log_prob returned a tensor of shape {tuple(y.shape)} for a batch of {n}; expected ({n},)"
                )
            (g,) = torch.autograd.grad(y.sum(), xg)
        what = "the autograd score of log_prob"
    if not isinstance(g, torch.Tensor):
        g = torch.as_tensor(g)
    if tuple(g.shape) != (n, d):
        raise ValueError(f"{what} has shape {tuple(g.shape)} for a batch of {n}; expected ({n}, {d})")
    return g.detach().to("cpu", torch.float64).numpy()
