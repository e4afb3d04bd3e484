//! One SMC rollout of an annealed sampler through its K pieces (SCLD; CMCD is K = 1):
//! propagate, reweight, resample when the ESS is low, refresh by MCMC, detach.
//!
//! With normalised log-weights log W (log W = −log n at the start) and the piece's
//! increments Δ_j ([`super::sampler`]), W̄ = W detached:
//! - lnZ_j = log Σ_i W̄_i e^{Δ_j,i}, ELBO_j = Σ_i W̄_i Δ_j,i (over the finite Δ, weights
//!   renormalised over them);
//! - log W ← log_softmax(log W + Δ_j) (non-finite Δ weigh 0) — weights are always
//!   accumulated, so without resampling Σ_j lnZ_j = log mean_i e^{Σ_j Δ_j,i}, the plain
//!   importance-sampling estimate (SCLD's code accumulates only when resampling is on; see
//!   docs/conventions.md);
//! - resample when (Σ W)²/(n Σ W²) < threshold, then log W = −log n;
//! - MCMC moves targeting γ_{(j+1)L} after the resampling step (whether it fired or not).
//!
//! log Ẑ = Σ_j lnZ_j is unbiased in Z for any control when the MCMC kernel leaves γ
//! invariant (MALA), since each increment is computed before resampling. States are
//! detached between pieces: no gradient flows through resampling or MCMC.

use super::mcmc::{refresh, Mcmc};
use super::path::GeometricPath;
use super::resample::{ancestors, normalised_weights, Resampling};
use super::sampler::{run_piece, Annealed, Grad};
use crate::control::Control;
use crate::target::Target;
use tch::{Kind, Tensor};

/// The SMC settings of a rollout.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SmcOptions {
    pub resampling: Option<Resampling>,
    pub mcmc: Option<Mcmc>,
    pub grad: Grad,
}

impl SmcOptions {
    /// Plain importance sampling: no resampling, no MCMC.
    pub fn plain(grad: Grad) -> Self {
        Self {
            resampling: None,
            mcmc: None,
            grad,
        }
    }
}

/// The estimator increments of one reweighting step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Increment {
    pub ln_z: f64,
    pub elbo: f64,
    /// Particles whose Δ was not finite (weight 0, left out of the ELBO).
    pub non_finite: usize,
}

/// Reweights `log_w` (normalised) by `delta` in place and returns the increments (module
/// doc). If no particle has a finite Δ, lnZ_j and ELBO_j are −∞ and the weights are left
/// unchanged.
pub fn reweight(log_w: &mut [f64], delta: &[f64]) -> Increment {
    let non_finite = delta.iter().filter(|d| !d.is_finite()).count();
    let w = normalised_weights(log_w).expect("normalised log-weights");
    let finite_mass: f64 = w
        .iter()
        .zip(delta)
        .filter(|(_, d)| d.is_finite())
        .map(|(w, _)| w)
        .sum();
    let summed: Vec<f64> = log_w
        .iter()
        .zip(delta)
        .map(|(lw, d)| {
            if d.is_finite() {
                lw + d
            } else {
                f64::NEG_INFINITY
            }
        })
        .collect();
    let m = summed.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if !m.is_finite() || finite_mass <= 0.0 {
        return Increment {
            ln_z: f64::NEG_INFINITY,
            elbo: f64::NEG_INFINITY,
            non_finite,
        };
    }
    let s: f64 = summed.iter().map(|v| (v - m).exp()).sum();
    let ln_z = m + s.ln();
    let elbo = w
        .iter()
        .zip(delta)
        .filter(|(_, d)| d.is_finite())
        .map(|(w, d)| w * d)
        .sum::<f64>()
        / finite_mass;
    for (lw, v) in log_w.iter_mut().zip(&summed) {
        *lw = v - ln_z;
    }
    Increment {
        ln_z,
        elbo,
        non_finite,
    }
}

/// Resamples when the normalised ESS of `log_w` is below the threshold: returns the ancestor
/// indices and resets `log_w` to −log n, or `None` (weights untouched).
pub fn maybe_resample(log_w: &mut [f64], resampling: &Resampling) -> Option<Vec<i64>> {
    let w = normalised_weights(log_w)?;
    let n = w.len() as f64;
    let ess = 1.0 / (n * w.iter().map(|v| v * v).sum::<f64>());
    if ess >= resampling.threshold {
        return None;
    }
    let a = ancestors(&w, resampling.scheme);
    log_w.fill(-n.ln());
    Some(a)
}

/// The outcome of one rollout.
pub struct Rollout {
    /// Δ_j per piece, `[n]` each, with the graph of the gradient mode (rows follow the
    /// particles as they were *during* piece j).
    pub deltas: Vec<Tensor>,
    /// log Ẑ = Σ_j lnZ_j.
    pub log_z: f64,
    /// Σ_j ELBO_j.
    pub elbo: f64,
    /// The final normalised log-weights.
    pub log_w: Vec<f64>,
    /// The final particles x_N (after the last resampling and MCMC step), detached unless
    /// pathwise.
    pub x: Tensor,
    /// Σ_j Δ_j per particle (= −R) when no resampling happened, else `None`.
    pub total: Option<Vec<f64>>,
    pub resamples: usize,
    /// Particles with a non-finite Δ, summed over pieces.
    pub non_finite: usize,
    /// Mean MCMC acceptance over the refreshes (None without MCMC).
    pub acceptance: Option<f64>,
}

fn host(t: &Tensor) -> Vec<f64> {
    let t = t.detach().to_kind(Kind::Double).to_device(tch::Device::Cpu);
    Vec::<f64>::try_from(&t).expect("a double tensor")
}

/// Runs the rollout from `x0` (`[n, d]`, drawn from the prior by the caller).
pub fn rollout(
    sampler: &Annealed,
    path: &GeometricPath,
    target: &dyn Target,
    control: &dyn Control,
    x0: &Tensor,
    opts: &SmcOptions,
) -> Rollout {
    let n = x0.size()[0] as usize;
    let mut log_w = vec![-(n as f64).ln(); n];
    let mut x = x0.shallow_clone();
    let mut out = Rollout {
        deltas: Vec::with_capacity(sampler.pieces),
        log_z: 0.0,
        elbo: 0.0,
        log_w: Vec::new(),
        x: x0.shallow_clone(),
        total: Some(vec![0.0; n]),
        resamples: 0,
        non_finite: 0,
        acceptance: None,
    };
    let mut acc = Vec::new();
    for j in 0..sampler.pieces {
        let (a, b) = sampler.piece(j);
        let piece = run_piece(sampler, path, target, control, &x, (a, b), opts.grad);
        let delta = host(&piece.delta);
        let inc = reweight(&mut log_w, &delta);
        out.log_z += inc.ln_z;
        out.elbo += inc.elbo;
        out.non_finite += inc.non_finite;
        if let Some(t) = out.total.as_mut() {
            t.iter_mut().zip(&delta).for_each(|(t, d)| *t += d);
        }
        out.deltas.push(piece.delta);
        x = piece.x;
        if let Some(r) = &opts.resampling {
            if let Some(idx) = maybe_resample(&mut log_w, r) {
                let idx = Tensor::from_slice(&idx).to_device(x.device());
                x = x.index_select(0, &idx);
                out.resamples += 1;
                out.total = None;
            }
        }
        if let Some(m) = &opts.mcmc {
            let r = refresh(m, path, b, target, &x);
            x = r.x;
            acc.push(r.acceptance);
        }
        if opts.grad != Grad::Pathwise {
            x = x.detach();
        }
    }
    out.acceptance = (!acc.is_empty()).then(|| acc.iter().sum::<f64>() / acc.len() as f64);
    out.log_w = log_w;
    out.x = x;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anneal::resample::Scheme;

    fn log_softmax(v: &[f64]) -> Vec<f64> {
        let m = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = v.iter().map(|x| (x - m).exp()).sum();
        v.iter().map(|x| x - m - s.ln()).collect()
    }

    /// Property test over random weights and increments: weights stay normalised, the
    /// increment is log Σ W̄ e^Δ, and resampling keeps n particles, copies only particles with
    /// positive weight and resets the weights to uniform.
    #[test]
    fn reweighting_and_resampling_keep_the_bookkeeping() {
        let _g = crate::testing::rng_lock();
        tch::manual_seed(11);
        let r = Resampling::new(Scheme::Systematic, 0.5).unwrap();
        for case in 0..200 {
            let n = 1 + case % 37;
            let rnd = |s: f64| {
                let t = Tensor::randn([n as i64], (Kind::Double, tch::Device::Cpu)) * s;
                Vec::<f64>::try_from(&t).unwrap()
            };
            let mut log_w = log_softmax(&rnd(2.0));
            let mut delta = rnd(1.0 + (case % 5) as f64);
            if n > 2 && case % 3 == 0 {
                delta[0] = f64::NAN;
                delta[1] = f64::NEG_INFINITY;
            }
            let before = log_w.clone();
            let inc = reweight(&mut log_w, &delta);
            let expect: f64 = before
                .iter()
                .zip(&delta)
                .filter(|(_, d)| d.is_finite())
                .map(|(w, d)| (w + d).exp())
                .sum::<f64>()
                .ln();
            assert!((inc.ln_z - expect).abs() < 1e-10, "case {case}");
            let mass: f64 = log_w.iter().map(|v| v.exp()).sum();
            assert!(
                (mass - 1.0).abs() < 1e-10,
                "case {case}: weights sum to {mass}"
            );
            for (i, d) in delta.iter().enumerate() {
                if !d.is_finite() {
                    assert_eq!(log_w[i], f64::NEG_INFINITY);
                }
            }
            let weights = log_w.clone();
            if let Some(idx) = maybe_resample(&mut log_w, &r) {
                assert_eq!(idx.len(), n);
                assert!(idx.iter().all(|&i| weights[i as usize].is_finite()));
                assert!(log_w.iter().all(|&v| (v + (n as f64).ln()).abs() < 1e-12));
            } else {
                assert_eq!(log_w, weights);
            }
        }
    }
}
