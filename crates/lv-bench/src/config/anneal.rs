//! The `[anneal]` section of a run config: the settings of the annealed samplers `cmcd` and
//! `scld` (lv_core::anneal), resolved once into typed values.

use anyhow::{bail, Result};
use lv_core::anneal::{
    Annealed, AnnealedSettings, BackwardLevel, BetaKind, Diffusion, Mcmc, McmcKind, Resampling,
    Scheme,
};
use lv_core::method::MethodKind;
use lv_core::train::TrainSettings;
use serde::{Deserialize, Serialize};

/// The diffusion schedule of `[anneal]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DiffusionKind {
    /// SCLD's cosine schedule between `sigma_min` and `sigma_max` (largest value ≈ σ_max/2).
    #[default]
    Cosine,
    /// σ_k = `sigma_max`.
    Constant,
}

/// Resampling of `[anneal]` (`none` switches it off).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResampleSetting {
    None,
    Systematic,
    Multinomial,
}

/// The MCMC refresh of `[anneal]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum McmcSetting {
    #[default]
    None,
    Ula,
    Mala,
}

/// `[anneal]`: N is `sde.steps`; batch, steps, lr, its schedules, weight decay, `max_loss`,
/// `grad_clip` (global norm, after the elementwise `grad_clamp`) and exploration come from
/// `[train]`. `train.max_rnd`, `max_grad`, the clip milestones and the gradient-path keys
/// (replay, direct, native, shards) belong to the diffusion methods.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnnealConfig {
    /// K pieces (`cmcd`: 1; `scld` default 4); must divide `sde.steps`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pieces: Option<usize>,
    /// s of the prior N(0, s² I).
    pub prior_std: f64,
    pub beta: BetaKind,
    /// Learning rate of a learnt β.
    pub beta_lr: f64,
    pub diffusion: DiffusionKind,
    pub sigma_min: f64,
    pub sigma_max: f64,
    pub backward: BackwardLevel,
    /// Resampling of training and SMC evaluation (`cmcd` default none, `scld` multinomial).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resample: Option<ResampleSetting>,
    /// Resample when the normalised ESS falls below this (SCLD: 0.3).
    pub resample_threshold: f64,
    pub mcmc: McmcSetting,
    pub mcmc_steps: usize,
    pub mcmc_step_size: f64,
    /// Elementwise gradient clamp (CMCD/SCLD: 1); 0 switches it off.
    pub grad_clamp: f64,
}

impl Default for AnnealConfig {
    fn default() -> Self {
        Self {
            pieces: None,
            prior_std: 1.0,
            beta: BetaKind::Learnt,
            beta_lr: 1e-2,
            diffusion: DiffusionKind::Cosine,
            sigma_min: 0.01,
            sigma_max: 1.0,
            backward: BackwardLevel::Next,
            resample: None,
            resample_threshold: 0.3,
            mcmc: McmcSetting::None,
            mcmc_steps: 1,
            mcmc_step_size: 0.01,
            grad_clamp: 1.0,
        }
    }
}

/// The resolved annealed run: the sampler, its β kind and the trainer settings.
#[derive(Clone, Debug, PartialEq)]
pub struct AnnealParts {
    pub sampler: Annealed,
    pub beta: BetaKind,
    pub settings: AnnealedSettings,
}

impl AnnealConfig {
    /// Resolves the section for `method` with `steps` = N and the `[train]` settings; errors
    /// name the key.
    pub fn resolve(
        &self,
        method: MethodKind,
        steps: usize,
        train: &TrainSettings,
    ) -> Result<AnnealParts> {
        use lv_core::check::positive;
        let pieces = self.pieces.unwrap_or(match method {
            MethodKind::Scld => 4,
            _ => 1,
        });
        if method == MethodKind::Cmcd && pieces != 1 {
            bail!("key `anneal.pieces`: cmcd has one piece (got {pieces}); use method scld");
        }
        positive("anneal.prior_std", self.prior_std)?;
        positive("anneal.beta_lr", self.beta_lr)?;
        positive("anneal.sigma_max", self.sigma_max)?;
        let diffusion = match self.diffusion {
            DiffusionKind::Cosine => {
                positive("anneal.sigma_min", self.sigma_min)?;
                if self.sigma_min > self.sigma_max {
                    bail!(
                        "key `anneal.sigma_min` ({}) must be at most `anneal.sigma_max` ({})",
                        self.sigma_min,
                        self.sigma_max
                    );
                }
                Diffusion::Cosine {
                    min: self.sigma_min,
                    max: self.sigma_max,
                }
            }
            DiffusionKind::Constant => Diffusion::Constant {
                sigma: self.sigma_max,
            },
        };
        let sampler = Annealed::new(steps, self.prior_std, diffusion, self.backward, pieces)
            .map_err(|e| anyhow::anyhow!("key `anneal`: {e}"))?;
        let resample = self.resample.unwrap_or(match method {
            MethodKind::Scld => ResampleSetting::Multinomial,
            _ => ResampleSetting::None,
        });
        let scheme = match resample {
            ResampleSetting::None => None,
            ResampleSetting::Systematic => Some(Scheme::Systematic),
            ResampleSetting::Multinomial => Some(Scheme::Multinomial),
        };
        let resampling = scheme
            .map(|s| Resampling::new(s, self.resample_threshold))
            .transpose()
            .map_err(|e| anyhow::anyhow!("key `anneal.resample_threshold`: {e}"))?;
        let kind = match self.mcmc {
            McmcSetting::None => None,
            McmcSetting::Ula => Some(McmcKind::Ula),
            McmcSetting::Mala => Some(McmcKind::Mala),
        };
        let mcmc = kind
            .map(|k| Mcmc::new(k, self.mcmc_steps, self.mcmc_step_size))
            .transpose()
            .map_err(|e| anyhow::anyhow!("key `anneal.mcmc`: {e}"))?;
        if !(self.grad_clamp.is_finite() && self.grad_clamp >= 0.0) {
            bail!(
                "key `anneal.grad_clamp` must be ≥ 0 and finite (got {})",
                self.grad_clamp
            );
        }
        let settings = AnnealedSettings {
            batch: train.batch,
            lr: train.lr,
            weight_decay: train.weight_decay,
            lr_schedule: train.lr_schedule,
            lr_milestones: train.lr_milestones.clone(),
            beta_lr: self.beta_lr,
            grad_clamp: (self.grad_clamp > 0.0).then_some(self.grad_clamp),
            grad_clip: train.grad_clip,
            max_loss: train.max_loss,
            resampling,
            mcmc,
            exploration: train.exploration(),
        };
        Ok(AnnealParts {
            sampler,
            beta: self.beta,
            settings,
        })
    }
}
