//! Log-Gaussian Cox process on the Finnish pines (`lgcp`).

use anyhow::{bail, Context, Result};
use lv_core::Target;
use tch::{Device, Kind, Tensor};

use crate::util::{parse_table, Constant, HALF_LOG_2PI};

const PINES_CSV: &str = include_str!("../data/pines.csv");
const PINES_COUNTS_40: &str = include_str!("../data/pines_bin_counts_40x40.csv");

/// Signal variance of the GP prior.
pub const LGCP_SIGNAL_VARIANCE: f64 = 1.91;
/// Raw length scale β.
pub const LGCP_BETA: f64 = 1.0 / 33.0;
/// Reference log Z: 512.6 (long SMC run, Vargas et al. 2023 / DDS; literature value, not exact).
pub const LGCP_LOG_Z_REF: f64 = 512.6;

/// The 126 pine locations (x, y) in the unit square, parsed from the embedded `pines.csv`
/// (header line, then rows `"i",x,y`).
pub fn pines_points() -> Result<Vec<(f64, f64)>> {
    let mut pts = Vec::new();
    for (i, line) in PINES_CSV.lines().enumerate().skip(1) {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split(',').collect();
        if cols.len() != 3 {
            bail!("pines.csv: line {} has {} columns", i + 1, cols.len());
        }
        let x: f64 = cols[1].parse().context("pines.csv: bad x")?;
        let y: f64 = cols[2].parse().context("pines.csv: bad y")?;
        pts.push((x, y));
    }
    Ok(pts)
}

/// Bin counts of the pines on an N×N grid, flat row-major (index row·N + col, row = ⌊N·x⌋,
/// col = ⌊N·y⌋, a point on the upper edge going to bin N − 1), as the reference code.
pub fn pines_bin_counts(n_bins: usize) -> Result<Vec<f64>> {
    let mut counts = vec![0.0; n_bins * n_bins];
    for (x, y) in pines_points()? {
        let row = ((n_bins as f64 * x).floor() as usize).min(n_bins - 1);
        let col = ((n_bins as f64 * y).floor() as usize).min(n_bins - 1);
        counts[row * n_bins + col] += 1.0;
    }
    Ok(counts)
}

/// Log-Gaussian Cox process posterior on the 40 × 40 pines grid, d = 1600 (method spec §9,
/// unwhitened parametrisation):
///
/// log ρ(x) = log N(x; μ₀·1, K) + Σ_i (x_i·n_i − e^{x_i}/1600),
///
/// K_ij = 1.91·exp(−‖g_i − g_j‖₂/(40β)), β = 1/33, g the integer grid coordinates in row-major
/// order, μ₀ = log 126 − 1.91/2, n_i the bin counts (the shipped `pines_bin_counts_40x40.csv`,
/// identical to binning the embedded `pines.csv`).
///
/// K's Cholesky factor L (float64, `linalg_cholesky`) and W = L⁻¹ are precomputed;
/// log N(x; μ₀, K) = −(d/2)log 2π − Σ log L_ii − ½‖W(x − μ₀)‖².
///
/// Score: analytic, −K⁻¹(x − μ₀) + n − e^x/1600 with K⁻¹ = WᵀW, returned **detached**
/// (`score_in_graph() = false`) to keep the reference code's semantics for Cox (a generic,
/// detached score, method spec §6.6) while avoiding autograd.
///
/// **log Z ≈ 512.6** (long SMC run reported in Vargas et al. 2023; a literature value, not
/// exact). No exact sampler, no reference samples.
///
/// Domain: μ₀ ± 5√1.91 per coordinate.
pub struct Lgcp {
    n_bins: usize,
    mu0: f64,
    log_norm: f64,
    counts: Constant,
    /// Wᵀ = L⁻ᵀ, `[d, d]`.
    w_t: Constant,
}

impl Lgcp {
    /// The 40 × 40 pines LGCP (Cholesky of the 1600 × 1600 Gram matrix at construction).
    pub fn new() -> Result<Self> {
        let n_bins = 40usize;
        let counts = parse_table(PINES_COUNTS_40, 40, 40, "pines_bin_counts_40x40.csv")?;
        Self::with_counts(n_bins, counts)
    }

    fn with_counts(n_bins: usize, counts: Vec<f64>) -> Result<Self> {
        let d = (n_bins * n_bins) as i64;
        let grid: Vec<f64> = (0..n_bins)
            .flat_map(|i| (0..n_bins).flat_map(move |j| [i as f64, j as f64]))
            .collect();
        let g = Tensor::from_slice(&grid).reshape([d, 2]);
        let dist = (g.unsqueeze(1) - g.unsqueeze(0))
            .square()
            .sum_dim_intlist(-1, false, None::<Kind>)
            .sqrt();
        let gram = (dist * (-1.0 / (n_bins as f64 * LGCP_BETA))).exp() * LGCP_SIGNAL_VARIANCE;
        let l = gram
            .f_linalg_cholesky(false)
            .context("lgcp: Cholesky of the Gram matrix failed")?;
        let half_log_det = l
            .diagonal(0, 0, 1)
            .log()
            .sum(Kind::Double)
            .double_value(&[]);
        let eye = Tensor::eye(d, (Kind::Double, Device::Cpu));
        let w = l.linalg_solve_triangular(&eye, false, true, false);
        Ok(Lgcp {
            n_bins,
            mu0: 126f64.ln() - 0.5 * LGCP_SIGNAL_VARIANCE,
            log_norm: -(d as f64) * HALF_LOG_2PI - half_log_det,
            counts: Constant::from_slice(&counts, &[d]),
            w_t: Constant::from_tensor(w.tr().contiguous()),
        })
    }

    /// μ₀ = log 126 − 0.955.
    pub fn mu0(&self) -> f64 {
        self.mu0
    }

    /// The flat bin counts n_i.
    pub fn counts(&self) -> Tensor {
        self.counts.get(Device::Cpu, Kind::Double)
    }

    fn area(&self) -> f64 {
        1.0 / (self.n_bins * self.n_bins) as f64
    }
}

impl Target for Lgcp {
    fn name(&self) -> &str {
        "lgcp"
    }

    fn dim(&self) -> usize {
        self.n_bins * self.n_bins
    }

    fn log_density(&self, x: &Tensor) -> Tensor {
        let white = (x - self.mu0).matmul(&self.w_t.like(x));
        let prior = white.square().sum_dim_intlist(-1, false, None::<Kind>) * -0.5 + self.log_norm;
        let lik = (x * self.counts.like(x).unsqueeze(0) - x.exp() * self.area()).sum_dim_intlist(
            -1,
            false,
            None::<Kind>,
        );
        prior + lik
    }

    fn score(&self, x: &Tensor) -> Tensor {
        let x = x.detach();
        let w_t = self.w_t.like(&x);
        let white = (&x - self.mu0).matmul(&w_t);
        let prior = -white.matmul(&w_t.tr());
        prior + self.counts.like(&x).unsqueeze(0) - x.exp() * self.area()
    }

    /// 512.6 (literature SMC estimate, not exact).
    fn log_z(&self) -> Option<f64> {
        Some(LGCP_LOG_Z_REF)
    }

    fn domain(&self) -> Vec<(f64, f64)> {
        let h = 5.0 * LGCP_SIGNAL_VARIANCE.sqrt();
        vec![(self.mu0 - h, self.mu0 + h); self.dim()]
    }
}
