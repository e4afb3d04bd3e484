//! Off-policy exploration for the LV family: the behaviour process runs the same drift with
//! its diffusion scaled by λ ≥ 1, and λ returns to 1 over the first steps of training.

use serde::{Deserialize, Serialize};

/// How λ returns to 1 over the `explore_steps` training steps; `k` counts steps, K is
/// `explore_steps`, λ₀ the `explore_scale`.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ExploreDecay {
    /// λ itself decays linearly: λ_k = λ₀ + (1 − λ₀)·min(k/K, 1) (evaluated in this form).
    #[default]
    Scale,
    /// An extra noise of standard deviation e_k = e₀·(1 − k/K)⁺ per time step is added in
    /// variance to the policy's, as gfn-diffusion's exploration (Sendera et al. 2024: the
    /// step's log-variance is logaddexp(log σ²Δt, log e_k²)); with λ₀² = 1 + e₀²/(σ²Δt):
    /// λ_k² = 1 + (λ₀² − 1)·((1 − k/K)⁺)².
    ExtraStd,
}

impl ExploreDecay {
    /// Whether this is the default (for `skip_serializing_if`: configs without the key keep
    /// their hashes).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// The exploration schedule: λ₀, K and the decay.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Exploration {
    pub scale: f64,
    pub steps: usize,
    pub decay: ExploreDecay,
}

impl Default for Exploration {
    /// On-policy (λ = 1 throughout).
    fn default() -> Self {
        Self {
            scale: 1.0,
            steps: 0,
            decay: ExploreDecay::Scale,
        }
    }
}

impl Exploration {
    /// λ_k, the behaviour noise scale at training step `k` (1 when off or after K steps).
    pub fn noise_scale(&self, k: usize) -> f64 {
        if self.scale <= 1.0 || self.steps == 0 {
            return 1.0;
        }
        let frac = (k as f64 / self.steps as f64).min(1.0);
        match self.decay {
            ExploreDecay::Scale => self.scale + (1.0 - self.scale) * frac,
            ExploreDecay::ExtraStd => {
                let left = 1.0 - frac;
                (1.0 + (self.scale * self.scale - 1.0) * left * left).sqrt()
            }
        }
    }

    /// λ₀ of gfn-diffusion's exploration: an extra per-step standard deviation `extra_std`
    /// on steps of length `dt` of a diffusion σ: λ₀ = √(1 + e₀²/(σ²Δt)).
    pub fn gfn_scale(extra_std: f64, sigma: f64, dt: f64) -> f64 {
        (1.0 + extra_std * extra_std / (sigma * sigma * dt)).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;

    #[test]
    fn linear_scale_decay() {
        let e = Exploration {
            scale: 2.0,
            steps: 100,
            decay: ExploreDecay::Scale,
        };
        assert_relative_eq!(e.noise_scale(0), 2.0);
        assert_relative_eq!(e.noise_scale(25), 1.75);
        assert_relative_eq!(e.noise_scale(100), 1.0);
        assert_relative_eq!(e.noise_scale(1000), 1.0);
    }

    /// Sendera's 25GMM setting (σ² = 5, Δt = 0.01, e₀ = 0.2) by hand: the step variance is
    /// σ²Δt + e_k² = 0.05 + (0.2·(1 − k/K))², so λ_k² = (0.05 + e_k²)/0.05.
    #[test]
    fn extra_std_decay_adds_the_extra_variance() {
        let scale = Exploration::gfn_scale(0.2, 5f64.sqrt(), 0.01);
        assert_relative_eq!(scale * scale, 1.8, epsilon = 1e-12);
        let e = Exploration {
            scale,
            steps: 1000,
            decay: ExploreDecay::ExtraStd,
        };
        for k in [0usize, 250, 500, 999, 1000, 4000] {
            let extra = 0.2 * (1.0 - k as f64 / 1000.0).max(0.0);
            let want = ((0.05 + extra * extra) / 0.05).sqrt();
            assert_relative_eq!(e.noise_scale(k), want, epsilon = 1e-12);
        }
        // ManyWell (σ² = 1): λ₀² = 5.
        assert_relative_eq!(
            Exploration::gfn_scale(0.2, 1.0, 0.01).powi(2),
            5.0,
            epsilon = 1e-12
        );
    }

    #[test]
    fn off_is_on_policy() {
        assert_eq!(Exploration::default().noise_scale(0), 1.0);
        let no_steps = Exploration {
            scale: 3.0,
            steps: 0,
            decay: ExploreDecay::ExtraStd,
        };
        assert_eq!(no_steps.noise_scale(0), 1.0);
    }
}
