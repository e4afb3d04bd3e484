"""What one baseline configuration trains, independent of the framework (PyTorch or JAX).

A `RunSpec` comes from the command-line flags of the standard configurations (PIS on gmm9,
DIS on funnel10, LV or KL, the paper's network and optimiser) or from a resolved run config:
the TOML that `lv config show` prints for a preset row, so that the baseline trains exactly
the row `lv bench-step --config` times. The keys read are those below; a setting the
baselines cannot reproduce (another method, control or loss, initial repeats) is refused
with a message naming it. Also here: RSMC's ou_dds step coefficients a_n, shared by both
baselines.
"""

import math
import tomllib
from dataclasses import dataclass

LOSSES = ("lv", "kl", "lv_biased", "vargrad")


@dataclass
class RunSpec:
    method: str  # pis, dis or ou_dds
    target: str  # a registry name
    control: str  # score, lerp or clipped
    loss: str  # one of LOSSES
    batch: int
    steps: int
    # Network: width C, trunk layers L (input, hidden, output), F frequencies in [f_min, f_max].
    width: int = 64
    layers: int = 4
    nfreq: int = 64
    fmin: float = 0.1
    fmax: float = 100.0
    # clip_m (network output, s(t)) and clip_s (score input); s(t)'s initial bias and shape.
    clip_model: float = 10.0
    clip_score: float = 10.0
    scale_init: float | None = None  # None: 0.01 (score), 1.0 (lerp)
    scale_per_dim: bool = False
    # Method parameters: PIS σ and T; ou_dds σ₀ and the total noise.
    sigma: float = math.sqrt(0.2)
    t_end: float = 5.0
    prior_std: float = 1.0
    noise_scale: float = 6.0
    # Optimiser: Adam with coupled weight decay, gradient-norm clipping (None: off).
    lr: float = 5e-3
    weight_decay: float = 1e-7
    grad_clip: float | None = 1.0
    # Off-policy noise scale λ of the driving noise (exploration: `train.explore_scale` when
    # `train.explore_steps` > 0, as at the start of training; 1 = on-policy).
    explore: float = 1.0
    # LV family: samples with R ≥ max_rnd (or not finite) are left out of the variance.
    max_rnd: float | None = 1e8

    @property
    def label(self):
        return f"{self.method}-{self.loss}-{self.target}-b{self.batch}-n{self.steps}"

    @property
    def lv(self):
        """Whether the loss is of the LV family (detached trajectory, Itô term)."""
        return self.loss != "kl"


def from_flags(method, loss, target, batch, steps):
    """The standard configurations: PIS (ScoreCtrl) or DIS (LerpCtrl) at the paper's settings."""
    target = target or ("gmm9" if method == "pis" else "funnel10")
    return RunSpec(
        method=method,
        target=target,
        control="score" if method == "pis" else "lerp",
        loss=loss,
        batch=batch,
        steps=steps,
        max_rnd=1e8 if loss != "kl" else None,
    )


def from_config(path, targets):
    """The RunSpec of a resolved run config at `path`; `targets`: the names with a baseline."""
    with open(path, "rb") as f:
        c = tomllib.load(f)

    def refuse(what):
        raise SystemExit(f"{path}: {what} has no baseline")

    method, loss, target = c["method"], c["loss"], c["target"]
    if target not in targets:
        refuse(f"target {target!r} (have {sorted(targets)})")
    if loss not in LOSSES:
        refuse(f"loss {loss!r}")
    if method not in ("pis", "dis", "ou_dds"):
        refuse(f"method {method!r}")
    sde, tr, model = c["sde"], c["train"], c.get("model", {})
    mlp = model.get("mlp", {})
    if tr.get("initial_repeats", 1) != 1:
        refuse("train.initial_repeats > 1")
    # "default": the method's own control (lerp for DIS, score otherwise).
    control = c.get("control", "default")
    if control == "default":
        control = "lerp" if method == "dis" else "score"
    elif control != "clipped":
        refuse(f"control {control!r}")
    return RunSpec(
        method=method,
        target=target,
        control=control,
        loss=loss,
        batch=tr["batch"],
        steps=sde["steps"],
        width=mlp.get("width", 64),
        layers=mlp.get("num_layers", 4),
        nfreq=mlp.get("num_freqs", 64),
        fmin=mlp.get("freq_min", 0.1),
        fmax=mlp.get("freq_max", 100.0),
        clip_model=model.get("clip_model", 10.0),
        clip_score=model.get("clip_score", 10.0),
        scale_init=model.get("scale_init"),
        scale_per_dim=model.get("scale_per_dim", False),
        sigma=sde.get("sigma", math.sqrt(0.2)),
        t_end=sde.get("t_end", 5.0),
        prior_std=sde.get("prior_std", 1.0),
        noise_scale=sde.get("noise_scale", 6.0),
        lr=tr.get("lr", 5e-3),
        weight_decay=tr.get("weight_decay", 0.0),
        grad_clip=tr.get("grad_clip"),
        max_rnd=tr.get("max_rnd") if loss != "kl" else None,
        explore=tr.get("explore_scale", 1.0) if tr.get("explore_steps", 0) > 0 and loss != "kl" else 1.0,
    )


def ou_dds_alphas(steps, noise_scale, offset=0.008):
    """a_0 … a_{N−1} of RSMC's cos⁴ step scheme: a_n = ns·c_n / Σ_{k=0}^{N} c_k,
    c_k = cos⁴(½π (k/N + s)/(1 + s)), clamped to [0, 1] (lv_core::method::ou_dds_alpha)."""

    def c(k):
        return math.cos(0.5 * math.pi * (k / steps + offset) / (1.0 + offset)) ** 4

    total = sum(c(k) for k in range(steps + 1))
    return [min(max(noise_scale * c(k) / total, 0.0), 1.0) for k in range(steps)]
