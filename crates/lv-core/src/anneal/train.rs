//! Training and evaluation of an annealed sampler.
//!
//! One step draws x_0 ~ N(0, s² I) (B particles), runs one rollout ([`super::smc`]) and
//! takes one Adam step on
//! - **KL** (K = 1, no resampling): mean_i R_i/d with R = −Δ, gradient through the states;
//! - **LV family** (`lv`, `lv_biased`, `vargrad`): the mean over the K pieces of the batch
//!   variance of Δ_j (the loss's divisor and 1/d convention, [`crate::loss::LossKind`]),
//!   states detached inside and between pieces, the training rollout resampling and
//!   refreshing as configured. Var(Δ_j) is invariant to the constant log(Z_b/Z_a), so no
//!   learned log-normaliser enters the LV losses.
//!
//! A step is skipped (counted, no update) when the loss or a gradient is not finite or
//! |loss| > `max_loss`; non-finite Δ are left out of the loss and counted as filtered.
//! Gradients are then clamped elementwise (`grad_clamp`, optax.clip as in CMCD/SCLD) and/or
//! clipped in global norm (`grad_clip`).

use super::path::GeometricPath;
use super::sampler::{Annealed, Grad};
use super::schedule::Betas;
use super::smc::{rollout, SmcOptions};
use super::{Mcmc, Resampling};
use crate::control::Control;
use crate::driver::Learner;
use crate::estimate::Evaluation;
use crate::loss::{batch_loss, LossKind};
use crate::optim::{clip_grad_norm, grad_norm, schedule_factor, Adam, LrMilestones, ParamGroup};
use crate::target::Target;
use crate::train::{Counters, Exploration, Hooks, StepStats};
use anyhow::{bail, Result};
use tch::{Device, Kind, Tensor};

/// Settings of annealed training.
#[derive(Clone, Debug, PartialEq)]
pub struct AnnealedSettings {
    pub batch: usize,
    /// Learning rate of the control.
    pub lr: f64,
    /// Coupled L2 weight decay of Adam.
    pub weight_decay: f64,
    /// StepLR (every, γ) and milestones, as [`crate::train::TrainSettings`]; both scale the
    /// learning rates of the control and of β.
    pub lr_schedule: Option<(usize, f64)>,
    pub lr_milestones: Option<LrMilestones>,
    /// Learning rate of a learnt β schedule.
    pub beta_lr: f64,
    /// Elementwise gradient clamp to [−c, c] (CMCD/SCLD: 1), or none.
    pub grad_clamp: Option<f64>,
    /// Global-norm gradient clipping, or none.
    pub grad_clip: Option<f64>,
    /// Skip steps with |loss| above this.
    pub max_loss: Option<f64>,
    /// Resampling of the training rollout (LV family only; SCLD: multinomial at 0.3).
    pub resampling: Option<Resampling>,
    /// MCMC refresh of the training rollout after each piece.
    pub mcmc: Option<Mcmc>,
    /// Exploration: behaviour noise λ ≥ 1 returning to 1 (LV family only).
    pub exploration: Exploration,
}

impl Default for AnnealedSettings {
    fn default() -> Self {
        Self {
            batch: 2000,
            lr: 1e-3,
            weight_decay: 0.0,
            lr_schedule: None,
            lr_milestones: None,
            beta_lr: 1e-2,
            grad_clamp: Some(1.0),
            grad_clip: None,
            max_loss: Some(1e7),
            resampling: None,
            mcmc: None,
            exploration: Exploration::default(),
        }
    }
}

/// The estimates of one evaluation: the plain rollout (importance sampling, the library's
/// [`Evaluation`]) and, when SMC is configured, the SMC rollout's log Z and ELBO.
pub struct AnnealedEval {
    pub model: Evaluation,
    /// Final particles of the plain rollout, `[n, d]` (importance-weighted by `model`).
    pub samples: Tensor,
    /// log Ẑ_SMC, ELBO_SMC and the SMC particles, when resampling or MCMC is configured.
    pub smc: Option<SmcEval>,
}

/// The SMC part of an evaluation.
pub struct SmcEval {
    pub log_z: f64,
    pub elbo: f64,
    pub resamples: usize,
    pub acceptance: Option<f64>,
    pub samples: Tensor,
}

/// The trainer of an annealed sampler.
pub struct AnnealedTrainer<'a> {
    pub sampler: &'a Annealed,
    pub betas: &'a Betas,
    pub target: &'a dyn Target,
    pub control: &'a dyn Control,
    pub loss: LossKind,
    pub settings: AnnealedSettings,
    pub adam: Adam,
    pub counters: Counters,
    pub device: Device,
    params: Vec<Tensor>,
}

impl<'a> AnnealedTrainer<'a> {
    /// Checks the combination (loss, pieces, resampling) and builds the optimiser.
    pub fn new(
        sampler: &'a Annealed,
        betas: &'a Betas,
        target: &'a dyn Target,
        control: &'a dyn Control,
        loss: LossKind,
        settings: AnnealedSettings,
        device: Device,
    ) -> Result<Self> {
        match loss {
            LossKind::Kl => {
                if sampler.pieces != 1 || settings.resampling.is_some() {
                    bail!(
                        "the kl loss of an annealed sampler needs one piece and no resampling \
                         (CMCD-KL); use an LV loss for SCLD"
                    );
                }
                if settings.exploration.scale > 1.0 {
                    bail!("exploration (behaviour noise > 1) is only valid for LV losses");
                }
            }
            LossKind::Lv | LossKind::LvBiased | LossKind::VarGrad => {}
            other => bail!(
                "loss `{}` is not available for annealed samplers: expected kl, lv, \
                 lv_biased, vargrad",
                other.name()
            ),
        }
        if betas.steps != sampler.steps {
            bail!(
                "the β schedule has {} steps but the sampler {}",
                betas.steps,
                sampler.steps
            );
        }
        if settings.batch < 2 {
            bail!(
                "annealed training needs a batch of at least 2 (got {})",
                settings.batch
            );
        }
        if !(settings.exploration.scale.is_finite() && settings.exploration.scale >= 1.0) {
            bail!(
                "the exploration scale must be ≥ 1 (got {})",
                settings.exploration.scale
            );
        }
        let groups = vec![
            ParamGroup {
                params: control.parameters(),
                lr: settings.lr,
            },
            ParamGroup {
                params: betas.parameters(),
                lr: settings.beta_lr,
            },
        ];
        let params = groups
            .iter()
            .flat_map(|g| g.params.iter().map(Tensor::shallow_clone))
            .collect();
        Ok(Self {
            sampler,
            betas,
            target,
            control,
            loss,
            adam: Adam::new(groups, settings.weight_decay),
            settings,
            counters: Counters::default(),
            device,
            params,
        })
    }

    /// The current behaviour noise scale λ.
    pub fn noise_scale(&self) -> f64 {
        self.settings.exploration.noise_scale(self.counters.step)
    }

    fn path(&self) -> GeometricPath {
        GeometricPath {
            prior_std: self.sampler.prior_std,
            betas: self.betas.values(self.device),
        }
    }

    fn prior_draw(&self, n: usize) -> Tensor {
        let d = self.target.dim() as i64;
        Tensor::randn([n as i64, d], (Kind::Float, self.device)) * self.sampler.prior_std
    }

    /// The loss of one rollout from `x0` with the training settings, and the number of
    /// particles (over pieces) whose Δ entered it.
    pub fn rollout_loss(&self, x0: &Tensor) -> (Tensor, f64) {
        let d = self.target.dim();
        let path = self.path();
        let kl = self.loss == LossKind::Kl;
        let opts = SmcOptions {
            resampling: if kl { None } else { self.settings.resampling },
            mcmc: self.settings.mcmc,
            grad: if kl {
                Grad::Pathwise
            } else {
                Grad::Detached {
                    noise_scale: self.noise_scale(),
                }
            },
        };
        let ro = rollout(self.sampler, &path, self.target, self.control, x0, &opts);
        let k = ro.deltas.len() as f64;
        let mut total = Tensor::zeros([], (Kind::Float, self.device));
        let mut kept = 0.0;
        for delta in &ro.deltas {
            let r = (-delta).to_kind(Kind::Float);
            let v = batch_loss(self.loss, &r, None, d, None);
            kept += v.kept.double_value(&[]);
            total = &total + v.loss / k;
        }
        (total, kept)
    }

    /// One training step (module doc); `hooks.after_update` runs after a successful update.
    pub fn step(&mut self, hooks: &mut dyn Hooks) -> StepStats {
        self.adam.zero_grad();
        let n = self.settings.batch;
        let x0 = self.prior_draw(n);
        let (loss, kept) = self.rollout_loss(&x0);
        let pieces = self.sampler.pieces as f64;
        self.counters.filtered += (n as f64 * pieces - kept).max(0.0) as u64;
        let lv = loss.double_value(&[]);
        let mut skipped = !lv.is_finite() || self.settings.max_loss.is_some_and(|m| lv.abs() > m);
        let mut gn = f64::NAN;
        if !skipped {
            loss.backward();
            gn = grad_norm(&self.params).double_value(&[]);
            skipped = !gn.is_finite();
        }
        if !skipped {
            tch::no_grad(|| {
                if let Some(c) = self.settings.grad_clamp {
                    for p in &self.params {
                        let mut g = p.grad();
                        if g.defined() {
                            let _ = g.clamp_(-c, c);
                        }
                    }
                }
            });
            if let Some(m) = self.settings.grad_clip {
                let norm = grad_norm(&self.params);
                clip_grad_norm(&self.params, &norm, m);
            }
            self.adam.step();
            self.counters.successful += 1;
            let s = &self.settings;
            if let Some(f) = schedule_factor(
                s.lr_schedule,
                s.lr_milestones.as_ref(),
                self.counters.successful,
            ) {
                self.adam.lr_factor = f;
            }
            hooks.after_update(&self.counters);
        } else {
            self.counters.skipped += 1;
        }
        self.counters.step += 1;
        StepStats {
            step: self.counters.step,
            loss: lv,
            skipped,
            kept,
            grad_norm: gn,
            lr: self.settings.lr * self.adam.lr_factor,
        }
    }

    /// Evaluates on `n` particles: the plain rollout in chunks of `chunk`, and one SMC
    /// rollout of all n when resampling or MCMC is configured.
    pub fn evaluate_full(&self, n: usize, chunk: usize) -> AnnealedEval {
        let (model, samples) = self.evaluate_plain(n, chunk);
        let path = tch::no_grad(|| self.path());
        let smc = (self.settings.resampling.is_some() || self.settings.mcmc.is_some()).then(|| {
            let opts = SmcOptions {
                resampling: self.settings.resampling,
                mcmc: self.settings.mcmc,
                grad: Grad::None,
            };
            let x0 = self.prior_draw(n);
            let ro = rollout(self.sampler, &path, self.target, self.control, &x0, &opts);
            SmcEval {
                log_z: ro.log_z,
                elbo: ro.elbo,
                resamples: ro.resamples,
                acceptance: ro.acceptance,
                samples: ro.x,
            }
        });
        AnnealedEval {
            model,
            samples,
            smc,
        }
    }

    /// The plain rollout (importance sampling) on `n` particles in chunks of `chunk`: the
    /// estimates with −R = Σ_j Δ_j for both passes (discrete time has no Itô term to drop),
    /// and the final particles.
    pub fn evaluate_plain(&self, n: usize, chunk: usize) -> (Evaluation, Tensor) {
        let start = std::time::Instant::now();
        let path = tch::no_grad(|| self.path());
        let plain = SmcOptions::plain(Grad::None);
        let mut neg_r = Vec::with_capacity(n);
        let mut samples = Vec::new();
        let mut done = 0;
        while done < n {
            let m = chunk.max(1).min(n - done);
            let x0 = self.prior_draw(m);
            let ro = rollout(self.sampler, &path, self.target, self.control, &x0, &plain);
            neg_r.extend(ro.total.expect("no resampling in the plain rollout"));
            samples.push(ro.x);
            done += m;
        }
        let secs = start.elapsed().as_secs_f64();
        let model = Evaluation::from_log_weights(&neg_r, &neg_r, secs);
        (model, Tensor::cat(&samples, 0).to_device(Device::Cpu))
    }
}

impl Learner for AnnealedTrainer<'_> {
    fn step(&mut self, hooks: &mut dyn Hooks) -> StepStats {
        AnnealedTrainer::step(self, hooks)
    }
    /// The plain rollout's estimates and samples (no SMC run during training).
    fn evaluate(&self, n: usize, chunk: usize) -> (Evaluation, Tensor) {
        let ev = self.evaluate_plain(n, chunk);
        (ev.0, ev.1)
    }
    fn counters(&self) -> &Counters {
        &self.counters
    }
    fn state(&self) -> Vec<(String, Tensor)> {
        self.adam.state()
    }
    fn restore(&mut self, named: &[(String, Tensor)], counters: Counters) -> Result<()> {
        self.adam.load_state(named)?;
        self.counters = counters;
        Ok(())
    }
}
