"""The benchmark-scale targets of the PyTorch baseline (pytorch_step.py), float32.

Written from the Rust targets in crates/lv-targets (same formulas, constants and data files,
read from crates/lv-targets/data), not copied from other code:

* ``manywell32``, ``manywell64``: the FAB ManyWell, d/2 blocks
  −x₁⁴ + 6x₁² + ½x₁ − ½x₂²; analytic score, kept in the graph (as ours).
* ``gmm40_50d``: 40 equal-weight N(m_k, I) in d = 50, means from gmm40_means_d50.csv.
* ``mos50``: 10 equal-weight products of Student-t (ν = 2) in d = 50, locations from
  mos10_locs_d50.csv.
* ``robot4``: the 10-link planar robot with four goals (±7, 0), (0, ±7).

(``funnel10_clip30`` has funnel10's density, pytorch_step.Funnel; its clip only concerns
the reference samples.)

The scores of gmm40_50d, mos50 and robot4 are autograd of the log density, detached — what
the reference codes (sde_sampler, RSMC) compute; ours uses its own analytic or autograd
score per target, so each side computes the score its own way.
"""

import math
from pathlib import Path

import torch

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
DATA = Path(__file__).resolve().parents[2] / "crates" / "lv-targets" / "data"


def load_table(name, rows, cols):
    """A comma-separated float table of crates/lv-targets/data as a float32 tensor."""
    values = [
        [float(v) for v in line.split(",")]
        for line in (DATA / name).read_text().splitlines()
        if line.strip()
    ]
    t = torch.tensor(values, dtype=torch.float32)
    if tuple(t.shape) != (rows, cols):
        raise ValueError(f"{name}: shape {tuple(t.shape)}, expected {(rows, cols)}")
    return t


def autograd_score(log_density, x):
    """∇ log ρ by autograd, detached (the generic score of the reference codes)."""
    with torch.enable_grad():
        y = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(log_density(y).sum(), y)
    return g


class FabManyWell:
    """log ρ(x) = Σ_i [−x_{2i}⁴ + 6x_{2i}² + ½x_{2i} − ½x_{2i+1}²] (unnormalised)."""

    score_in_graph = True

    def __init__(self, dim):
        self.dim = dim

    def log_density(self, x):
        b = x.reshape(-1, self.dim // 2, 2)
        x1, x2 = b[..., 0], b[..., 1]
        return (-(x1**4) + 6.0 * x1**2 + 0.5 * x1 - 0.5 * x2**2).sum(-1)

    def score(self, x):
        b = x.reshape(-1, self.dim // 2, 2)
        x1, x2 = b[..., 0], b[..., 1]
        return torch.stack([-4.0 * x1**3 + 12.0 * x1 + 0.5, -x2], 2).reshape(-1, self.dim)


class Gmm40:
    """(1/40) Σ_k N(x; m_k, I), d = 50, normalised."""

    score_in_graph = False
    dim = 50

    def __init__(self):
        self.means = load_table("gmm40_means_d50.csv", 40, 50)

    def log_density(self, x):
        sq = ((x.unsqueeze(1) - self.means) ** 2).sum(-1)
        comp = -0.5 * sq - self.dim * HALF_LOG_2PI
        return torch.logsumexp(comp, 1) - math.log(self.means.shape[0])

    def score(self, x):
        return autograd_score(self.log_density, x)


class MixtureOfStudents:
    """(1/10) Σ_k Π_j t₂(x_j − m_kj), log t₂(u) = −(3/2) log 2 − (3/2) log(1 + u²/2)."""

    score_in_graph = False
    dim = 50

    def __init__(self):
        self.locs = load_table("mos10_locs_d50.csv", 10, 50)

    def log_density(self, x):
        u = x.unsqueeze(1) - self.locs
        comp = (-1.5 * torch.log1p(u**2 / 2.0) - 1.5 * math.log(2.0)).sum(-1)
        return torch.logsumexp(comp, 1) - math.log(self.locs.shape[0])

    def score(self, x):
        return autograd_score(self.log_density, x)


class Robot4:
    """log N(θ; 0, diag(1, 0.2², …)) + max_g log N(p(θ); g, 0.01² I₂), p the end effector
    (Σ cos φ_i, Σ sin φ_i), φ = cumsum θ, of ten unit links."""

    score_in_graph = False
    dim = 10

    def __init__(self):
        self.std = torch.tensor([1.0] + [0.2] * 9)
        self.prior_norm = sum(-HALF_LOG_2PI - math.log(s) for s in [1.0] + [0.2] * 9)
        self.goals = torch.tensor([[7.0, 0.0], [-7.0, 0.0], [0.0, 7.0], [0.0, -7.0]])

    def log_density(self, x):
        prior = -0.5 * ((x / self.std) ** 2).sum(-1) + self.prior_norm
        phi = torch.cumsum(x, 1)
        p = torch.stack([phi.cos().sum(-1), phi.sin().sum(-1)], 1)
        d2 = ((p.unsqueeze(1) - self.goals) ** 2).sum(-1)
        s = 0.01
        lik = -0.5 * d2 / s**2 - 2.0 * (HALF_LOG_2PI + math.log(s))
        return prior + lik.amax(-1)

    def score(self, x):
        return autograd_score(self.log_density, x)


TARGETS = {
    "manywell32": lambda: FabManyWell(32),
    "manywell64": lambda: FabManyWell(64),
    "gmm40_50d": Gmm40,
    "mos50": MixtureOfStudents,
    "robot4": Robot4,
}
