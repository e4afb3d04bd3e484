//! Mixture of Student-t products (`mos50`).

use anyhow::Result;
use lv_core::{ExactSampler, Target};
use tch::{Device, Kind, Tensor};

use crate::util::{component_sums, parse_table, Constant};

const MOS10_LOCS_D50: &str = include_str!("../data/mos10_locs_d50.csv");

/// Degrees of freedom ν of every Student-t factor.
pub const MOS_NU: f64 = 2.0;

/// log of the Student-t (ν = 2, scale 1) normaliser: log Γ(3/2) − log Γ(1) − ½log(2π)
/// = −(3/2)·log 2.
const LOG_T2_NORM: f64 = -1.5 * std::f64::consts::LN_2;

/// Equal-weight mixture of K products of independent 1-D Student-t distributions (ν = 2,
/// scale 1; benchmarks spec §3.5), normalised (**log Z = 0**):
///
/// log ρ(x) = LSE_k Σ_j log t₂(x_j − m_kj) − log K, log t₂(u) = −(3/2)log 2 − (3/2)log(1 + u²/2).
///
/// Locations: `data/mos10_locs_d50.csv` (K = 10, d = 50), U(−10, 10) from JAX `PRNGKey(0)`,
/// the **legacy threefry variant** (jax < 0.5). Score: analytic on the host for float32 CPU
/// batches without a graph ([`MixtureOfStudents::score_native`]), else autograd (detached, as
/// the reference code's).
///
/// Exact sampler: uniform component, then m_k + z/√(χ²_ν/ν) per coordinate with z ~ N(0, 1)
/// and χ²₂ the sum of two squared standard normals.
///
/// Domain: per coordinate [min_k m_kj − 10, max_k m_kj + 10] (the tails are heavy; for plots).
pub struct MixtureOfStudents {
    name: String,
    dim: usize,
    locs: Vec<Vec<f64>>,
    locs_t: Constant,
}

impl MixtureOfStudents {
    /// `mos50`: 10 components in d = 50.
    pub fn mos50() -> Result<Self> {
        let flat = parse_table(MOS10_LOCS_D50, 10, 50, "mos10_locs_d50.csv")?;
        Ok(Self::new(
            "mos50",
            flat.chunks(50).map(|c| c.to_vec()).collect(),
        ))
    }

    /// A mixture with the given locations (rows of equal length d).
    pub fn new(name: &str, locs: Vec<Vec<f64>>) -> Self {
        let dim = locs[0].len();
        let flat: Vec<f64> = locs.iter().flatten().copied().collect();
        MixtureOfStudents {
            name: name.to_string(),
            dim,
            locs_t: Constant::from_slice(&flat, &[locs.len() as i64, dim as i64]),
            locs,
        }
    }

    /// The component locations m_k.
    pub fn locations(&self) -> &[Vec<f64>] {
        &self.locs
    }

    /// The analytic score on the host (CPU float32 batches without a graph), per row in f64:
    ///
    /// ∇_j log ρ(x) = Σ_k w_k · (−(ν + 1) u_kj / (ν + u_kj²)), u_kj = x_j − m_kj,
    ///
    /// w = softmax_k(−(ν+1)/2 · Σ_j log(1 + u_kj²/ν)) with the max trick. The sum of logs is
    /// one log of the product of the factors (in f64; one log per component instead of d),
    /// with one log per factor where the product overflows; components whose weight
    /// underflows to 0 are skipped. Same value as autograd
    /// of [`Target::log_density`] to float32 rounding (tests/scores.rs).
    fn score_native(&self, x: &Tensor) -> Option<Tensor> {
        let k = self.locs.len();
        let flat: Vec<f64> = self.locs.iter().flatten().copied().collect();
        let half_nu1 = (MOS_NU + 1.0) / 2.0;
        crate::util::native_rows(x, |xr, out| {
            let d = xr.len();
            let (mut xs_buf, mut acc_buf) = ([0f64; 64], [0f64; 64]);
            let (mut xs_heap, mut acc_heap) = (Vec::new(), Vec::new());
            let (xs, acc): (&mut [f64], &mut [f64]) = if d <= 64 {
                (&mut xs_buf[..d], &mut acc_buf[..d])
            } else {
                xs_heap.resize(d, 0.0);
                acc_heap.resize(d, 0.0);
                (&mut xs_heap, &mut acc_heap)
            };
            for (v, &r) in xs.iter_mut().zip(xr) {
                *v = r as f64;
            }
            let (mut logits, mut heap) = ([0f64; 64], Vec::new());
            let l = crate::util::scratch(&mut logits, &mut heap, k);
            let mut mx = f64::NEG_INFINITY;
            for (lk, m) in l.iter_mut().zip(flat.chunks_exact(d)) {
                // Eight lane products over coordinates j ≡ lane (mod 8), then one log of
                // their product; logs per lane, or per factor, where a product overflows.
                let mut lanes = [1f64; 8];
                for (xc, mc) in xs.chunks(8).zip(m.chunks(8)) {
                    for ((p, a), b) in lanes.iter_mut().zip(xc).zip(mc) {
                        *p *= 1.0 + (a - b) * (a - b) / MOS_NU;
                    }
                }
                let total: f64 = lanes.iter().product();
                let sum_log = if total.is_finite() {
                    total.ln()
                } else if lanes.iter().all(|p| p.is_finite()) {
                    lanes.iter().map(|p| p.ln()).sum()
                } else {
                    xs.iter()
                        .zip(m)
                        .map(|(a, b)| ((a - b) * (a - b) / MOS_NU).ln_1p())
                        .sum()
                };
                *lk = -half_nu1 * sum_log;
                mx = mx.max(*lk);
            }
            let mut tot = 0.0;
            for lk in l.iter_mut() {
                *lk = crate::util::exp_or_zero(*lk - mx);
                tot += *lk;
            }
            for (w, m) in l.iter().zip(flat.chunks_exact(d)) {
                if *w == 0.0 {
                    continue; // its terms are ±0: the sums are unchanged
                }
                let w = w / tot;
                for ((a, x), mj) in acc.iter_mut().zip(xs.iter()).zip(m) {
                    let u = x - mj;
                    *a -= w * (MOS_NU + 1.0) * u / (MOS_NU + u * u);
                }
            }
            for (o, a) in out.iter_mut().zip(acc.iter()) {
                *o = *a as f32;
            }
        })
    }

    /// Component log-likelihoods Σ_j log t₂(x_j − m_kj), `[n, K]` (for mode assignment).
    pub fn component_log_densities(&self, x: &Tensor) -> Tensor {
        component_sums(x, &self.locs_t.like(x), |u| {
            (u.square() / MOS_NU).log1p() * (-(MOS_NU + 1.0) / 2.0) + LOG_T2_NORM
        })
    }
}

impl Target for MixtureOfStudents {
    fn name(&self) -> &str {
        &self.name
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn log_density(&self, x: &Tensor) -> Tensor {
        let k = self.locs.len() as f64;
        self.component_log_densities(x).logsumexp([-1], false) - k.ln()
    }

    /// Analytic for float32 CPU batches without a graph
    /// ([`MixtureOfStudents::score_native`]), else autograd, detached.
    fn score(&self, x: &Tensor) -> Tensor {
        match self.score_native(x) {
            Some(s) => s,
            None => lv_core::target::autograd_score(|y| self.log_density(y), x),
        }
    }

    /// 0 (normalised).
    fn log_z(&self) -> Option<f64> {
        Some(0.0)
    }

    /// The component locations.
    fn mode_centres(&self) -> Option<Vec<Vec<f64>>> {
        Some(self.locations().to_vec())
    }

    fn domain(&self) -> Vec<(f64, f64)> {
        (0..self.dim)
            .map(|j| {
                let lo = self.locs.iter().map(|m| m[j]).fold(f64::INFINITY, f64::min);
                let hi = self
                    .locs
                    .iter()
                    .map(|m| m[j])
                    .fold(f64::NEG_INFINITY, f64::max);
                (lo - 10.0, hi + 10.0)
            })
            .collect()
    }

    fn sampler(&self) -> Option<&dyn ExactSampler> {
        Some(self)
    }
}

impl ExactSampler for MixtureOfStudents {
    fn sample(&self, n: usize, device: Device) -> Tensor {
        let (n_i, d) = (n as i64, self.dim as i64);
        let opts = (Kind::Float, device);
        let idx = Tensor::randint(self.locs.len() as i64, [n_i], (Kind::Int64, device));
        let z = Tensor::randn([n_i, d], opts);
        let chi2 = Tensor::randn([n_i, d, MOS_NU as i64], opts)
            .square()
            .sum_dim_intlist(-1, false, None::<Kind>);
        let t = z / (chi2 / MOS_NU).sqrt();
        self.locs_t.get(device, Kind::Float).index_select(0, &idx) + t
    }
}
