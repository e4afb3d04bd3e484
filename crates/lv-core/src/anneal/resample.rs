//! Resampling of weighted particles (SMC): which ancestor each new particle copies, from
//! normalised log-weights. Host-side (f64); the uniforms come from torch's global generator,
//! so `tch::manual_seed` makes a rollout reproducible.

use anyhow::{bail, Result};
use tch::{Kind, Tensor};

/// A resampling scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scheme {
    /// One uniform U ~ U[0, 1): ancestor of particle i is the first j with
    /// n·C_j > i + U (C the cumulative normalised weights). Particle j gets ⌊n w_j⌋ or
    /// ⌈n w_j⌉ copies. (SCLD's `systematic_resampling` sums the wrong quantity; this is the
    /// textbook scheme.)
    Systematic,
    /// n independent draws from Categorical(w) (SCLD's default).
    Multinomial,
}

impl std::str::FromStr for Scheme {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "systematic" => Self::Systematic,
            "multinomial" => Self::Multinomial,
            other => bail!("unknown resampling scheme `{other}`: expected systematic, multinomial"),
        })
    }
}

/// When and how to resample: when the normalised ESS (Σw)²/(n Σw²) falls below `threshold`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Resampling {
    pub scheme: Scheme,
    /// In (0, 1]; SCLD: 0.3.
    pub threshold: f64,
}

impl Resampling {
    /// Checks the threshold.
    pub fn new(scheme: Scheme, threshold: f64) -> Result<Self> {
        if !(threshold > 0.0 && threshold <= 1.0) {
            bail!("the resampling ESS threshold must be in (0, 1] (got {threshold})");
        }
        Ok(Self { scheme, threshold })
    }
}

/// Normalised weights w_i = exp(log_w_i − logsumexp(log_w)); −∞ and NaN weigh 0. `None`
/// when no weight is positive and finite.
pub fn normalised_weights(log_w: &[f64]) -> Option<Vec<f64>> {
    let m = log_w
        .iter()
        .cloned()
        .filter(|v| !v.is_nan())
        .fold(f64::NEG_INFINITY, f64::max);
    if !m.is_finite() {
        return None;
    }
    let w: Vec<f64> = log_w
        .iter()
        .map(|&v| if v.is_nan() { 0.0 } else { (v - m).exp() })
        .collect();
    let s: f64 = w.iter().sum();
    Some(w.into_iter().map(|v| v / s).collect())
}

/// The ancestor indices of `n = weights.len()` new particles (weights normalised).
pub fn ancestors(weights: &[f64], scheme: Scheme) -> Vec<i64> {
    let n = weights.len();
    let mut cum = Vec::with_capacity(n);
    let mut c = 0.0;
    for &w in weights {
        c += w;
        cum.push(c);
    }
    let total = c;
    let uniforms: Vec<f64> = match scheme {
        Scheme::Systematic => {
            let u = uniform(1)[0];
            (0..n).map(|i| (i as f64 + u) / n as f64).collect()
        }
        Scheme::Multinomial => {
            let mut u = uniform(n);
            u.sort_by(f64::total_cmp);
            u
        }
    };
    // Both lists are sorted: one merge pass. The last index with positive weight absorbs
    // round-off beyond the final cumulative value.
    let last = weights.iter().rposition(|&w| w > 0.0).unwrap_or(n - 1);
    let mut out = Vec::with_capacity(n);
    let mut j = 0;
    for v in uniforms {
        let v = v * total;
        while j < last && cum[j] <= v {
            j += 1;
        }
        out.push(j as i64);
    }
    out
}

fn uniform(n: usize) -> Vec<f64> {
    let t = Tensor::rand([n as i64], (Kind::Double, tch::Device::Cpu));
    Vec::<f64>::try_from(&t).expect("a double tensor")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random weight vectors with zeros, a dominant particle and near-uniform cases.
    fn weight_cases() -> Vec<Vec<f64>> {
        let mut cases = Vec::new();
        for n in [1usize, 2, 7, 50, 257] {
            for spread in [0.0, 0.5, 3.0, 30.0] {
                let lw = Tensor::randn([n as i64], (Kind::Double, tch::Device::Cpu)) * spread;
                let mut lw = Vec::<f64>::try_from(&lw).unwrap();
                if n > 3 {
                    lw[1] = f64::NEG_INFINITY;
                    lw[2] = f64::NAN;
                }
                cases.push(normalised_weights(&lw).unwrap());
            }
        }
        cases
    }

    #[test]
    fn systematic_copies_each_particle_floor_or_ceil_of_n_w_times() {
        let _g = crate::testing::rng_lock();
        tch::manual_seed(3);
        for w in weight_cases() {
            let n = w.len();
            assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            let a = ancestors(&w, Scheme::Systematic);
            assert_eq!(a.len(), n);
            let mut copies = vec![0usize; n];
            for &i in &a {
                copies[i as usize] += 1;
            }
            for (j, (&c, &wj)) in copies.iter().zip(&w).enumerate() {
                let e = n as f64 * wj;
                assert!(
                    c as f64 >= e.floor() - 1e-9 && c as f64 <= e.ceil() + 1e-9,
                    "particle {j}: {c} copies for n·w = {e}"
                );
                if wj == 0.0 {
                    assert_eq!(c, 0, "a zero-weight particle was copied");
                }
            }
        }
    }

    #[test]
    fn multinomial_keeps_n_particles_and_matches_the_weights_on_average() {
        let _g = crate::testing::rng_lock();
        tch::manual_seed(4);
        let w = vec![0.5, 0.0, 0.2, 0.3];
        let reps = 4000;
        let mut copies = [0usize; 4];
        for _ in 0..reps {
            let a = ancestors(&w, Scheme::Multinomial);
            assert_eq!(a.len(), 4);
            for i in a {
                copies[i as usize] += 1;
            }
        }
        assert_eq!(copies[1], 0);
        for (j, &wj) in w.iter().enumerate() {
            let mean = copies[j] as f64 / (4 * reps) as f64;
            // Standard error of a frequency over 16 000 draws is ≤ 0.004.
            assert!((mean - wj).abs() < 0.02, "particle {j}: {mean} vs {wj}");
        }
        for w in weight_cases() {
            let a = ancestors(&w, Scheme::Multinomial);
            assert_eq!(a.len(), w.len());
            assert!(a.iter().all(|&i| w[i as usize] > 0.0));
        }
    }

    #[test]
    fn all_zero_weights_are_reported_not_resampled() {
        assert!(normalised_weights(&[f64::NEG_INFINITY, f64::NAN]).is_none());
        assert!(Resampling::new(Scheme::Systematic, 0.0).is_err());
        assert!(Resampling::new(Scheme::Systematic, 1.5).is_err());
    }
}
