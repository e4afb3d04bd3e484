#!/usr/bin/env python3
"""PyTorch baseline of one training step, written from docs/spec (method.md §3, §6, §7).

The step is computed the way the reference implementations do it (sde_sampler; for the
ou_dds rows RSMC's gfn-smc-jax): a loop in Python with one network call per time step,

* PIS on gmm9 (ScoreCtrl, score of the mixture by autograd, detached) or
  DIS on funnel10 (LerpCtrl, analytic funnel score kept in the graph),
* or, with ``--config`` (a resolved run config, the output of ``lv config show``), the
  row's method (pis, dis or RSMC's discrete-time ``ou_dds`` reference), control (score,
  lerp or clipped), network sizes, clip values, prior scale, loss and optimiser settings,
  on any target of this file or of bench_targets_torch.py (manywell64, gmm40_50d, mos50,
  robot4),
* FourierMLP (F fixed frequencies linspace(f_min, f_max, F), learnable phases, 2-layer time
  embedding, exact-GELU trunk of width C with L linear layers, zero-initialised last layer)
  and the time network s(t) (scalar, or one value per dimension),
* LV loss: trajectory driven by the detached control, cost with the live control at every
  step, unbiased variance of R over the kept samples, × 1/d (``lv``) or the biased variance
  (``lv_biased``, RSMC), ½ × the biased variance (``vargrad``); or KL loss: mean of R with
  the gradient through the trajectory,
* Adam (default lr 5e-3, coupled weight decay 1e-7), gradient-norm clipping at 1.0.

Usage: pytorch_step.py --method pis --loss lv --target gmm9 --batch 2048 --steps-grid 200
       --iters 10 --warmup 2 --threads 1 [--device cpu|cuda] [--json]
       pytorch_step.py --config row.toml --iters 3 --warmup 1 --threads 1 --json

Prints steps/s, or with --json one line
{"config": "pis-lv-gmm9-b2048-n200", "loss": "lv", "threads": 1, "steps_per_s": ...}.
"""

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

# torch warns at import when numpy is absent; the baseline does not use numpy.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

import torch  # noqa: E402
from torch import nn  # noqa: E402

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


class Net:
    """Sizes of the networks: width C, trunk layers L, F frequencies in [f_min, f_max]."""

    def __init__(self, width=64, layers=4, nfreq=64, fmin=0.1, fmax=100.0):
        self.width, self.layers = width, layers
        self.nfreq, self.fmin, self.fmax = nfreq, fmin, fmax


class Fourier(nn.Module):
    """[sin(c t + φ), cos(c t + φ)], c = linspace(f_min, f_max, F) fixed, φ ~ N(0, 1) learned."""

    def __init__(self, net):
        super().__init__()
        self.register_buffer("freqs", torch.linspace(net.fmin, net.fmax, net.nfreq))
        self.phases = nn.Parameter(torch.randn(net.nfreq))

    def forward(self, t):
        arg = t.reshape(-1, 1) * self.freqs + self.phases
        return torch.cat([arg.sin(), arg.cos()], dim=1)


class FourierMLP(nn.Module):
    def __init__(self, dim, net):
        super().__init__()
        width = net.width
        self.emb = Fourier(net)
        self.time = nn.Sequential(
            torch_default_linear(2 * net.nfreq, width),
            nn.GELU(),
            torch_default_linear(width, width),
        )
        self.inp = torch_default_linear(dim, width)
        hidden = []
        for _ in range(net.layers - 2):
            hidden += [nn.GELU(), torch_default_linear(width, width)]
        self.trunk = nn.Sequential(*hidden, nn.GELU(), const_linear(width, dim, 0.0))

    def forward(self, t, x):
        # t: a scalar tensor (one time per Euler step); its embedding broadcasts over rows.
        e = self.time(self.emb(t))
        return self.trunk(self.inp(x) + e)


class TimeNet(nn.Module):
    def __init__(self, init_bias, net, out_dim=1):
        super().__init__()
        width = net.width
        self.emb = Fourier(net)
        self.net = nn.Sequential(
            torch_default_linear(2 * net.nfreq, width),
            nn.GELU(),
            torch_default_linear(width, width),
            nn.GELU(),
            torch_default_linear(width, width),
            nn.GELU(),
            const_linear(width, out_dim, init_bias),
        )

    def forward(self, t):
        return self.net(self.emb(t))


class Clips:
    """clip_m (network output and s(t)) and clip_s (score input), 10 and 10 by default."""

    def __init__(self, model=10.0, score=10.0):
        self.m, self.s = model, score


class ScoreCtrl(nn.Module):
    """u = clip_m(NN(t, x)) + clip_s(∇ log ρ(x)) · clip_m(s(t)) (PIS, ou_dds)."""

    needs_score = True

    def __init__(self, dim, net=None, clips=None, scale_init=0.01, per_dim=False):
        super().__init__()
        net = net or Net()
        self.c = clips or Clips()
        self.nn = FourierMLP(dim, net)
        self.s = TimeNet(scale_init, net, dim if per_dim else 1)

    def forward(self, t, x, score):
        cm, cs = self.c.m, self.c.s
        return self.nn(t, x).clamp(-cm, cm) + score.clamp(-cs, cs) * self.s(t).clamp(-cm, cm)


class ClippedCtrl(nn.Module):
    """u = clip_m(NN(t, x)) (the gradient-free rows)."""

    needs_score = False

    def __init__(self, dim, net=None, clips=None):
        super().__init__()
        self.c = clips or Clips()
        self.nn = FourierMLP(dim, net or Net())

    def forward(self, t, x, score):
        return self.nn(t, x).clamp(-self.c.m, self.c.m)


class LerpCtrl(nn.Module):
    """u = clip_m(NN) + σ(t)·clip_s((1 − t/T)(−x) + (t/T)∇ log ρ(x))·clip_m(s(t)) (DIS)."""

    needs_score = True

    def __init__(self, dim, sigma_fn, horizon, net=None, clips=None, scale_init=1.0):
        super().__init__()
        net = net or Net()
        self.c = clips or Clips()
        self.nn = FourierMLP(dim, net)
        self.s = TimeNet(scale_init, net)
        self.sigma_fn = sigma_fn
        self.horizon = horizon

    def forward(self, t, x, score):
        cm, cs = self.c.m, self.c.s
        tt = float(t) / self.horizon
        lerp = ((1.0 - tt) * (-x) + tt * score).clamp(-cs, cs)
        return self.nn(t, x).clamp(-cm, cm) + self.sigma_fn(float(t)) * lerp * self.s(
            t
        ).clamp(-cm, cm)


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


# funnel10_clip30 has funnel10's density (its clip only concerns the reference samples).
TARGETS = {"gmm9": Gmm9, "funnel10": lambda: Funnel(10), "funnel10_clip30": lambda: Funnel(10)}

# The benchmark-scale targets (manywell64, gmm40_50d, mos50, robot4) live beside this file.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_spec  # noqa: E402
from bench_targets_torch import TARGETS as BENCH_TARGETS  # noqa: E402

TARGETS.update(BENCH_TARGETS)


# ---------------------------------------------------------------- methods (spec §5)


def std_normal_log_prob(x):
    return -0.5 * (x**2).sum(-1) - x.shape[1] * HALF_LOG_2PI


def trunc_normal(n, d, q=5e-5):
    # Inverse-CDF sampling of N(0, 1) truncated at the q and 1 − q quantiles.
    u = torch.rand(n, d) * (1.0 - 2.0 * q) + q
    return math.sqrt(2.0) * torch.erfinv(2.0 * u - 1.0)


class Euler:
    """Euler–Maruyama on [0, T] with drift a(t)·x and diffusion σ(t) (forms 3.2, 3.3).

    Step k: t_k = kΔ, ΔW = λ√Δ ξ, X' = X + (a(t_k)X + σ(t_k)w)Δ + σ(t_k)ΔW; the cost of the
    LV modes u·(w − ½u)Δ + u·ΔW, of KL ½|u|²Δ (λ: the off-policy noise scale, 1 on-policy)."""

    lam = 1.0

    def time(self, k, steps):
        return k * self.t_end / steps

    def advance(self, k, steps, x, u, w, xi, lv):
        dt = self.t_end / steps
        tk = k * dt
        dw = xi * (self.lam * math.sqrt(dt))
        sigma = self.sigma(tk)
        if lv:
            dr = (u * (w - 0.5 * u)).sum(1) * dt + (u * dw).sum(1)
        else:
            dr = 0.5 * (u * u).sum(1) * dt
        return x + (self.drift(tk) * x + sigma * w) * dt + sigma * dw, dr


class Pis(Euler):
    """δ_0 prior, dX = σ dW on [0, T] (default T = 5, σ = √0.2), r = 0 (form 3.3)."""

    def __init__(self, sigma=math.sqrt(0.2), t_end=5.0):
        self.sig, self.t_end = sigma, t_end

    def sigma(self, t):
        return self.sig

    def drift(self, t):
        return 0.0

    def prior(self, n, d):
        return torch.zeros(n, d)

    def initial_term(self, x0):
        return torch.zeros(x0.shape[0])

    def terminal_term(self, x, target):
        # log N(x; 0, σ²T I) − log ρ(x).
        var = self.sig**2 * self.t_end
        ref = -0.5 * (x**2).sum(-1) / var - x.shape[1] * (HALF_LOG_2PI + 0.5 * math.log(var))
        return ref - target.log_density(x)


class Dis(Euler):
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


class OuDds:
    """RSMC's discrete-time OU reference ("ou_dds"): prior N(0, σ₀²I), step n on t_n = n/N,

    X' = √(1 − a_n)X + a_n w + √a_n σ₀λ ξ, a_n the cos⁴ scheme with total noise `noise_scale`
    (offset 0.008); the LV cost (a_n/σ₀²) u·(w − ½u) + (√a_n λ/σ₀) u·ξ, KL ½(a_n/σ₀²)|u|²;
    R ends with log N(X_N; 0, σ₀²I) − log ρ(X_N)."""

    lam = 1.0

    def __init__(self, steps, sigma0=1.0, noise_scale=6.0):
        self.a = run_spec.ou_dds_alphas(steps, noise_scale)
        self.sigma0 = sigma0

    def time(self, k, steps):
        return k / steps

    def advance(self, k, steps, x, u, w, xi, lv):
        a, s0, lam = self.a[k], self.sigma0, self.lam
        if lv:
            dr = (a / s0**2) * (u * (w - 0.5 * u)).sum(1) + (math.sqrt(a) * lam / s0) * (
                u * xi
            ).sum(1)
        else:
            dr = 0.5 * (a / s0**2) * (u * u).sum(1)
        return math.sqrt(1.0 - a) * x + a * w + math.sqrt(a) * s0 * lam * xi, dr

    def prior(self, n, d):
        return torch.randn(n, d) * self.sigma0

    def initial_term(self, x0):
        return torch.zeros(x0.shape[0])

    def terminal_term(self, x, target):
        s0 = self.sigma0
        ref = -0.5 * (x**2).sum(-1) / s0**2 - x.shape[1] * (HALF_LOG_2PI + math.log(s0))
        return ref - target.log_density(x)


# ---------------------------------------------------------------- one step (spec §3, §7)


def rnd(method, target, ctrl, n, steps, lv):
    """R per trajectory. LV: w = stopgrad(u), Itô and prior terms kept; KL: w = u, gradient
    through X, no Itô or prior term."""
    d = target.dim
    x0 = method.prior(n, d)
    x = x0
    r = method.initial_term(x0) if lv else torch.zeros(n)
    for k in range(steps):
        t = torch.tensor(method.time(k, steps))
        if lv:
            x = x.detach()
        if not ctrl.needs_score:
            score = None
        elif target.score_in_graph and not lv:
            score = target.score(x)
        else:
            score = target.score(x.detach()).detach()
        u = ctrl(t, x, score)
        xi = torch.randn(n, d)
        w = u.detach() if lv else u
        x, dr = method.advance(k, steps, x, u, w, xi, lv)
        r = r + dr
    return r + method.terminal_term(x, target)


def batch_loss(loss, r, dim, max_rnd):
    """lv: unbiased variance × 1/d; lv_biased: biased variance; vargrad: ½ biased variance;
    kl: mean × 1/d — over the finite R below max_rnd (LV family) or the finite R (KL)."""
    if loss == "kl":
        return r[torch.isfinite(r)].mean() / dim
    keep = torch.isfinite(r)
    if max_rnd is not None:
        keep = keep & (r < max_rnd)
    rk = r[keep]
    if loss == "lv":
        return rk.var() / dim
    biased = ((rk - rk.mean()) ** 2).mean()
    return biased if loss == "lv_biased" else 0.5 * biased


def step(run, opt, params):
    spec = run.spec
    opt.zero_grad(set_to_none=True)
    r = rnd(run.method, run.target, run.ctrl, spec.batch, spec.steps, spec.lv)
    loss = batch_loss(spec.loss, r, run.target.dim, spec.max_rnd)
    if not torch.isfinite(loss):
        return float("nan")
    loss.backward()
    if spec.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(params, spec.grad_clip)
    opt.step()
    return loss.item()


class Run:
    """The modules of one RunSpec: method, target, control (and the spec)."""

    def __init__(self, spec):
        self.spec = spec
        self.target = TARGETS[spec.target]()
        d = self.target.dim
        net = Net(spec.width, spec.layers, spec.nfreq, spec.fmin, spec.fmax)
        clips = Clips(spec.clip_model, spec.clip_score)
        if spec.method == "pis":
            self.method = Pis(spec.sigma, spec.t_end)
        elif spec.method == "dis":
            self.method = Dis()
        else:
            self.method = OuDds(spec.steps, spec.prior_std, spec.noise_scale)
        self.method.lam = spec.explore
        if spec.control == "score":
            init = 0.01 if spec.scale_init is None else spec.scale_init
            self.ctrl = ScoreCtrl(d, net, clips, init, spec.scale_per_dim)
        elif spec.control == "clipped":
            self.ctrl = ClippedCtrl(d, net, clips)
        else:
            init = 1.0 if spec.scale_init is None else spec.scale_init
            self.ctrl = LerpCtrl(d, self.method.sigma, self.method.t_end, net, clips, init)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=None, help="resolved run config (`lv config show`)")
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
    if a.config:
        spec = run_spec.from_config(a.config, TARGETS)
    else:
        spec = run_spec.from_flags(a.method, a.loss, a.target, a.batch, a.steps_grid)
    run = Run(spec)
    params = [p for p in run.ctrl.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)
    for _ in range(a.warmup):
        step(run, opt, params)
    sync = torch.cuda.synchronize if a.device == "cuda" else (lambda: None)
    sync()
    c0 = time.process_time()
    t0 = time.perf_counter()
    last = float("nan")
    for _ in range(a.iters):
        # loss.item() in `step` already waits for the device, as ours reads one value per step.
        last = step(run, opt, params)
    sync()
    secs = time.perf_counter() - t0
    cpu = time.process_time() - c0
    sps = a.iters / secs
    if a.json:
        print(
            json.dumps(
                {
                    "config": spec.label,
                    "loss": spec.loss,
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
            f"{spec.label} (pytorch {torch.__version__}, threads {a.threads}): {sps:.3f} steps/s "
            f"({1e3 * secs / a.iters:.1f} ms/step, last loss {last:.4f})"
        )


if __name__ == "__main__":
    main()
