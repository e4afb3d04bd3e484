"""lv_metrics against POT, SciPy and ott-jax on the same 2000 × 2000 inputs, in one run.

    python benches/python/bench_metrics.py [--threads 1] [--n 2000] [--d 10] [--rounds 3]

Prints one markdown table: the median wall time over `rounds` of each implementation and the
ratio to lv_metrics. Thread counts are fixed before the libraries load (RAYON_NUM_THREADS for
lv_metrics, OMP/OPENBLAS/MKL for NumPy/SciPy/POT, XLA's flags for JAX).

What is compared (the same problem, each in its own library's convention where they differ):
- exact W2: lv_metrics.w2 | SciPy linear_sum_assignment on the squared-distance matrix |
  POT ot.emd2 (network simplex). Identical values (checked).
- debiased Sinkhorn divergence, ott-jax 0.4.6 convention (squared cost, ε = 0.05·mean C):
  lv_metrics.sinkhorn_divergence | ott-jax sinkhorn_divergence (jit, compiled before timing) |
  POT empirical_sinkhorn_divergence (log domain) at the same ε: three Sinkhorn solves each.
- sde_sampler Sinkhorn (Euclidean cost, ε = 1e-3, 100 iterations): lv_metrics.sinkhorn_sde |
  POT sinkhorn2 (log domain) with numItermax = 100 (at this ε neither converges in 100
  iterations, so both do 100 full log-domain iterations).
- MMD with the median heuristic: lv_metrics.mmd_median | a NumPy/SciPy transcription of
  mmd_median.py (cdist, median, exp).
"""

import argparse
import os
import sys
import time

p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=1)
p.add_argument("--n", type=int, default=2000)
p.add_argument("--d", type=int, default=10)
p.add_argument("--rounds", type=int, default=3)
args = p.parse_args()
t = str(args.threads)
for k in ["RAYON_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"]:
    os.environ[k] = t
os.environ["XLA_FLAGS"] = (
    f"--xla_cpu_multi_thread_eigen={'true' if args.threads > 1 else 'false'} "
    f"intra_op_parallelism_threads={t}"
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402
import ot  # noqa: E402
import scipy.optimize  # noqa: E402
import scipy.spatial.distance  # noqa: E402

import lv_metrics  # noqa: E402

try:
    import jax  # noqa: E402

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp  # noqa: E402
    from ott.geometry import pointcloud  # noqa: E402
    from ott.tools import sinkhorn_divergence as ott_sd  # noqa: E402

    HAVE_OTT = True
except Exception as e:  # noqa: BLE001
    print(f"ott-jax not available ({e}); its column is left out", file=sys.stderr)
    HAVE_OTT = False


def timed(f):
    times, value = [], None
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        value = f()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), value


rng = np.random.default_rng(0)
x = rng.normal(size=(args.n, args.d))
y = rng.normal(size=(args.n, args.d)) * 1.2 + 0.3
w = np.full(args.n, 1.0 / args.n)

rows = []


def row(metric, ours, others):
    t_ours, v_ours = timed(ours)
    cells = []
    for name, f in others:
        t, v = timed(f)
        cells.append((name, t, v))
    rows.append((metric, t_ours, v_ours, cells))


def scipy_w2():
    c = scipy.spatial.distance.cdist(x, y, "sqeuclidean")
    r, k = scipy.optimize.linear_sum_assignment(c)
    return np.sqrt(c[r, k].mean())


def pot_w2():
    return np.sqrt(ot.emd2(w, w, ot.dist(x, y), numItermax=10_000_000))


row("exact W2", lambda: lv_metrics.w2(x, y), [("SciPy lsa", scipy_w2), ("POT emd2", pot_w2)])

eps = lv_metrics.default_epsilon(x, y)
sd_others = [
    (
        "POT (log)",
        lambda: ot.bregman.empirical_sinkhorn_divergence(
            x, y, eps, method="sinkhorn_log", stopThr=1e-3, numIterMax=2000
        ),
    )
]
if HAVE_OTT:
    xj, yj = jnp.asarray(x), jnp.asarray(y)

    @jax.jit
    def ott_div(a, b):
        out = ott_sd.sinkhorn_divergence(pointcloud.PointCloud, a, b, epsilon=eps)
        return out.divergence if hasattr(out, "divergence") else out[0]

    ott_div(xj, yj).block_until_ready()  # compile outside the timing
    sd_others.insert(0, ("ott-jax (jit)", lambda: float(ott_div(xj, yj).block_until_ready())))
row("Sinkhorn divergence", lambda: lv_metrics.sinkhorn_divergence(x, y), sd_others)

m_euc = None


def pot_sde():
    global m_euc
    m_euc = ot.dist(x, y, metric="euclidean")
    return ot.sinkhorn2(w, w, m_euc, 1e-3, method="sinkhorn_log", numItermax=100, stopThr=0.0)


row("sde_sampler Sinkhorn", lambda: lv_metrics.sinkhorn_sde(x, y), [("POT (log, 100 it)", pot_sde)])


def numpy_mmd():
    z = np.vstack([x, y])
    dist = scipy.spatial.distance.cdist(z, z)
    h = np.median(dist[np.triu_indices(len(z))])
    k = np.exp(-(dist**2) / (2 * h * h))
    n = len(x)
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    mmd2 = kxx.sum() / (n * (n - 1)) + kyy.sum() / (n * (n - 1)) - 2 * kxy.mean()
    return np.sqrt(max(1e-20, mmd2))


row("MMD (median)", lambda: lv_metrics.mmd_median(x, y), [("NumPy/SciPy", numpy_mmd)])

print(f"n = {args.n} vs {args.n}, d = {args.d}, threads = {args.threads}, median of {args.rounds} rounds\n")
print("| metric | lv_metrics (s) | peer | peer (s) | peer / lv_metrics | values (lv, peer) |")
print("|---|---|---|---|---|---|")
for metric, t_ours, v_ours, cells in rows:
    for name, t, v in cells:
        print(f"| {metric} | {t_ours:.3f} | {name} | {t:.3f} | {t / t_ours:.1f}× | {float(v_ours):.6g}, {float(v):.6g} |")
