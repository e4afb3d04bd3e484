"""Sample-based metrics of diffusion samplers, one function per published convention.

The compiled functions come from the Rust crate ``lv-metrics`` (no JAX, no pykeops, no
torch). Inputs are array-likes of shape ``[n, d]`` (``[n]`` for the 1-D metrics); float64
arrays in any memory order are read without a copy, other dtypes are converted to float64
once. The GIL is released while a metric is computed. Bad input raises ``ValueError``.

==========================  ===============================================================
function                    convention
==========================  ===============================================================
``w2``, ``w2_squared``      exact W2 by linear assignment, squared Euclidean cost (POT emd2)
``exact_ot_cost``           optimal assignment cost of a square matrix, uniform weights
``sinkhorn_sde``            Richter & Berner's sde_sampler Sinkhorn: Euclidean cost, ε=1e-3
``sinkhorn_divergence``     debiased Sinkhorn divergence of ott-jax 0.4.6, ε=0.05·mean C
``reg_ot_cost``             ott-jax's entropic OT cost (one term of the divergence)
``mmd_median``              MMD with the median heuristic of mmd_median.py (RSMC, SCLD)
``mmd_unbiased``            unbiased MMD² (Gretton et al.), median bandwidth over i < j
``geometric_w2``            Hungarian + Kabsch W2 for particle systems (DW-4, LJ-13)
``w2_1d``, ``energy_w2``    1-D W2 (POT emd2_1d), of energies for E-W2
``mode_coverage``           fraction of mixture modes receiving ≥ min_share of the samples
``std_errors``              Δstd of the Richter & Berner code (unbiased stds)
``report``                  every metric at once, as ``lv metrics A B --json``
==========================  ===============================================================
"""

from ._lv_metrics import (  # noqa: F401
    __version__,
    assignment,
    default_epsilon,
    energy_w2,
    exact_ot_cost,
    geometric_w2,
    median_bandwidth,
    mmd_median,
    mmd_unbiased,
    mode_coverage,
    reg_ot_cost,
    report,
    sinkhorn_divergence,
    sinkhorn_sde,
    std_errors,
    std_errors_vs_samples,
    w2,
    w2_1d,
    w2_squared,
)

__all__ = [
    "assignment",
    "default_epsilon",
    "energy_w2",
    "exact_ot_cost",
    "geometric_w2",
    "median_bandwidth",
    "mmd_median",
    "mmd_unbiased",
    "mode_coverage",
    "reg_ot_cost",
    "report",
    "sinkhorn_divergence",
    "sinkhorn_sde",
    "std_errors",
    "std_errors_vs_samples",
    "w2",
    "w2_1d",
    "w2_squared",
]
