"""The target registry on torch tensors: ``lv.targets.get("gmm9")``."""

import torch

from . import _lv


def names():
    """Registry names (built-ins, then targets registered by ``lv.train(target=callable)``)."""
    return _lv.target_names()


class Target:
    """A registry target. ``log_prob`` and ``score`` take ``[n, d]`` tensors (any float dtype
    and device; computed in float64 on the CPU) and return float64 tensors on the input's
    device. ``log_prob`` is unnormalised: log p = log_prob − log_z."""

    def __init__(self, name):
        self._t = _lv.BuiltinTarget(name)
        self.name = self._t.name
        self.dim = self._t.dim
        self.log_z = self._t.log_z
        self.has_sampler = self._t.has_sampler

    def _np(self, x):
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(x)
        return x.detach().to("cpu", torch.float64).numpy(), x.device

    def log_prob(self, x):
        a, dev = self._np(x)
        return torch.from_numpy(self._t.log_density(a)).to(dev)

    def score(self, x):
        a, dev = self._np(x)
        return torch.from_numpy(self._t.score(a)).to(dev)

    def reference_samples(self, n=None, seed=0):
        """Exact samples (``n``, default 10000, seeded) when the target has a sampler, else
        its shipped reference set; ``None`` when it has neither. float64 ``[n, d]``."""
        a = self._t.reference_samples(n=n, seed=seed)
        return None if a is None else torch.from_numpy(a)

    def __repr__(self):
        return f"lv.targets.Target({self.name!r}, dim={self.dim}, log_z={self.log_z!r})"


def get(name):
    """The registry target ``name`` (see ``names()``)."""
    return Target(name)
