//! The unadjusted Langevin algorithm (ULA), the paper's non-learned baseline (spec §5.6):
//! dX = ½σ²∇log ρ(X) dt + σ dW with σ = 1, the score clamped elementwise at ±1e5, prior
//! N(0, I), T = 100 with 1000 Euler steps (Δ = 0.1), batch 6000, and expectations averaged
//! over the states of steps 500–1000. ULA gives no log Z estimate.

use crate::target::Target;
use tch::{Device, Kind, Tensor};

/// Settings of the ULA baseline (defaults: the paper's).
#[derive(Clone, Debug)]
pub struct UlaSettings {
    pub sigma: f64,
    pub t_end: f64,
    pub steps: usize,
    pub batch: usize,
    /// States from this step on are kept for the averages.
    pub burn_in: usize,
    pub score_clip: f64,
}

impl Default for UlaSettings {
    fn default() -> Self {
        Self {
            sigma: 1.0,
            t_end: 100.0,
            steps: 1000,
            batch: 6000,
            burn_in: 500,
            score_clip: 1e5,
        }
    }
}

/// Output of [`run_ula`].
pub struct UlaOutput {
    /// The final states `[batch, d]`.
    pub final_states: Tensor,
    /// Mean over the kept steps and the batch of each coordinate `[d]`.
    pub mean: Tensor,
    /// Mean over the kept steps and the batch of x² per coordinate `[d]`.
    pub second_moment: Tensor,
    /// Number of steps averaged.
    pub kept_steps: usize,
}

/// Runs ULA from N(0, I) with torch's global generator.
pub fn run_ula(target: &dyn Target, s: &UlaSettings, device: Device) -> UlaOutput {
    let d = target.dim() as i64;
    let n = s.batch as i64;
    let dt = s.t_end / s.steps as f64;
    let mut x = Tensor::randn([n, d], (Kind::Float, device));
    let mut sum = Tensor::zeros([d], (Kind::Double, device));
    let mut sum2 = Tensor::zeros([d], (Kind::Double, device));
    let mut kept = 0;
    for k in 0..s.steps {
        let g = target.score(&x).clamp(-s.score_clip, s.score_clip);
        x = tch::no_grad(|| {
            &x + g * (0.5 * s.sigma * s.sigma * dt)
                + Tensor::randn([n, d], (Kind::Float, device)) * (s.sigma * dt.sqrt())
        });
        if k + 1 >= s.burn_in {
            let xd = x.to_kind(Kind::Double);
            sum += xd.mean_dim([0i64].as_slice(), false, Kind::Double);
            sum2 += xd.square().mean_dim([0i64].as_slice(), false, Kind::Double);
            kept += 1;
        }
    }
    let k = kept.max(1) as f64;
    UlaOutput {
        final_states: x,
        mean: sum / k,
        second_moment: sum2 / k,
        kept_steps: kept,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::ScaledGauss;

    #[test]
    fn ula_recovers_gaussian_moments() {
        let _g = crate::testing::rng_lock();
        tch::manual_seed(3);
        let t = ScaledGauss {
            dim: 2,
            mean: 1.5,
            std: 0.8,
            log_z: 0.0,
        };
        let s = UlaSettings {
            batch: 2000,
            steps: 400,
            burn_in: 200,
            t_end: 40.0,
            ..UlaSettings::default()
        };
        let out = run_ula(&t, &s, Device::Cpu);
        let m = Vec::<f64>::try_from(&out.mean).unwrap();
        let m2 = Vec::<f64>::try_from(&out.second_moment).unwrap();
        for i in 0..2 {
            assert!((m[i] - 1.5).abs() < 0.05, "mean {m:?}");
            // ULA with step Δ = 0.1 inflates the variance of N(μ, s²) to s²/(1 − Δ/(4s²)).
            let var = m2[i] - m[i] * m[i];
            let biased = 0.64 / (1.0 - 0.1 / (4.0 * 0.64));
            assert!((var - biased).abs() < 0.04, "var {var} vs {biased}");
        }
        assert_eq!(out.kept_steps, 201);
    }
}
