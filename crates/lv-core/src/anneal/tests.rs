//! Analytic tests of the annealed samplers: a Gaussian prior and a Gaussian target, whose
//! geometric path stays Gaussian with known normalisers and a known optimal control.

use super::*;
use crate::control::{Control, FnControl, ZeroControl};
use crate::estimate::log_mean_exp;
use crate::loss::LossKind;
use crate::testing::{rng_lock, LinearControl, ScaledGauss};
use tch::{Device, Kind, Tensor};

/// Prior N(0, a² I), target ρ = Z·N(m·1, b² I) in d dimensions.
#[derive(Clone, Copy)]
struct GaussPath {
    a: f64,
    b: f64,
    m: f64,
    log_z: f64,
    d: usize,
}

impl GaussPath {
    fn target(&self) -> ScaledGauss {
        ScaledGauss {
            dim: self.d,
            mean: self.m,
            std: self.b,
            log_z: self.log_z,
        }
    }

    /// (mean, variance) of π_β per coordinate and their β-derivatives.
    fn moments(&self, beta: f64) -> (f64, f64, f64, f64) {
        let (a2, b2) = (self.a * self.a, self.b * self.b);
        let lam = (1.0 - beta) / a2 + beta / b2;
        let v = 1.0 / lam;
        let dv = -v * v * (1.0 / b2 - 1.0 / a2);
        let mu = v * beta * self.m / b2;
        let dmu = (dv * beta + v) * self.m / b2;
        (mu, v, dmu, dv)
    }

    /// log Z_β of γ_β = p_prior^(1−β) ρ^β.
    fn log_z_at(&self, beta: f64) -> f64 {
        let (a2, b2) = (self.a * self.a, self.b * self.b);
        let (_, v, _, _) = self.moments(beta);
        let w = 1.0 - beta;
        let tau = std::f64::consts::TAU;
        let per = -(w / 2.0) * (tau * a2).ln() - (beta / 2.0) * (tau * b2).ln()
            + 0.5 * (tau * v).ln()
            + (beta * self.m / b2).powi(2) * v / 2.0
            - beta * self.m * self.m / (2.0 * b2);
        beta * self.log_z + self.d as f64 * per
    }

    /// The optimal control of the linear schedule β = t with constant σ:
    /// σ²u = μ̇ + (v̇/(2v))(x − μ).
    fn optimal(self, sigma: f64) -> impl Control {
        FnControl(move |t: f64, x: &Tensor| {
            let (mu, v, dmu, dv) = self.moments(t);
            ((x - mu) * (dv / (2.0 * v)) + dmu) / (sigma * sigma)
        })
    }
}

const CASE: GaussPath = GaussPath {
    a: 1.0,
    b: 0.5,
    m: 1.0,
    log_z: 0.7,
    d: 2,
};

fn sampler(steps: usize, pieces: usize, backward: BackwardLevel) -> Annealed {
    Annealed::new(
        steps,
        CASE.a,
        Diffusion::Constant { sigma: 1.0 },
        backward,
        pieces,
    )
    .unwrap()
}

fn linear_path(steps: usize) -> GeometricPath {
    GeometricPath {
        prior_std: CASE.a,
        betas: Betas::new(BetaKind::Linear, steps, Device::Cpu)
            .unwrap()
            .values(Device::Cpu),
    }
}

fn x0(n: i64) -> Tensor {
    Tensor::randn([n, CASE.d as i64], (Kind::Double, Device::Cpu)) * CASE.a
}

fn var(v: &[f64]) -> f64 {
    let m = v.iter().sum::<f64>() / v.len() as f64;
    v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64
}

#[test]
fn closed_form_normalisers_match_the_endpoints() {
    assert!(CASE.log_z_at(0.0).abs() < 1e-12);
    assert!((CASE.log_z_at(1.0) - CASE.log_z).abs() < 1e-12);
}

#[test]
fn optimal_cmcd_control_has_lv_shrinking_with_the_step_and_exact_log_z() {
    let _g = rng_lock();
    let target = CASE.target();
    let u = CASE.optimal(1.0);
    for backward in [BackwardLevel::Next, BackwardLevel::Same] {
        let mut vars = Vec::new();
        let mut err = f64::NAN;
        for steps in [16usize, 64, 256] {
            tch::manual_seed(5);
            let s = sampler(steps, 1, backward);
            let ro = rollout(
                &s,
                &linear_path(steps),
                &target,
                &u,
                &x0(4000),
                &SmcOptions::plain(Grad::None),
            );
            let total = ro.total.unwrap();
            vars.push(var(&total));
            err = (log_mean_exp(&total) - CASE.log_z).abs();
            assert!((ro.log_z - log_mean_exp(&total)).abs() < 1e-9);
        }
        // Var(R) = O(Δ): a quarter of the step, roughly a quarter of the variance.
        assert!(
            vars[1] < 0.45 * vars[0] && vars[2] < 0.45 * vars[1],
            "{backward:?}: Var R over N = 16, 64, 256: {vars:?}"
        );
        assert!(
            err < 0.02,
            "{backward:?}: |log Ẑ − log Z| = {err} at N = 256"
        );
    }
    // The zero control on the same path is far from optimal at the same N.
    tch::manual_seed(5);
    let ro = rollout(
        &sampler(256, 1, BackwardLevel::Next),
        &linear_path(256),
        &target,
        &ZeroControl,
        &x0(4000),
        &SmcOptions::plain(Grad::None),
    );
    assert!(var(&ro.total.unwrap()) > 0.1);
}

#[test]
fn piece_increments_of_the_optimal_control_are_the_normaliser_ratios() {
    let _g = rng_lock();
    tch::manual_seed(6);
    let steps = 512;
    let s = sampler(steps, 4, BackwardLevel::Next);
    let ro = rollout(
        &s,
        &linear_path(steps),
        &CASE.target(),
        &CASE.optimal(1.0),
        &x0(2000),
        &SmcOptions::plain(Grad::None),
    );
    for (j, delta) in ro.deltas.iter().enumerate() {
        let (a, b) = s.piece(j);
        let want = CASE.log_z_at(b as f64 / steps as f64) - CASE.log_z_at(a as f64 / steps as f64);
        let mean = delta.mean(Kind::Double).double_value(&[]);
        assert!(
            (mean - want).abs() < 0.01,
            "piece {j}: mean Δ {mean} vs {want}"
        );
    }
    // Without resampling the SMC estimate is the importance-sampling one, piece by piece.
    let total = ro.total.unwrap();
    assert!((ro.log_z - log_mean_exp(&total)).abs() < 1e-9);
    // Per piece Σ W̄Δ ≤ log Σ W̄ e^Δ (Jensen), so the SMC ELBO stays below log Ẑ.
    assert!(
        ro.elbo <= ro.log_z + 1e-12,
        "ELBO {} above log Ẑ {}",
        ro.elbo,
        ro.log_z
    );
}

#[test]
fn smc_with_zero_control_is_unbiased_in_z() {
    let _g = rng_lock();
    tch::manual_seed(7);
    let target = ScaledGauss {
        dim: 2,
        mean: 1.5,
        std: 0.6,
        log_z: 0.3,
    };
    let steps = 16;
    let s = Annealed::new(
        steps,
        1.0,
        Diffusion::Constant { sigma: 0.7 },
        BackwardLevel::Next,
        4,
    )
    .unwrap();
    let path = GeometricPath {
        prior_std: 1.0,
        betas: Betas::new(BetaKind::Linear, steps, Device::Cpu)
            .unwrap()
            .values(Device::Cpu),
    };
    let opts = SmcOptions {
        resampling: Some(Resampling::new(Scheme::Systematic, 0.8).unwrap()),
        mcmc: Some(Mcmc::new(McmcKind::Mala, 2, 0.05).unwrap()),
        grad: Grad::None,
    };
    let seeds = 400;
    let mut ratios = Vec::with_capacity(seeds);
    let mut resamples = 0;
    for _ in 0..seeds {
        let x = Tensor::randn([24, 2], (Kind::Double, Device::Cpu));
        let ro = rollout(&s, &path, &target, &ZeroControl, &x, &opts);
        resamples += ro.resamples;
        ratios.push((ro.log_z - target.log_z).exp());
    }
    let mean = ratios.iter().sum::<f64>() / seeds as f64;
    let se = (var(&ratios) / seeds as f64).sqrt();
    assert!(resamples > seeds, "resampling fired only {resamples} times");
    assert!(
        se < 0.1,
        "standard error {se} too large for a meaningful check"
    );
    assert!((mean - 1.0).abs() < 3.0 * se, "mean Ẑ/Z = {mean} ± {se}");
}

#[test]
fn lv_training_reduces_the_piece_variance_and_reaches_the_betas() {
    let _g = rng_lock();
    tch::manual_seed(8);
    let target = CASE.target();
    let s = Annealed::new(
        16,
        CASE.a,
        Diffusion::Constant { sigma: 1.0 },
        BackwardLevel::Next,
        2,
    )
    .unwrap();
    let betas = Betas::new(BetaKind::Learnt, 16, Device::Cpu).unwrap();
    let control = LinearControl::new(2, false);
    let settings = AnnealedSettings {
        batch: 256,
        lr: 2e-2,
        beta_lr: 1e-2,
        ..AnnealedSettings::default()
    };
    let mut tr = AnnealedTrainer::new(
        &s,
        &betas,
        &target,
        &control,
        LossKind::LvBiased,
        settings,
        Device::Cpu,
    )
    .unwrap();
    let probe = |tr: &AnnealedTrainer<'_>| {
        tch::manual_seed(99);
        let x = tr_x0(2000);
        tch::no_grad(|| tr.rollout_loss(&x).0.double_value(&[]))
    };
    let before = probe(&tr);
    tch::manual_seed(8);
    for _ in 0..150 {
        let st = tr.step(&mut ());
        assert!(!st.skipped);
    }
    let after = probe(&tr);
    assert!(after < 0.5 * before, "LV per piece {before} → {after}");
    let b = betas.host();
    assert!(
        b.iter()
            .enumerate()
            .any(|(k, v)| (v - k as f64 / 16.0).abs() > 1e-4),
        "the learnt β did not move: {b:?}"
    );
    let ev = tr.evaluate_full(2000, 1000);
    assert!(
        (ev.model.log_z_is - CASE.log_z).abs() < 0.1,
        "{:?}",
        ev.model
    );
}

fn tr_x0(n: i64) -> Tensor {
    Tensor::randn([n, CASE.d as i64], (Kind::Float, Device::Cpu)) * CASE.a
}

#[test]
fn kl_training_runs_pathwise_and_the_trainer_rejects_bad_combinations() {
    let _g = rng_lock();
    tch::manual_seed(9);
    let target = CASE.target();
    let s1 = sampler(8, 1, BackwardLevel::Next);
    let s2 = sampler(8, 2, BackwardLevel::Next);
    let betas = Betas::new(BetaKind::Linear, 8, Device::Cpu).unwrap();
    let control = LinearControl::new(2, true);
    let settings = AnnealedSettings {
        batch: 64,
        ..AnnealedSettings::default()
    };
    let mk =
        |s, loss, st| AnnealedTrainer::new(s, &betas, &target, &control, loss, st, Device::Cpu);
    let mut tr = mk(&s1, LossKind::Kl, settings.clone()).unwrap();
    let st = tr.step(&mut ());
    assert!(st.loss.is_finite() && st.grad_norm > 0.0, "{st:?}");
    assert!(mk(&s2, LossKind::Kl, settings.clone()).is_err());
    assert!(mk(&s1, LossKind::Moment, settings.clone()).is_err());
    let bad = AnnealedSettings {
        batch: 1,
        ..settings.clone()
    };
    assert!(mk(&s1, LossKind::Lv, bad).is_err());
    let betas16 = Betas::new(BetaKind::Linear, 16, Device::Cpu).unwrap();
    assert!(AnnealedTrainer::new(
        &s1,
        &betas16,
        &target,
        &control,
        LossKind::Lv,
        settings,
        Device::Cpu
    )
    .is_err());
    assert!(Annealed::new(
        10,
        1.0,
        Diffusion::Constant { sigma: 1.0 },
        BackwardLevel::Next,
        3
    )
    .is_err());
}
