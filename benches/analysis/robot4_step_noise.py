"""How far the last time step's noise moves Robot4's end effector, for PIS on a uniform grid
and for the ou_dds reference (docs/conventions.md, "Why Robot4, GMM40-50 and MoS-50 need the
ou_dds reference").

For joint angles θ with φ_i = Σ_{j≤i} θ_j the end effector is p = (Σ cos φ_i, Σ sin φ_i); its
Jacobian has columns ∂p/∂θ_j = Σ_{i≥j} (−sin φ_i, cos φ_i). Isotropic noise of variance v per
coordinate moves p by √(v·‖J‖_F²) (root mean square). The likelihood is N(p; goal, 0.01² I).

    python benches/analysis/robot4_step_noise.py   (needs numpy)
"""

import math
import pathlib

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
ref = np.load(ROOT / "crates/lv-targets/data/robot4_reference_jax0428_f32.npy").astype(np.float64)
phi = np.cumsum(ref, axis=1)
jx = np.cumsum((-np.sin(phi))[:, ::-1], axis=1)[:, ::-1]
jy = np.cumsum(np.cos(phi)[:, ::-1], axis=1)[:, ::-1]
fro2 = float(((jx**2 + jy**2).sum(axis=1)).mean())
lik_std = 0.01
print(f"mean ||J||_F^2 over the {len(ref)} reference samples: {fro2:.1f}")


def report(name, var):
    rms = math.sqrt(var * fro2)
    print(
        f"{name}: noise std per joint {math.sqrt(var):.2e}, end effector moved by {rms:.2e} "
        f"({rms / lik_std:.3g} likelihood stds; log-likelihood spread ~ {0.5 * (rms / lik_std) ** 2:.3g})"
    )


# PIS (the LV paper's): dX = σ(u dt + dW), σ² = 0.2, T = 5, N = 100 uniform steps.
report("PIS, uniform grid, last step", 0.2 * 5.0 / 100)
# ou_dds (RSMC): a_n = 6 c_n / Σ_{k=0}^{N} c_k, c_k = cos⁴(½π (k/N + 0.008)/1.008), noise a_n σ₀².
n = 128
c = np.cos(0.5 * np.pi * ((np.arange(n + 1) / n + 0.008) / 1.008)) ** 4
a = 6.0 * c / c.sum()
for sigma0 in (2.0, 1.0):
    for k in (n - 1, n - 5, n - 10):
        report(f"ou_dds σ₀ = {sigma0:g}, step {k} of {n}", a[k] * sigma0**2)
