"""The targets of the JAX baseline (jax_step.py), float32, jit-able.

Written from the Rust targets in crates/lv-targets (same formulas, constants and data files,
read from crates/lv-targets/data), as bench_targets_torch.py and pytorch_step.py's Gmm9 and
Funnel are; not copied from other code:

* ``gmm9``: 9 equal-weight N(m, 0.3 I) on {−5, 0, 5}²;
* ``funnel10`` (and ``funnel10_clip30``, same density): Neal's funnel, analytic score kept
  in the graph;
* ``manywell32``, ``manywell64``: the FAB ManyWell, analytic score kept in the graph;
* ``gmm40_50d``, ``mos50``, ``robot4`` as in bench_targets_torch.py.

Scores without an analytic form here are `jax.grad` of the summed log density (what the JAX
peers compute); ``score_in_graph`` says whether the KL step differentiates through it.
"""

import math
from pathlib import Path

import jax
import jax.numpy as jnp

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
DATA = Path(__file__).resolve().parents[2] / "crates" / "lv-targets" / "data"
F32 = jnp.float32


def load_table(name, rows, cols):
    """A comma-separated float table of crates/lv-targets/data as a float32 array."""
    values = [
        [float(v) for v in line.split(",")]
        for line in (DATA / name).read_text().splitlines()
        if line.strip()
    ]
    a = jnp.asarray(values, F32)
    if a.shape != (rows, cols):
        raise ValueError(f"{name}: shape {a.shape}, expected {(rows, cols)}")
    return a


class AutogradScore:
    """score(x) = ∇ Σ_rows log ρ (rows are independent, so this is the per-row score)."""

    score_in_graph = False

    def score(self, x):
        return jax.grad(lambda y: jnp.sum(self.log_density(y)))(x)


class Mixture(AutogradScore):
    """(1/K) Σ_k N(x; m_k, σ² I), normalised."""

    def __init__(self, means, std):
        self.means, self.var = means, std * std
        self.dim = means.shape[1]

    def log_density(self, x):
        sq = jnp.sum((x[:, None, :] - self.means) ** 2, -1)
        norm = -self.dim * (HALF_LOG_2PI + 0.5 * math.log(self.var))
        comp = -0.5 * sq / self.var + norm
        return jax.scipy.special.logsumexp(comp, axis=1) - math.log(self.means.shape[0])


def gmm9():
    c = jnp.asarray([-5.0, 0.0, 5.0], F32)
    # Row-major cartesian product, as torch.cartesian_prod.
    means = jnp.stack(jnp.meshgrid(c, c, indexing="ij"), -1).reshape(-1, 2)
    return Mixture(means, math.sqrt(0.3))


def gmm40_50d():
    return Mixture(load_table("gmm40_means_d50.csv", 40, 50), 1.0)


class Funnel:
    """x0 ~ N(0, 9), x_i | x0 ~ N(0, e^{x0}), normalised; analytic score in the graph."""

    score_in_graph = True

    def __init__(self, dim=10):
        self.dim = dim

    def log_density(self, x):
        m = self.dim - 1
        x0 = x[:, 0]
        sq = jnp.sum(x[:, 1:] ** 2, -1)
        return (
            -(x0**2) / 18.0
            - (HALF_LOG_2PI + math.log(3.0))
            - 0.5 * m * (x0 + 2.0 * HALF_LOG_2PI)
            - 0.5 * sq * jnp.exp(-x0)
        )

    def score(self, x):
        m = self.dim - 1
        x0, rest = x[:, :1], x[:, 1:]
        inv_var = jnp.exp(-x0)
        s0 = -x0 / 9.0 - 0.5 * m + 0.5 * jnp.sum(rest**2, -1, keepdims=True) * inv_var
        return jnp.concatenate([s0, -rest * inv_var], 1)


class FabManyWell:
    """Σ_i [−x_{2i}⁴ + 6x_{2i}² + ½x_{2i} − ½x_{2i+1}²]; analytic score in the graph."""

    score_in_graph = True

    def __init__(self, dim):
        self.dim = dim

    def log_density(self, x):
        b = x.reshape(-1, self.dim // 2, 2)
        x1, x2 = b[..., 0], b[..., 1]
        return jnp.sum(-(x1**4) + 6.0 * x1**2 + 0.5 * x1 - 0.5 * x2**2, -1)

    def score(self, x):
        b = x.reshape(-1, self.dim // 2, 2)
        x1, x2 = b[..., 0], b[..., 1]
        return jnp.stack([-4.0 * x1**3 + 12.0 * x1 + 0.5, -x2], 2).reshape(-1, self.dim)


class MixtureOfStudents(AutogradScore):
    """(1/10) Σ_k Π_j t₂(x_j − m_kj), log t₂(u) = −(3/2) log 2 − (3/2) log(1 + u²/2)."""

    dim = 50

    def __init__(self):
        self.locs = load_table("mos10_locs_d50.csv", 10, 50)

    def log_density(self, x):
        u = x[:, None, :] - self.locs
        comp = jnp.sum(-1.5 * jnp.log1p(u**2 / 2.0) - 1.5 * math.log(2.0), -1)
        return jax.scipy.special.logsumexp(comp, axis=1) - math.log(self.locs.shape[0])


class Robot4(AutogradScore):
    """log N(θ; 0, diag(1, 0.2², …)) + max_g log N(p(θ); g, 0.01² I₂), p the end effector
    of ten unit links, goals (±7, 0), (0, ±7)."""

    dim = 10

    def __init__(self):
        stds = [1.0] + [0.2] * 9
        self.std = jnp.asarray(stds, F32)
        self.prior_norm = sum(-HALF_LOG_2PI - math.log(s) for s in stds)
        self.goals = jnp.asarray([[7.0, 0.0], [-7.0, 0.0], [0.0, 7.0], [0.0, -7.0]], F32)

    def log_density(self, x):
        prior = -0.5 * jnp.sum((x / self.std) ** 2, -1) + self.prior_norm
        phi = jnp.cumsum(x, 1)
        p = jnp.stack([jnp.sum(jnp.cos(phi), -1), jnp.sum(jnp.sin(phi), -1)], 1)
        d2 = jnp.sum((p[:, None, :] - self.goals) ** 2, -1)
        s = 0.01
        lik = -0.5 * d2 / s**2 - 2.0 * (HALF_LOG_2PI + math.log(s))
        return prior + jnp.max(lik, -1)


TARGETS = {
    "gmm9": gmm9,
    "funnel10": Funnel,
    "funnel10_clip30": Funnel,
    "manywell32": lambda: FabManyWell(32),
    "manywell64": lambda: FabManyWell(64),
    "gmm40_50d": gmm40_50d,
    "mos50": MixtureOfStudents,
    "robot4": Robot4,
}
