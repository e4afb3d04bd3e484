//! Estimators from evaluation trajectories (spec §4): log Z by importance sampling and the
//! ELBO, normalised ESS, and the LV diagnostic.

use crate::method::Method;
use crate::sim::{simulate, Controls, Mode, SimOptions};
use crate::target::Target;
use serde::Serialize;
use tch::{Device, Kind, Tensor};

/// log mean exp of `a` (f64, max-shifted): log Ẑ_IS = m + log mean_i exp(a_i − m).
pub fn log_mean_exp(a: &[f64]) -> f64 {
    if a.is_empty() {
        return f64::NAN;
    }
    let m = a.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if !m.is_finite() {
        return m;
    }
    m + (a.iter().map(|x| (x - m).exp()).sum::<f64>() / a.len() as f64).ln()
}

/// Normalised ESS (Σ w̃)² / (N Σ w̃²) with w̃_i = exp(log w_i − max).
pub fn normalised_ess(log_w: &[f64]) -> f64 {
    if log_w.is_empty() {
        return f64::NAN;
    }
    let m = log_w.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let (s1, s2) = log_w.iter().fold((0.0, 0.0), |(s1, s2), lw| {
        let w = (lw - m).exp();
        (s1 + w, s2 + w * w)
    });
    s1 * s1 / (s2 * log_w.len() as f64)
}

/// Unbiased (n − 1) sample variance.
pub fn unbiased_var(a: &[f64]) -> f64 {
    let n = a.len() as f64;
    let mean = a.iter().sum::<f64>() / n;
    a.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
}

/// The estimates of one evaluation.
///
/// **Non-finite R.** A trajectory whose pass-1 R is NaN or ±∞ gets importance weight zero:
/// log Ẑ_IS and the ESS both divide by all n trajectories, so they agree on what the weights
/// are (log Ẑ_IS = log((1/n)·Σ_{finite} e^{−R_i}), ESS = (Σw)²/(n·Σw²)). The means (the Itô
/// bound, the ELBO) and Var(R) cannot include an infinite value: they are over the finite R of
/// their pass. `non_finite` counts the pass-1 trajectories left out.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct Evaluation {
    /// log Ẑ_IS = log((1/n)·Σ_i exp(−R_i)), pass 1 (with Itô term); non-finite R weigh 0.
    #[serde(deserialize_with = "crate::json::f64_or_nan")]
    pub log_z_is: f64,
    /// mean(−R_i) over the finite R of pass 1 (the Itô lower bound).
    #[serde(deserialize_with = "crate::json::f64_or_nan")]
    pub log_z_lb_ito: f64,
    /// mean(−R_i) over the finite R of pass 2 (no Itô term): the ELBO.
    #[serde(deserialize_with = "crate::json::f64_or_nan")]
    pub log_z_elbo: f64,
    /// Normalised ESS (Σw)²/(n·Σw²) of the pass-1 weights, non-finite R weighing 0.
    #[serde(deserialize_with = "crate::json::f64_or_nan")]
    pub ess: f64,
    /// Var(R) over the finite R of pass 1 (unbiased, divisor n_finite − 1).
    #[serde(deserialize_with = "crate::json::f64_or_nan")]
    pub lv: f64,
    /// Number of trajectories.
    pub n: usize,
    /// Pass-1 trajectories with non-finite R (weight zero; left out of the means).
    pub non_finite: usize,
    /// Seconds of pass 2 (the timed pass of the spec).
    #[serde(deserialize_with = "crate::json::f64_or_nan")]
    pub sample_seconds: f64,
}

impl Evaluation {
    /// The estimates from the log-weights −R_i of pass 1 (`neg_r1`, with Itô term) and pass 2
    /// (`neg_r2`, without), with the conventions of the type docs.
    pub fn from_log_weights(neg_r1: &[f64], neg_r2: &[f64], sample_seconds: f64) -> Self {
        let n = neg_r1.len();
        let finite1: Vec<f64> = neg_r1.iter().cloned().filter(|x| x.is_finite()).collect();
        let finite2: Vec<f64> = neg_r2.iter().cloned().filter(|x| x.is_finite()).collect();
        let share = finite1.len() as f64 / n as f64;
        Evaluation {
            log_z_is: log_mean_exp(&finite1) + share.ln(),
            log_z_lb_ito: finite1.iter().sum::<f64>() / finite1.len() as f64,
            log_z_elbo: finite2.iter().sum::<f64>() / finite2.len() as f64,
            ess: normalised_ess(&finite1) * share,
            lv: unbiased_var(&finite1),
            n,
            non_finite: n - finite1.len(),
            sample_seconds,
        }
    }
}

/// Evaluation output: estimates plus the pass-1 terminal samples `[n, d]` (CPU, float32).
pub struct EvalOutput {
    pub estimates: Evaluation,
    pub samples: Tensor,
}

/// Native inference of the controls ([`crate::Control::start_inference`]) while alive.
struct Inference<'a>(Controls<'a>);

impl<'a> Inference<'a> {
    fn start(controls: Controls<'a>) -> Self {
        controls.u.start_inference();
        if let Some(v) = controls.v {
            v.start_inference();
        }
        Self(controls)
    }
}

impl Drop for Inference<'_> {
    fn drop(&mut self) {
        self.0.u.end_inference();
        if let Some(v) = self.0.v {
            v.end_inference();
        }
    }
}

/// Two evaluation passes from the *same* prior draws with independent noise (spec §4), in
/// chunks of `chunk` trajectories, without parameter gradients (autograd is kept locally
/// where scores or divergences need it). With `native` the controls' networks run natively
/// where they can ([`crate::Control::start_inference`]) and the steps update X and R in one
/// host pass ([`SimOptions::fused_eval`]): the same estimators, rounded differently
/// ([`crate::train::TrainSettings::native_eval`]).
pub fn evaluate(
    method: &Method,
    target: &dyn Target,
    controls: Controls<'_>,
    n: usize,
    chunk: usize,
    device: Device,
    native: bool,
) -> EvalOutput {
    let d = target.dim() as i64;
    let chunk = chunk.max(1);
    let mut neg_r1 = Vec::with_capacity(n);
    let mut neg_r2 = Vec::with_capacity(n);
    let mut samples = Vec::new();
    let mut sample_seconds = 0.0;
    let mut done = 0;
    let _inference = native.then(|| Inference::start(controls));
    let opts = |mode| SimOptions {
        fused_eval: native,
        ..SimOptions::new(mode)
    };
    while done < n {
        let m = chunk.min(n - done) as i64;
        tch::no_grad(|| {
            let x0 = method.prior.sample(m, d, device);
            let p1 = simulate(method, target, controls, &x0, opts(Mode::EvalIto));
            let t0 = std::time::Instant::now();
            let p2 = simulate(method, target, controls, &x0, opts(Mode::EvalNoIto));
            let r2 = to_vec(&p2.rnd);
            sample_seconds += t0.elapsed().as_secs_f64();
            neg_r1.extend(to_vec(&p1.rnd).into_iter().map(|r| -r));
            neg_r2.extend(r2.into_iter().map(|r| -r));
            samples.push(p1.x_final.to_device(Device::Cpu).to_kind(Kind::Float));
        });
        done += m as usize;
    }
    let estimates = Evaluation::from_log_weights(&neg_r1, &neg_r2, sample_seconds);
    EvalOutput {
        estimates,
        samples: Tensor::cat(&samples, 0),
    }
}

fn to_vec(t: &Tensor) -> Vec<f64> {
    let t = t.to_device(Device::Cpu).to_kind(Kind::Double).contiguous();
    Vec::<f64>::try_from(&t).expect("1-D tensor")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lme_and_ess() {
        let a = [0.0, 0.0, 0.0];
        assert!((log_mean_exp(&a)).abs() < 1e-15);
        assert!((normalised_ess(&a) - 1.0).abs() < 1e-15);
        let b = [0.0, f64::ln(3.0)];
        assert!((log_mean_exp(&b) - 2f64.ln()).abs() < 1e-12);
        // weights 1, 3: ESS = 16/10 → normalised 0.8.
        assert!((normalised_ess(&b) - 0.8).abs() < 1e-12);
        assert!((log_mean_exp(&[1000.0, 1000.0]) - 1000.0).abs() < 1e-9);
    }

    #[test]
    fn non_finite_weights_count_as_zero_in_is_and_ess() {
        // Weights 1, 3, and two trajectories with non-finite R (NaN, R = +∞): both weigh 0,
        // so Ẑ_IS = (1 + 3 + 0 + 0)/4 = 1 and ESS = 4²/(4·(1 + 9)) = 0.4.
        let neg_r1 = [0.0, 3f64.ln(), f64::NAN, f64::NEG_INFINITY];
        let neg_r2 = [1.0, 2.0, f64::NAN, 3.0];
        let e = Evaluation::from_log_weights(&neg_r1, &neg_r2, 0.0);
        assert!(e.log_z_is.abs() < 1e-12, "{}", e.log_z_is);
        assert!((e.ess - 0.4).abs() < 1e-12, "{}", e.ess);
        assert_eq!((e.n, e.non_finite), (4, 2));
        assert!((e.log_z_lb_ito - 3f64.ln() / 2.0).abs() < 1e-12);
        assert!((e.log_z_elbo - 2.0).abs() < 1e-12);
        // All finite: the plain estimators.
        let e = Evaluation::from_log_weights(&[0.0, 3f64.ln()], &[0.0, 0.0], 0.0);
        assert!((e.log_z_is - 2f64.ln()).abs() < 1e-12);
        assert!((e.ess - 0.8).abs() < 1e-12);
    }
}
