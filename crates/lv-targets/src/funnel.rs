//! Neal's funnel (`funnel10`, `funnel10_clip30`).

use lv_core::{ExactSampler, Target};
use tch::{Device, Kind, Tensor};

use crate::util::HALF_LOG_2PI;

/// Neal's funnel in d dimensions (method spec §9, benchmarks spec §3.2):
///
/// x₀ ~ N(0, 3²), x_i | x₀ ~ N(0, e^{x₀}) for i = 1..d−1, normalised (**log Z = 0**):
///
/// log ρ(x) = −x₀²/18 − ½log(2π·9) − ((d−1)/2)(x₀ + log 2π) − ½ e^{−x₀} Σ_{i≥1} x_i².
///
/// Analytic score (kept in the autograd graph, spec §6.6):
/// ∂₀ = −x₀/9 − (d−1)/2 + ½ e^{−x₀} Σ_{i≥1} x_i², ∂_i = −x_i e^{−x₀}.
///
/// Analytic stds: s₀ = 3, s_i = e^{9/4} ≈ 9.4877 (E[e^{x₀}] = e^{4.5}).
///
/// Exact sampler: x₀ = 3z₀, x_i = e^{x₀/2} z_i. The later-benchmark variant `funnel10_clip30`
/// has the same density but its sampler **clips** every coordinate to [−30, 30], as the
/// Beyond-ELBOs / SCLD / RSMC codes do for their reference sets (benchmarks spec §3.2); those
/// samples are then not exact in the tails of x_{i≥1}.
///
/// Domain (reference code): x₀ ∈ ±15 (5 std), x_i ∈ ±e^{15/5} ≈ ±20.09.
pub struct Funnel {
    name: String,
    dim: usize,
    clip: Option<f64>,
}

impl Funnel {
    /// The paper's `funnel10` (exact sampler, no clipping).
    pub fn new(dim: usize) -> Self {
        Funnel {
            name: format!("funnel{dim}"),
            dim,
            clip: None,
        }
    }

    /// The later-benchmark variant `funnel{d}_clip{c}`: same density, sampler clipped to ±c.
    pub fn clipped(dim: usize, clip: f64) -> Self {
        Funnel {
            name: format!("funnel{dim}_clip{clip}"),
            dim,
            clip: Some(clip),
        }
    }

    /// The clip bound of the sampler, if any.
    pub fn clip(&self) -> Option<f64> {
        self.clip
    }
}

impl Target for Funnel {
    fn name(&self) -> &str {
        &self.name
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn log_density(&self, x: &Tensor) -> Tensor {
        let m = (self.dim - 1) as f64;
        let x0 = x.select(1, 0);
        let rest = x.narrow(1, 1, self.dim as i64 - 1);
        let sq = rest.square().sum_dim_intlist(-1, false, None::<Kind>);
        x0.square() * (-1.0 / 18.0)
            - (HALF_LOG_2PI + 3f64.ln())
            - (&x0 + 2.0 * HALF_LOG_2PI) * (0.5 * m)
            - sq * (-&x0).exp() * 0.5
    }

    /// Analytic score. CPU float32 batches without a graph (LV simulations) take a fused
    /// host loop in f64 (`util::native_rows`); otherwise the tensor expression,
    /// which stays in the graph (KL).
    fn score(&self, x: &Tensor) -> Tensor {
        let m = (self.dim - 1) as f64;
        if let Some(s) = crate::util::native_rows(x, |xr, out| {
            let x0 = xr[0] as f64;
            let inv_var = (-x0).exp();
            let sq: f64 = xr[1..].iter().map(|&v| v as f64 * v as f64).sum();
            out[0] = (-x0 / 9.0 - 0.5 * m + 0.5 * sq * inv_var) as f32;
            for (o, &v) in out[1..].iter_mut().zip(&xr[1..]) {
                *o = (-(v as f64) * inv_var) as f32;
            }
        }) {
            return s;
        }
        let x0 = x.narrow(1, 0, 1);
        let rest = x.narrow(1, 1, self.dim as i64 - 1);
        let inv_var = (-&x0).exp();
        let sq = rest.square().sum_dim_intlist(-1, true, None::<Kind>);
        let s0 = &x0 * (-1.0 / 9.0) - 0.5 * m + sq * &inv_var * 0.5;
        let si = -(rest * inv_var);
        Tensor::cat(&[s0, si], 1)
    }

    fn score_in_graph(&self) -> bool {
        true
    }

    /// Hv with the analytic Hessian (e = e^{−x₀}, S = Σ_{i≥1} x_i²):
    /// H₀₀ = −1/9 − ½eS, H₀ᵢ = e·x_i, H_ij = −e·δ_ij (i, j ≥ 1), so
    /// (Hv)₀ = (−1/9 − ½eS)v₀ + e Σ_{i≥1} x_i v_i and (Hv)_i = e(x_i v₀ − v_i).
    /// CPU float32 batches take a host loop in f64; others the tensor expression.
    fn score_hvp(&self, x: &Tensor, v: &Tensor) -> Option<Tensor> {
        if let Some(h) = crate::util::native_row_pairs(x, v, |xr, vr, out| {
            let x0 = xr[0] as f64;
            let v0 = vr[0] as f64;
            let e = (-x0).exp();
            let (mut sq, mut xv) = (0.0f64, 0.0f64);
            for (&xi, &vi) in xr[1..].iter().zip(&vr[1..]) {
                sq += xi as f64 * xi as f64;
                xv += xi as f64 * vi as f64;
            }
            out[0] = ((-1.0 / 9.0 - 0.5 * e * sq) * v0 + e * xv) as f32;
            for ((o, &xi), &vi) in out[1..].iter_mut().zip(&xr[1..]).zip(&vr[1..]) {
                *o = (e * (xi as f64 * v0 - vi as f64)) as f32;
            }
        }) {
            return Some(h);
        }
        tch::no_grad(|| {
            let m = self.dim as i64 - 1;
            let (x, v) = (x.detach(), v.detach());
            let x0 = x.narrow(1, 0, 1);
            let v0 = v.narrow(1, 0, 1);
            let rest = x.narrow(1, 1, m);
            let vrest = v.narrow(1, 1, m);
            let e = (-&x0).exp();
            let sq = rest.square().sum_dim_intlist(-1, true, None::<Kind>);
            let xv = (&rest * &vrest).sum_dim_intlist(-1, true, None::<Kind>);
            let h0 = (sq * &e * (-0.5) - 1.0 / 9.0) * &v0 + &e * xv;
            let hi = (rest * &v0 - vrest) * e;
            Some(Tensor::cat(&[h0, hi], 1))
        })
    }

    /// 0 (normalised).
    fn log_z(&self) -> Option<f64> {
        Some(0.0)
    }

    /// s₀ = 3 and s_i = √E[e^{x₀}] = e^{9/4} ≈ 9.4877 (x₀ ~ N(0, 9), so E[e^{x₀}] = e^{9/2});
    /// none for the clipped variant, whose sampler is not the density's law.
    fn marginal_stds(&self) -> Option<Vec<f64>> {
        if self.clip.is_some() {
            return None;
        }
        let mut s = vec![3.0];
        s.extend(std::iter::repeat_n(2.25f64.exp(), self.dim - 1));
        Some(s)
    }

    fn domain(&self) -> Vec<(f64, f64)> {
        let other = 3f64.exp();
        let mut d = vec![(-15.0, 15.0)];
        d.extend(std::iter::repeat_n((-other, other), self.dim - 1));
        d
    }

    fn sampler(&self) -> Option<&dyn ExactSampler> {
        Some(self)
    }
}

impl ExactSampler for Funnel {
    fn sample(&self, n: usize, device: Device) -> Tensor {
        let z = Tensor::randn([n as i64, self.dim as i64], (Kind::Float, device));
        let x0 = z.narrow(1, 0, 1) * 3.0;
        let rest = z.narrow(1, 1, self.dim as i64 - 1) * (&x0 * 0.5).exp();
        let x = Tensor::cat(&[x0, rest], 1);
        match self.clip {
            Some(c) => x.clamp(-c, c),
            None => x,
        }
    }
}
