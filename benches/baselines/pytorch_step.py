#!/usr/bin/env python3
"""PyTorch baseline of one training step, written from docs/spec (method.md §3, §6, §7).

The step is computed the way the reference implementation (sde_sampler) does it: an
Euler–Maruyama loop in Python with one network call per time step,

* PIS on gmm9 (ScoreCtrl, score of the mixture by autograd, detached) or
  DIS on funnel10 (LerpCtrl, analytic funnel score kept in the graph),
* FourierMLP (64 fixed frequencies linspace(0.1, 100, 64), learnable phases, 2-layer time
  embedding, 4-layer exact-GELU trunk of width 64, zero-initialised last layer) and the
  scalar time network s(t),
* LV loss: trajectory driven by the detached control, cost with the live control at every
  step, unbiased variance of R over the kept samples, × 1/d; or KL loss: mean of R with the
  gradient through the trajectory,
* Adam (lr 5e-3, coupled weight decay 1e-7), gradient-norm clipping at 1.0.

Usage: pytorch_step.py --method pis --loss lv --target gmm9 --batch 2048 --steps-grid 200
       --iters 10 --warmup 2 --threads 1 [--device cpu|cuda] [--json]

Prints steps/s, or with --json one line
{"config": "pis-lv-gmm9-b2048-n200", "loss": "lv", "threads": 1, "steps_per_s": ...}.
"""

import argparse
import json
import math
import time
import warnings

# torch warns at import when numpy is absent; the baseline does not use numpy.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

import torch  # noqa: E402
from torch import nn  # noqa: E402

CLIP = 10.0
HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


# ---------------------------------------------------------------- networks (spec §6)


def torch_default_linear(fan_in, fan_out):
    # nn.Linear's default initialisation is U(±1/√fan_in) for bias and (effectively) weights.
    lin = nn.Linear(fan_in, fan_out)
    b = 1.0 / math.sqrt(fan_in)
    nn.init.uniform_(lin.weight, -b, b)
    nn.init.uniform_(lin.bias, -b, b)
    return lin


def const_linear(fan_in, fan_out, bias):
    lin = nn.Linear(fan_in, fan_out)
    nn.init.zeros_(lin.weight)
    nn.init.constant_(lin.bias, bias)
    return lin


class Fourier(nn.Module):
    """[sin(c t + φ), cos(c t + φ)], c = linspace(0.1, 100, 64) fixed, φ ~ N(0, 1) learned."""

    def __init__(self, nfreq=64):
        super().__init__()
        self.register_buffer("freqs", torch.linspace(0.1, 100.0, nfreq))
        self.phases = nn.Parameter(torch.randn(nfreq))

    def forward(self, t):
        arg = t.reshape(-1, 1) * self.freqs + self.phases
        return torch.cat([arg.sin(), arg.cos()], dim=1)


class FourierMLP(nn.Module):
    def __init__(self, dim, width=64, layers=4):
        super().__init__()
        self.emb = Fourier()
        self.time = nn.Sequential(
            torch_default_linear(128, width), nn.GELU(), torch_default_linear(width, width)
        )
        self.inp = torch_default_linear(dim, width)
        hidden = []
        for _ in range(layers - 2):
            hidden += [nn.GELU(), torch_default_linear(width, width)]
        self.trunk = nn.Sequential(*hidden, nn.GELU(), const_linear(width, dim, 0.0))

    def forward(self, t, x):
        # t: a scalar tensor (one time per Euler step); its embedding broadcasts over rows.
        e = self.time(self.emb(t))
        return self.trunk(self.inp(x) + e)


class TimeNet(nn.Module):
    def __init__(self, init_bias, width=64):
        super().__init__()
        self.emb = Fourier()
        self.net = nn.Sequential(
            torch_default_linear(128, width),
            nn.GELU(),
            torch_default_linear(width, width),
            nn.GELU(),
            torch_default_linear(width, width),
            nn.GELU(),
            const_linear(width, 1, init_bias),
        )

    def forward(self, t):
        return self.net(self.emb(t))


class ScoreCtrl(nn.Module):
    """u = clip(NN(t, x)) + clip(∇ log ρ(x)) · clip(s(t)) (PIS)."""

    def __init__(self, dim):
        super().__init__()
        self.nn = FourierMLP(dim)
        self.s = TimeNet(0.01)

    def forward(self, t, x, score):
        return self.nn(t, x).clamp(-CLIP, CLIP) + score.clamp(-CLIP, CLIP) * self.s(t).clamp(
            -CLIP, CLIP
        )


class LerpCtrl(nn.Module):
    """u = clip(NN) + σ(t)·clip((1 − t/T)(−x) + (t/T)∇ log ρ(x))·clip(s(t)) (DIS)."""

    def __init__(self, dim, sigma_fn, horizon):
        super().__init__()
        self.nn = FourierMLP(dim)
        self.s = TimeNet(1.0)
        self.sigma_fn = sigma_fn
        self.horizon = horizon

    def forward(self, t, x, score):
        tt = float(t) / self.horizon
        lerp = ((1.0 - tt) * (-x) + tt * score).clamp(-CLIP, CLIP)
        return self.nn(t, x).clamp(-CLIP, CLIP) + self.sigma_fn(float(t)) * lerp * self.s(
            t
        ).clamp(-CLIP, CLIP)


# ---------------------------------------------------------------- targets (spec §9)


class Gmm9:
    """9 equal-weight modes on {−5, 0, 5}², variance 0.3; score by autograd (detached)."""

    dim = 2
    score_in_graph = False

    def __init__(self):
        c = torch.tensor([-5.0, 0.0, 5.0])
        self.means = torch.cartesian_prod(c, c)
        self.var = 0.3

    def log_density(self, x):
        sq = ((x.unsqueeze(1) - self.means) ** 2).sum(-1)
        comp = -0.5 * sq / self.var - self.dim * (HALF_LOG_2PI + 0.5 * math.log(self.var))
        return torch.logsumexp(comp, dim=1) - math.log(self.means.shape[0])

    def score(self, x):
        with torch.enable_grad():
            y = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.log_density(y).sum(), y)
        return g


class Funnel:
    """Neal's funnel, d = 10: x0 ~ N(0, 9), x_i | x0 ~ N(0, e^{x0}); analytic score in graph."""

    score_in_graph = True

    def __init__(self, dim=10):
        self.dim = dim

    def log_density(self, x):
        m = self.dim - 1
        x0 = x[:, 0]
        sq = (x[:, 1:] ** 2).sum(-1)
        return (
            -(x0**2) / 18.0
            - (HALF_LOG_2PI + math.log(3.0))
            - 0.5 * m * (x0 + 2.0 * HALF_LOG_2PI)
            - 0.5 * sq * torch.exp(-x0)
        )

    def score(self, x):
        m = self.dim - 1
        x0 = x[:, :1]
        rest = x[:, 1:]
        inv_var = torch.exp(-x0)
        s0 = -x0 / 9.0 - 0.5 * m + 0.5 * (rest**2).sum(-1, keepdim=True) * inv_var
        return torch.cat([s0, -rest * inv_var], dim=1)


TARGETS = {"gmm9": Gmm9, "funnel10": lambda: Funnel(10)}


# ---------------------------------------------------------------- methods (spec §5)


def std_normal_log_prob(x):
    return -0.5 * (x**2).sum(-1) - x.shape[1] * HALF_LOG_2PI


def trunc_normal(n, d, q=5e-5):
    # Inverse-CDF sampling of N(0, 1) truncated at the q and 1 − q quantiles.
    u = torch.rand(n, d) * (1.0 - 2.0 * q) + q
    return math.sqrt(2.0) * torch.erfinv(2.0 * u - 1.0)


class Pis:
    """δ_0 prior, dX = σ dW on [0, 5], σ = √0.2, r = 0 (form 3.3)."""

    t_end = 5.0

    def __init__(self):
        self.sig = math.sqrt(0.2)

    def sigma(self, t):
        return self.sig

    def drift(self, t):
        return 0.0

    def prior(self, n, d):
        return torch.zeros(n, d)

    def initial_term(self, x0):
        return torch.zeros(x0.shape[0])

    def terminal_term(self, x, target):
        return std_normal_log_prob(x) - target.log_density(x)


class Dis:
    """gauss_truncate prior, vp_10: μ = +½β(T − t)x, σ = √β(T − t), T = 1 (form 3.2, v = 0)."""

    t_end = 1.0

    def beta(self, s):
        return 0.1 + 9.9 * s / self.t_end

    def sigma(self, t):
        return math.sqrt(self.beta(self.t_end - t))

    def drift(self, t):
        return 0.5 * self.beta(self.t_end - t)

    def prior(self, n, d):
        return trunc_normal(n, d)

    def initial_term(self, x0):
        return std_normal_log_prob(x0)

    def terminal_term(self, x, target):
        return -target.log_density(x)


# ---------------------------------------------------------------- one step (spec §3, §7)


def rnd(method, target, ctrl, n, steps, lv):
    """R per trajectory. LV: w = stopgrad(u), Itô and prior terms kept; KL: w = u, gradient
    through X, no Itô or prior term."""
    d = target.dim
    dt = method.t_end / steps
    sq_dt = math.sqrt(dt)
    x0 = method.prior(n, d)
    x = x0
    r = method.initial_term(x0) if lv else torch.zeros(n)
    for k in range(steps):
        tk = k * dt
        t = torch.tensor(tk)
        if lv:
            x = x.detach()
        if target.score_in_graph and not lv:
            score = target.score(x)
        else:
            score = target.score(x.detach()).detach()
        u = ctrl(t, x, score)
        sigma = method.sigma(tk)
        dw = torch.randn(n, d) * sq_dt
        if lv:
            w = u.detach()
            r = r + (u * (w - 0.5 * u)).sum(1) * dt + (u * dw).sum(1)
        else:
            w = u
            r = r + 0.5 * (u * u).sum(1) * dt
        x = x + (method.drift(tk) * x + sigma * w) * dt + sigma * dw
    return r + method.terminal_term(x, target)


def step(method, target, ctrl, opt, params, n, steps, lv):
    opt.zero_grad(set_to_none=True)
    r = rnd(method, target, ctrl, n, steps, lv)
    if lv:
        keep = torch.isfinite(r) & (r < 1e8)
        loss = r[keep].var() / target.dim
    else:
        loss = r[torch.isfinite(r)].mean() / target.dim
    if not torch.isfinite(loss):
        return float("nan")
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return loss.item()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--method", default="pis", choices=["pis", "dis"])
    ap.add_argument("--loss", default="lv", choices=["lv", "kl"])
    ap.add_argument("--target", default=None, help="gmm9 or funnel10 (default by method)")
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--steps-grid", type=int, default=200)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="0 = torch's default")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the first GPU)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    if a.device not in ("cpu", "cuda"):
        ap.error(f"--device must be cpu or cuda, got {a.device!r}")
    if a.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device")
    # Every tensor and parameter below is created on this device.
    torch.set_default_device(a.device)
    torch.manual_seed(a.seed)
    tname = a.target or ("gmm9" if a.method == "pis" else "funnel10")
    target = TARGETS[tname]()
    if a.method == "pis":
        method = Pis()
        ctrl = ScoreCtrl(target.dim)
    else:
        method = Dis()
        ctrl = LerpCtrl(target.dim, method.sigma, method.t_end)
    params = [p for p in ctrl.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=5e-3, weight_decay=1e-7)
    lv = a.loss == "lv"
    for _ in range(a.warmup):
        step(method, target, ctrl, opt, params, a.batch, a.steps_grid, lv)
    sync = torch.cuda.synchronize if a.device == "cuda" else (lambda: None)
    sync()
    c0 = time.process_time()
    t0 = time.perf_counter()
    last = float("nan")
    for _ in range(a.iters):
        # loss.item() in `step` already waits for the device, as ours reads one value per step.
        last = step(method, target, ctrl, opt, params, a.batch, a.steps_grid, lv)
    sync()
    secs = time.perf_counter() - t0
    cpu = time.process_time() - c0
    sps = a.iters / secs
    label = f"{a.method}-{a.loss}-{tname}-b{a.batch}-n{a.steps_grid}"
    if a.json:
        print(
            json.dumps(
                {
                    "config": label,
                    "loss": a.loss,
                    "threads": a.threads,
                    "device": a.device,
                    "steps_per_s": sps,
                    "seconds": secs,
                    "cpu_seconds": cpu,
                    "cpu_steps_per_s": a.iters / cpu if cpu > 0 else None,
                    "iters": a.iters,
                    "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__,
                    "last_loss": last,
                }
            )
        )
    else:
        print(
            f"{label} (pytorch {torch.__version__}, threads {a.threads}): {sps:.3f} steps/s "
            f"({1e3 * secs / a.iters:.1f} ms/step, last loss {last:.4f})"
        )


if __name__ == "__main__":
    main()
