#!/usr/bin/env python3
"""JAX baseline of one training step: the computation of pytorch_step.py, written the way
the JAX peers (RSMC's gfn-smc-jax, SCLD, Beyond-ELBOs) write it.

* The whole step is one `jax.jit`-compiled function: the trajectory is a `lax.scan` over the
  N time steps (noise drawn up front, [N, B, d]), the loss its value, the gradient
  `jax.value_and_grad` through the scan, then optax (gradient-norm clipping, coupled weight
  decay, Adam) — in the order of the PyTorch baseline (clip, then Adam with weight decay).
* Every method is one linear step X' = c_k X + g_k w + s_k ξ with the cost
  q_k u·(w − ½u) + i_k u·ξ (LV family; w = stopgrad(u) and the state detached at every step)
  or ½ q_k |u|² (KL; w = u, gradient through X): Euler–Maruyama for PIS and DIS
  (c = 1 + a(t_k)Δ, g = σ(t_k)Δ, s = σ(t_k)λ√Δ, q = Δ, i = λ√Δ) and RSMC's ou_dds kernel
  (c = √(1 − a_n), g = a_n, s = √a_n σ₀λ, q = a_n/σ₀², i = √a_n λ/σ₀), λ the off-policy
  noise scale (exploration; 1 on-policy).
* Networks, controls, targets, losses and settings as in pytorch_step.py (FourierMLP with
  exact GELU, the time network s(t), ScoreCtrl / LerpCtrl / ClippedCtrl with their clips;
  run_spec.py reads the flags or the resolved run config; bench_targets_jax.py has the
  targets). Float32 throughout.

Threads: `--threads 1` runs XLA's CPU backend single-threaded
(--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1) and pins the process to
one CPU; `--threads K` allows K intra-op threads on K CPUs; 0 leaves XLA's default. Both are
set before jax is imported.

Usage: jax_step.py --method pis --loss lv --target gmm9 --batch 2048 --steps-grid 200
       --iters 10 --warmup 2 --threads 1 [--json]
       jax_step.py --config row.toml --iters 3 --warmup 1 --threads 1 --json

Prints steps/s (compilation happens in the warm-up steps and is reported separately), or
with --json one line {"config": ..., "steps_per_s": ..., "compile_seconds": ...}.
"""

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=None, help="resolved run config (`lv config show`)")
    ap.add_argument("--method", default="pis", choices=["pis", "dis"])
    ap.add_argument("--loss", default="lv", choices=["lv", "kl"])
    ap.add_argument("--target", default=None, help="gmm9 or funnel10 (default by method)")
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--steps-grid", type=int, default=200)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="0 = XLA's default")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.warmup < 1:
        ap.error("--warmup must be ≥ 1 (the first step compiles)")
    if a.iters < 1:
        ap.error("--iters must be ≥ 1")
    return a


ARGS = parse_args()
if ARGS.threads > 0:
    # XLA runs work on threads besides its intra-op pool (dispatch, runtime): without this
    # the process used ~1.7 CPU-seconds per wall-second at --threads 1. Pinning it to the
    # first K allowed CPUs makes --threads K mean K cores, as for the other sides.
    allowed = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, allowed[: ARGS.threads])
    os.environ["XLA_FLAGS"] = (
        f"--xla_cpu_multi_thread_eigen={'true' if ARGS.threads > 1 else 'false'} "
        f"intra_op_parallelism_threads={ARGS.threads}"
    )
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from jax import lax  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_spec  # noqa: E402
from bench_targets_jax import TARGETS  # noqa: E402

F32 = jnp.float32


# ---------------------------------------------------------------- networks


def torch_default_linear(key, fan_in, fan_out):
    """nn.Linear's default: weight and bias U(±1/√fan_in); weight stored [in, out]."""
    kw, kb = jax.random.split(key)
    b = 1.0 / math.sqrt(fan_in)
    return {
        "w": jax.random.uniform(kw, (fan_in, fan_out), F32, -b, b),
        "b": jax.random.uniform(kb, (fan_out,), F32, -b, b),
    }


def const_linear(fan_in, fan_out, bias):
    return {"w": jnp.zeros((fan_in, fan_out), F32), "b": jnp.full((fan_out,), bias, F32)}


def dense(p, h):
    return h @ p["w"] + p["b"]


def gelu(h):
    return jax.nn.gelu(h, approximate=False)


def fourier(phases, freqs, t):
    """[sin(c t + φ), cos(c t + φ)] of a scalar t: [2F]."""
    arg = t * freqs + phases
    return jnp.concatenate([jnp.sin(arg), jnp.cos(arg)])


def mlp_init(key, dim, spec):
    keys = jax.random.split(key, 4 + spec.layers)
    c, f2 = spec.width, 2 * spec.nfreq
    return {
        "phases": jax.random.normal(keys[0], (spec.nfreq,), F32),
        "time1": torch_default_linear(keys[1], f2, c),
        "time2": torch_default_linear(keys[2], c, c),
        "inp": torch_default_linear(keys[3], dim, c),
        "hidden": [torch_default_linear(keys[4 + i], c, c) for i in range(spec.layers - 2)],
        "out": const_linear(c, dim, 0.0),
    }


def mlp_apply(p, freqs, t, x):
    """NN(t, x): the time embedding of the scalar t broadcast over the rows of x."""
    e = dense(p["time2"], gelu(dense(p["time1"], fourier(p["phases"], freqs, t))))
    h = dense(p["inp"], x) + e
    for layer in p["hidden"]:
        h = dense(layer, gelu(h))
    return dense(p["out"], gelu(h))


def timenet_init(key, spec, init_bias, out_dim):
    keys = jax.random.split(key, 4)
    c = spec.width
    return {
        "phases": jax.random.normal(keys[0], (spec.nfreq,), F32),
        "l0": torch_default_linear(keys[1], 2 * spec.nfreq, c),
        "l1": torch_default_linear(keys[2], c, c),
        "l2": torch_default_linear(keys[3], c, c),
        "out": const_linear(c, out_dim, init_bias),
    }


def timenet_apply(p, freqs, t):
    h = fourier(p["phases"], freqs, t)
    for name in ("l0", "l1", "l2"):
        h = gelu(dense(p[name], h))
    return dense(p["out"], h)


# ---------------------------------------------------------------- the step


class Model:
    """Parameters, control and per-step coefficients of one RunSpec."""

    def __init__(self, spec, key):
        self.spec = spec
        self.target = TARGETS[spec.target]()
        d = self.target.dim
        self.freqs = jnp.linspace(spec.fmin, spec.fmax, spec.nfreq, dtype=F32)
        k1, k2 = jax.random.split(key)
        self.params = {"nn": mlp_init(k1, d, spec)}
        if spec.control != "clipped":
            default = 0.01 if spec.control == "score" else 1.0
            init = default if spec.scale_init is None else spec.scale_init
            out = d if (spec.control == "score" and spec.scale_per_dim) else 1
            self.params["s"] = timenet_init(k2, spec, init, out)
        self.coefs = self._coefs()

    def _coefs(self):
        """Per step k: (t_k, c_k, g_k, s_k, q_k, i_k, σ_k) as float32 arrays [N]; the noise
        coefficients s_k and i_k include the off-policy scale λ."""
        spec, n, lam = self.spec, self.spec.steps, self.spec.explore
        rows = []
        if spec.method == "ou_dds":
            s0 = spec.prior_std
            for k, a in enumerate(run_spec.ou_dds_alphas(n, spec.noise_scale)):
                rows.append(
                    (k / n, math.sqrt(1 - a), a, math.sqrt(a) * s0 * lam, a / s0**2,
                     math.sqrt(a) * lam / s0, 0.0)
                )
        else:
            t_end = spec.t_end if spec.method == "pis" else 1.0
            dt = t_end / n
            for k in range(n):
                t = k * dt
                if spec.method == "pis":
                    sigma, drift = spec.sigma, 0.0
                else:  # DIS vp_10: β(s) = 0.1 + 9.9 s, σ = √β(T − t), a = ½β(T − t)
                    beta = 0.1 + 9.9 * (t_end - t) / t_end
                    sigma, drift = math.sqrt(beta), 0.5 * beta
                rows.append(
                    (t, 1 + drift * dt, sigma * dt, sigma * lam * math.sqrt(dt), dt,
                     lam * math.sqrt(dt), sigma)
                )
        return tuple(jnp.asarray(col, F32) for col in zip(*rows))

    def control(self, params, t, x, score, sigma_t):
        spec = self.spec
        cm, cs = spec.clip_model, spec.clip_score
        u = jnp.clip(mlp_apply(params["nn"], self.freqs, t, x), -cm, cm)
        if spec.control == "clipped":
            return u
        s = jnp.clip(timenet_apply(params["s"], self.freqs, t), -cm, cm)
        if spec.control == "score":
            return u + jnp.clip(score, -cs, cs) * s
        tt = t / 1.0  # DIS: T = 1
        lerp = jnp.clip((1.0 - tt) * (-x) + tt * score, -cs, cs)
        return u + sigma_t * lerp * s

    def prior(self, key, n, d):
        spec = self.spec
        if spec.method == "pis":
            return jnp.zeros((n, d), F32)
        if spec.method == "ou_dds":
            return spec.prior_std * jax.random.normal(key, (n, d), F32)
        q = 5e-5  # DIS: N(0, 1) truncated at the q and 1 − q quantiles, by inverse CDF
        u = jax.random.uniform(key, (n, d), F32) * (1.0 - 2.0 * q) + q
        return math.sqrt(2.0) * jax.scipy.special.erfinv(2.0 * u - 1.0)

    def terminal(self, x):
        """log p_ref(X_N) − log ρ(X_N) (PIS: N(0, σ²T), ou_dds: N(0, σ₀²)); DIS: −log ρ."""
        spec, d = self.spec, x.shape[1]
        log_rho = self.target.log_density(x)
        if spec.method == "dis":
            return -log_rho
        var = spec.sigma**2 * spec.t_end if spec.method == "pis" else spec.prior_std**2
        ref = -0.5 * jnp.sum(x * x, 1) / var - d * (HALF_LOG_2PI + 0.5 * math.log(var))
        return ref - log_rho

    def rnd(self, params, key):
        spec, target = self.spec, self.target
        n, d, lv = spec.batch, target.dim, spec.lv
        k0, k1 = jax.random.split(key)
        x0 = self.prior(k0, n, d)
        xi = jax.random.normal(k1, (spec.steps, n, d), F32)
        r0 = jnp.zeros((n,), F32)
        if lv and spec.method == "dis":
            r0 = -0.5 * jnp.sum(x0 * x0, 1) - d * HALF_LOG_2PI
        score_in_graph = getattr(target, "score_in_graph", False) and not lv
        needs_score = spec.control != "clipped"

        def body(carry, inp):
            x, r = carry
            t, c, g, s, q, i, sigma_t = inp[:7]
            noise = inp[7]
            if lv:
                x = lax.stop_gradient(x)
            score = None
            if needs_score:
                score = target.score(x) if score_in_graph else lax.stop_gradient(
                    target.score(lax.stop_gradient(x))
                )
            u = self.control(params, t, x, score, sigma_t)
            if lv:
                w = lax.stop_gradient(u)
                dr = q * jnp.sum(u * (w - 0.5 * u), 1) + i * jnp.sum(u * noise, 1)
            else:
                w = u
                dr = 0.5 * q * jnp.sum(u * u, 1)
            return (c * x + g * w + s * noise, r + dr), None

        (x, r), _ = lax.scan(body, (x0, r0), (*self.coefs, xi))
        return r + self.terminal(x)

    def loss(self, params, key):
        spec = self.spec
        r = self.rnd(params, key)
        d = self.target.dim
        keep = jnp.isfinite(r)
        if spec.max_rnd is not None:
            keep = keep & (r < spec.max_rnd)
        n = jnp.sum(keep)
        r0 = jnp.where(keep, r, 0.0)
        mean = jnp.sum(r0) / n
        if spec.loss == "kl":
            return mean / d
        sq = jnp.sum(jnp.where(keep, (r0 - mean) ** 2, 0.0))
        if spec.loss == "lv":
            return sq / (n - 1) / d
        biased = sq / n
        return biased if spec.loss == "lv_biased" else 0.5 * biased


def main():
    a = ARGS
    if a.config:
        spec = run_spec.from_config(a.config, TARGETS)
    else:
        spec = run_spec.from_flags(a.method, a.loss, a.target, a.batch, a.steps_grid)
    key = jax.random.PRNGKey(a.seed)
    key, k_init = jax.random.split(key)
    model = Model(spec, k_init)
    parts = []
    if spec.grad_clip is not None:
        parts.append(optax.clip_by_global_norm(spec.grad_clip))
    if spec.weight_decay:
        parts.append(optax.add_decayed_weights(spec.weight_decay))
    parts.append(optax.adam(spec.lr))
    opt = optax.chain(*parts)
    params = model.params
    opt_state = opt.init(params)

    @jax.jit
    def update(params, opt_state, key):
        loss, grads = jax.value_and_grad(model.loss)(params, key)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def step(params, opt_state, key):
        key, sub = jax.random.split(key)
        params, opt_state, loss = update(params, opt_state, sub)
        return params, opt_state, key, float(loss)  # float() waits for the result

    t0 = time.perf_counter()
    params, opt_state, key, _ = step(params, opt_state, key)
    compile_s = time.perf_counter() - t0
    for _ in range(a.warmup - 1):
        params, opt_state, key, _ = step(params, opt_state, key)
    c0 = time.process_time()
    t0 = time.perf_counter()
    last = float("nan")
    for _ in range(a.iters):
        params, opt_state, key, last = step(params, opt_state, key)
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
                    "device": "cpu",
                    "steps_per_s": sps,
                    "seconds": secs,
                    "cpu_seconds": cpu,
                    "cpu_steps_per_s": a.iters / cpu if cpu > 0 else None,
                    "compile_seconds": compile_s,
                    "iters": a.iters,
                    "jax": jax.__version__,
                    "last_loss": last,
                }
            )
        )
    else:
        print(
            f"{spec.label} (jax {jax.__version__}, threads {a.threads}): {sps:.3f} steps/s "
            f"({1e3 * secs / a.iters:.1f} ms/step, first step with compilation "
            f"{compile_s:.1f} s, last loss {last:.4f})"
        )


if __name__ == "__main__":
    main()
