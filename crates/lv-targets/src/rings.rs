//! Concentric rings (`rings`).

use std::f64::consts::PI;

use lv_core::{ExactSampler, Target};
use tch::{Device, Kind, Tensor};

use crate::util::{rejection_sample, simpson, HALF_LOG_2PI};

/// Ring radii r_k.
pub const RING_RADII: [f64; 3] = [1.0, 3.0, 5.0];
/// Sharpness (the factor 100 in log ρ).
pub const RING_SCALE: f64 = 100.0;

/// Three concentric rings in R² (reference code's `Rings`, method spec §9):
///
/// log ρ(x) = −100·min_k (‖x‖ − r_k)², r ∈ {1, 3, 5}.
///
/// Analytic score (in graph, as the reference code, with ε = 1e-8 guarding r = 0):
/// −200·(1 − r_c/(‖x‖ + ε))·x, r_c the nearest radius.
///
/// **log Z by radial quadrature at construction**: Z = 2π ∫₀^7 r·exp(−100·min_k(r − r_k)²) dr,
/// split at the cell boundaries r = 2, 4 (where the min switches; the integrand is e^{−100}
/// there) and integrated by composite Simpson with 20 000 intervals per cell (beyond r = 7 the
/// integrand is below e^{−400}). log Z ≈ 2.30483 (≈ log(2π·9·√(π/100))). The reference code uses
/// a 2001² Boole rule on the square ±6.414; the tests check the value against an independent
/// 2-D trapezoid rule.
///
/// **Exact sampler** (not in the reference code): angle uniform, radius by rejection from the
/// proposal q(r) = Σ_k π_k N(r; r_k, 1/200), π_k ∝ r_k + 1. On the cell of ring k (r within 1 of
/// r_k), f(r) = r·exp(−100(r − r_k)²) ≤ (r_k + 1)·σ√(2π)·N(r; r_k, σ²) ≤ M·q(r) with σ² = 1/200
/// and M = σ√(2π)·Σ_j (r_j + 1). Radii above 6 are rejected: this drops a mass below e^{−100}
/// of the outer ring (unreachable with float32 normals anyway). Acceptance ≈ 0.75.
///
/// Domain (reference code): ±(5 + 10/√50) = ±6.414 in both coordinates.
pub struct Rings {
    log_z: f64,
}

impl Rings {
    /// The rings target (runs the radial quadrature).
    pub fn new() -> Self {
        let f = |r: f64| r * (-RING_SCALE * Self::min_sq(r)).exp();
        let z_radial = simpson(f, 0.0, 2.0, 20_000)
            + simpson(f, 2.0, 4.0, 20_000)
            + simpson(f, 4.0, 7.0, 30_000);
        Rings {
            log_z: (2.0 * PI * z_radial).ln(),
        }
    }

    fn min_sq(r: f64) -> f64 {
        RING_RADII
            .iter()
            .map(|rk| (r - rk).powi(2))
            .fold(f64::INFINITY, f64::min)
    }

    fn radii(x: &Tensor) -> Tensor {
        x.square().sum_dim_intlist(-1, true, None::<Kind>).sqrt()
    }

    fn radii_const(x: &Tensor) -> Tensor {
        Tensor::from_slice(&RING_RADII)
            .to_kind(x.kind())
            .to_device(x.device())
    }
}

impl Default for Rings {
    fn default() -> Self {
        Self::new()
    }
}

impl Target for Rings {
    fn name(&self) -> &str {
        "rings"
    }

    fn dim(&self) -> usize {
        2
    }

    fn log_density(&self, x: &Tensor) -> Tensor {
        let r = Self::radii(x);
        let (m, _) = (r - Self::radii_const(x)).square().min_dim(-1, false);
        m * -RING_SCALE
    }

    fn score(&self, x: &Tensor) -> Tensor {
        let r = Self::radii(x);
        let rk = Self::radii_const(x);
        let idx = (&r - &rk).square().argmin(-1, true);
        let centre = rk.index_select(0, &idx.squeeze_dim(-1)).unsqueeze(-1);
        (-(centre / (r + 1e-8)) + 1.0) * x * (-2.0 * RING_SCALE)
    }

    fn score_in_graph(&self) -> bool {
        true
    }

    /// By radial Simpson quadrature at construction (see the type docs), ≈ 2.30483.
    fn log_z(&self) -> Option<f64> {
        Some(self.log_z)
    }

    fn domain(&self) -> Vec<(f64, f64)> {
        let h = 5.0 + 10.0 / (RING_SCALE / 2.0).sqrt();
        vec![(-h, h); 2]
    }

    fn sampler(&self) -> Option<&dyn ExactSampler> {
        Some(self)
    }
}

impl ExactSampler for Rings {
    fn sample(&self, n: usize, device: Device) -> Tensor {
        let opts = (Kind::Float, device);
        let sigma = (0.5 / RING_SCALE).sqrt();
        let pis: Vec<f64> = RING_RADII.iter().map(|r| r + 1.0).collect();
        let total: f64 = pis.iter().sum();
        let probs = Tensor::from_slice(&pis)
            .to_kind(Kind::Float)
            .to_device(device)
            / total;
        let centres = Tensor::from_slice(&RING_RADII)
            .to_kind(Kind::Float)
            .to_device(device);
        let log_m = (sigma * (2.0 * PI).sqrt() * total).ln();
        let log_pis: Vec<f64> = pis.iter().map(|p| (p / total).ln()).collect();
        let log_pis = Tensor::from_slice(&log_pis)
            .to_kind(Kind::Float)
            .to_device(device);
        let accept = (self.log_z - (2.0 * PI).ln() - log_m).exp();
        let r = rejection_sample(n, accept, |m| {
            let k = probs.multinomial(m, true);
            let r = centres.index_select(0, &k) + Tensor::randn([m], opts) * sigma;
            // log q(r) = LSE_k [log π_k + log N(r; r_k, σ²)]
            let log_q = ((r.unsqueeze(1) - centres.unsqueeze(0)).square()
                * (-0.5 / (sigma * sigma))
                + log_pis.unsqueeze(0))
            .logsumexp([1], false)
                - (HALF_LOG_2PI + sigma.ln());
            let (msq, _) = (r.unsqueeze(1) - centres.unsqueeze(0))
                .square()
                .min_dim(1, false);
            let log_f = r.clamp_min(1e-30).log() - msq * RING_SCALE;
            let log_u = Tensor::rand([m], opts).log();
            let ok = log_u
                .le_tensor(&(log_f - log_q - log_m))
                .logical_and(&r.gt(0.0))
                .logical_and(&r.lt(6.0));
            (r, ok)
        });
        let theta = Tensor::rand([n as i64], opts) * (2.0 * PI);
        Tensor::stack(&[&r * theta.cos(), &r * theta.sin()], 1)
    }
}
