//! Planar robot arm with four goals (`robot4`).

use anyhow::{Context, Result};
use lv_core::Target;
use ndarray::Array2;
use ndarray_npy::ReadNpyExt;
use tch::{Kind, Tensor};

use crate::util::{Constant, HALF_LOG_2PI};

const ROBOT4_REFERENCE: &[u8] = include_bytes!("../data/robot4_reference_jax0428_f32.npy");

/// The four goals (7, 0), (−7, 0), (0, 7), (0, −7).
pub const ROBOT4_GOALS: [[f64; 2]; 4] = [[7.0, 0.0], [-7.0, 0.0], [0.0, 7.0], [0.0, -7.0]];
/// Likelihood std of the end effector around a goal.
pub const ROBOT_LIKELIHOOD_STD: f64 = 0.01;

/// End effector p(θ) = (Σ_i cos φ_i, Σ_i sin φ_i), φ_i = Σ_{j≤i} θ_j, of unit links, for
/// `theta: [n, L]`; returns `[n, 2]`.
pub fn end_effector(theta: &Tensor) -> Tensor {
    let phi = theta.cumsum(1, None::<Kind>);
    Tensor::stack(
        &[
            phi.cos().sum_dim_intlist(-1, false, None::<Kind>),
            phi.sin().sum_dim_intlist(-1, false, None::<Kind>),
        ],
        1,
    )
}

/// The 10-link planar robot with four goals (benchmarks spec §3.6), d = 10:
///
/// log ρ(θ) = log N(θ; 0, diag(1, 0.2², …, 0.2²)) + max_g log N(p(θ); g, 0.01² I₂),
///
/// g ∈ {(±7, 0), (0, ±7)}, p the end effector ([`end_effector`]); all terms normalised as in the
/// reference code, but **log Z is unknown** (`None`). Score: analytic on the host for float32
/// CPU batches without a graph ([`PlanarRobot4::score_native`]), else autograd (detached, as
/// the reference code's); both take the gradient of the active (nearest) goal's term.
///
/// **Reference samples**: the Robot4 set re-derived from `planar_robot_gt_10k.npz` by rotating
/// θ₁ by kπ/2 and Gumbel-top-k resampling with JAX key 0 (shared/data README §1), **legacy
/// threefry variant** (`planar_robot4_gt_10k_derived_jax0428.csv`, matching SCLD's jax 0.4.28),
/// shipped as float32 `.npy` (the values are float32) and returned as float64 `[10000, 10]`.
/// Every row's end effector is within 0.039 of a goal.
///
/// Domain: θ₁ ∈ [−4, 4] (the reference θ₁ lie in [−π, π)), θ_{i≥2} ∈ [−1.5, 1.5].
pub struct PlanarRobot4 {
    prior_std: Vec<f64>,
    prior_std_t: Constant,
    goals: Constant,
}

impl PlanarRobot4 {
    /// The Robot4 target.
    pub fn new() -> Self {
        let mut prior_std = vec![0.2; 10];
        prior_std[0] = 1.0;
        let goals: Vec<f64> = ROBOT4_GOALS.iter().flatten().copied().collect();
        PlanarRobot4 {
            prior_std_t: Constant::from_slice(&prior_std, &[10]),
            prior_std,
            goals: Constant::from_slice(&goals, &[4, 2]),
        }
    }
}

impl PlanarRobot4 {
    /// The analytic score on the host (CPU float32 batches without a graph), per row in f64:
    /// with φ_i = Σ_{j≤i} θ_j, p = (Σ cos φ_i, Σ sin φ_i), g* the nearest goal (the active
    /// term of the max; the first on ties) and r = (p − g*)/s²,
    ///
    /// ∂log ρ/∂θ_j = −θ_j/std_j² + Σ_{i≥j} (r_x sin φ_i − r_y cos φ_i)
    ///
    /// (one suffix sum per row). Same value as autograd of [`Target::log_density`] to float32
    /// rounding (tests/scores.rs).
    fn score_native(&self, x: &Tensor) -> Option<Tensor> {
        let inv_var: Vec<f64> = self.prior_std.iter().map(|s| 1.0 / (s * s)).collect();
        let inv_s2 = 1.0 / (ROBOT_LIKELIHOOD_STD * ROBOT_LIKELIHOOD_STD);
        crate::util::native_rows(x, |th, out| {
            let l = th.len();
            let mut cos = [0f64; 16];
            let mut sin = [0f64; 16];
            let (mut heap_c, mut heap_s) = (Vec::new(), Vec::new());
            let (c, s): (&mut [f64], &mut [f64]) = if l <= 16 {
                (&mut cos[..l], &mut sin[..l])
            } else {
                heap_c.resize(l, 0.0);
                heap_s.resize(l, 0.0);
                (&mut heap_c, &mut heap_s)
            };
            let (mut phi, mut px, mut py) = (0f64, 0f64, 0f64);
            for i in 0..l {
                phi += th[i] as f64;
                c[i] = phi.cos();
                s[i] = phi.sin();
                px += c[i];
                py += s[i];
            }
            let mut best = (f64::INFINITY, 0.0, 0.0);
            for g in ROBOT4_GOALS {
                let d2 = (px - g[0]).powi(2) + (py - g[1]).powi(2);
                if d2 < best.0 {
                    best = (d2, g[0], g[1]);
                }
            }
            let (rx, ry) = ((px - best.1) * inv_s2, (py - best.2) * inv_s2);
            let mut suffix = 0f64;
            for j in (0..l).rev() {
                suffix += rx * s[j] - ry * c[j];
                out[j] = (suffix - th[j] as f64 * inv_var[j]) as f32;
            }
        })
    }
}

impl Default for PlanarRobot4 {
    fn default() -> Self {
        Self::new()
    }
}

impl Target for PlanarRobot4 {
    fn name(&self) -> &str {
        "robot4"
    }

    fn dim(&self) -> usize {
        10
    }

    fn log_density(&self, x: &Tensor) -> Tensor {
        let std = self.prior_std_t.like(x);
        let prior_norm: f64 = self.prior_std.iter().map(|s| -HALF_LOG_2PI - s.ln()).sum();
        let prior = (x / std.unsqueeze(0))
            .square()
            .sum_dim_intlist(-1, false, None::<Kind>)
            * -0.5
            + prior_norm;
        let p = end_effector(x);
        let s = ROBOT_LIKELIHOOD_STD;
        let d2 = (p.unsqueeze(1) - self.goals.like(x).unsqueeze(0))
            .square()
            .sum_dim_intlist(-1, false, None::<Kind>);
        let lik = d2 * (-0.5 / (s * s)) - 2.0 * (HALF_LOG_2PI + s.ln());
        prior + lik.amax([-1], false)
    }

    /// Analytic for float32 CPU batches without a graph ([`PlanarRobot4::score_native`]),
    /// else autograd, detached.
    fn score(&self, x: &Tensor) -> Tensor {
        match self.score_native(x) {
            Some(s) => s,
            None => lv_core::target::autograd_score(|y| self.log_density(y), x),
        }
    }

    /// Unknown.
    fn log_z(&self) -> Option<f64> {
        None
    }

    fn domain(&self) -> Vec<(f64, f64)> {
        let mut d = vec![(-1.5, 1.5); 10];
        d[0] = (-4.0, 4.0);
        d
    }

    fn reference_samples(&self) -> Option<Result<Tensor>> {
        Some(load_npy_f32(ROBOT4_REFERENCE, "robot4 reference samples"))
    }
}

/// Reads an embedded float32 `[n, d]` `.npy` into a float64 CPU tensor.
pub(crate) fn load_npy_f32(bytes: &[u8], what: &str) -> Result<Tensor> {
    let arr = Array2::<f32>::read_npy(bytes).with_context(|| format!("{what}: bad .npy"))?;
    let (n, d) = arr.dim();
    let data: Vec<f32> = arr.iter().copied().collect();
    Ok(Tensor::from_slice(&data)
        .reshape([n as i64, d as i64])
        .to_kind(Kind::Double))
}
