//! Sample-based metrics for diffusion samplers, one implementation per
//! published convention (`spec/method.md` §10, `spec/benchmarks.md` §4).
//!
//! | function | convention |
//! |---|---|
//! | [`w2_exact`], [`exact_ot_cost`] | exact W2 by linear assignment (Sendera; AS/ASBS `emd2`), §4.3 |
//! | [`sinkhorn_sde`] | Richter–Berner `sde_sampler` Sinkhorn: Euclidean cost, ε = 1e-3, Σ P·M (method §10, §4.2) |
//! | [`sinkhorn_divergence`] | debiased Sinkhorn divergence on ott-jax 0.4.6, squared cost, ε = 0.05·mean C (§4.1) |
//! | [`mmd_median`] | MMD with the median heuristic of `mmd_median.py` (§4.6) |
//! | [`mmd_unbiased`] | standard unbiased MMD² |
//! | [`geometric_w2`] | Hungarian + Kabsch W2 for particle systems (§4.4) |
//! | [`energy_w2`] | 1-D W2 of energies (§4.5) |
//! | [`std_errors`] | `avg_marginal_stddev`, `avg_stddev` (method §10) |
//! | [`mode_coverage`] | fraction of mixture modes hit |
//!
//! Everything is `f64`, pure `ndarray` + `rayon`. [`io`] loads `.npy`/CSV
//! sample files and [`report`] assembles the `lv metrics A B` report.

pub mod cost;
pub mod exact;
pub mod fastmath;
pub mod io;
pub mod lap;
pub mod marginals;
pub mod mmd;
pub mod particles;
pub mod report;
pub mod sinkhorn;

pub use cost::{cost_matrix, CostKind};
pub use exact::{assignment, energy_w2, exact_ot_cost, w2_1d, w2_exact, w2_squared_exact};
pub use io::{load_csv, load_npy, load_samples};
pub use marginals::{mode_coverage, std_errors, std_errors_vs_samples, ModeCoverage, StdErrors};
pub use mmd::{median_bandwidth, mmd_median, mmd_unbiased, MmdOutput};
pub use particles::{geometric_w2, kabsch, particle_sq_distance};
pub use report::{compute_report, render_table, MetricsReport, ReportOptions};
pub use sinkhorn::{
    default_epsilon, reg_ot_cost, sinkhorn_divergence, sinkhorn_sde, DivergenceOptions,
    DivergenceOutput, SdeSinkhornOptions, SinkhornOutput,
};
