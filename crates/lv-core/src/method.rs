//! Methods as values: prior + base SDE + grid + RND form (spec §5). The trainer and the
//! evaluator use every method the same way.

use crate::grid::TimeGrid;
use crate::prior::Prior;
use crate::sde::Sde;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// Which sampler.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MethodKind {
    /// Path Integral Sampler (Zhang & Chen 2022): δ_0 prior, Brownian reference, form 3.3.
    Pis,
    /// Time-reversed Diffusion Sampler (Berner et al. 2024): VP noising, v ≡ 0, form 3.2.
    Dis,
    /// Denoising Diffusion Sampler, paper era: VP with reference control r = −σx, form 3.3.
    Dds,
    /// Exponential-integrator DDS (later code): cosine grid, form 3.4.
    DdsExp,
    /// General bridge: both controls learned, form 3.2 with the σ∇·v term.
    Bridge,
}

impl MethodKind {
    /// The config name (`pis`, `dis`, `dds`, `dds_exp`, `bridge`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Pis => "pis",
            Self::Dis => "dis",
            Self::Dds => "dds",
            Self::DdsExp => "dds_exp",
            Self::Bridge => "bridge",
        }
    }
}

impl std::fmt::Display for MethodKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for MethodKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "pis" => Self::Pis,
            "dis" => Self::Dis,
            "dds" => Self::Dds,
            "dds_exp" => Self::DdsExp,
            "bridge" => Self::Bridge,
            other => {
                bail!("unknown method `{other}`: expected one of pis, dis, dds, dds_exp, bridge")
            }
        })
    }
}

/// How the log-RND R = log dP_{X^u}/dP_{Y^v} − log Z is accumulated.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RndForm {
    /// Spec §3.2 (DIS, Bridge): R = log p_prior(X_0) + Σ(c_k Δ_k + σ_k ∇·v Δ_k − D_k
    /// + (u + v)·ΔW_k) − log ρ(X_N).
    TimeReversal,
    /// Spec §3.3 (PIS, Euler DDS): reference control r(t, x) = `ref_scale`(t)·x with
    /// `ref_scale` = 0 (PIS) or −σ(t) (DDS); R = Σ(c_k Δ_k + (u − r)·ΔW_k)
    /// + log N(X_N; 0, I) − log ρ(X_N).
    Reference { dds: bool },
    /// Spec §3.4 (exponential-integrator DDS), parameters α and σ.
    ExpIntegrator { alpha: f64, sigma: f64 },
}

/// A sampler: prior, base SDE, time grid and RND form.
#[derive(Clone, Debug)]
pub struct Method {
    pub kind: MethodKind,
    pub prior: Prior,
    pub sde: Sde,
    pub grid: TimeGrid,
    pub form: RndForm,
}

impl Method {
    /// PIS: δ_0 prior, dX = √0.2 dW on [0, 5], `steps` uniform steps (paper: 200).
    pub fn pis(steps: usize) -> Result<Self> {
        let sde = Sde::bm_pis();
        Ok(Self {
            kind: MethodKind::Pis,
            prior: Prior::Dirac,
            grid: TimeGrid::uniform(sde.t_end(), steps)?,
            sde,
            form: RndForm::Reference { dds: false },
        })
    }

    /// PIS with an explicit reference (σ, T); σ²T = 1 keeps p_ref = N(0, I) exact.
    pub fn pis_with(sigma: f64, t_end: f64, steps: usize) -> Result<Self> {
        let sde = Sde::Bm { sigma, t_end };
        Ok(Self {
            kind: MethodKind::Pis,
            prior: Prior::Dirac,
            grid: TimeGrid::uniform(t_end, steps)?,
            sde,
            form: RndForm::Reference { dds: false },
        })
    }

    /// DIS: truncated N(0, I) prior, `vp_10`, uniform grid.
    pub fn dis(steps: usize) -> Result<Self> {
        let sde = Sde::vp10();
        Ok(Self {
            kind: MethodKind::Dis,
            prior: Prior::trunc_standard(),
            grid: TimeGrid::uniform(sde.t_end(), steps)?,
            sde,
            form: RndForm::TimeReversal,
        })
    }

    /// Euler DDS (paper era): truncated N(0, I) prior, `vp_10`, r = −σ(t)x.
    pub fn dds(steps: usize) -> Result<Self> {
        let sde = Sde::vp10();
        Ok(Self {
            kind: MethodKind::Dds,
            prior: Prior::trunc_standard(),
            grid: TimeGrid::uniform(sde.t_end(), steps)?,
            sde,
            form: RndForm::Reference { dds: true },
        })
    }

    /// Exponential-integrator DDS (later code): truncated N(0, 1) prior, cosine grid
    /// (dt 0.05, end 12.8), α = σ = 1.
    pub fn dds_exp() -> Result<Self> {
        let grid = TimeGrid::cosine_dds(0.05, 12.8)?;
        Ok(Self {
            kind: MethodKind::DdsExp,
            prior: Prior::trunc_standard(),
            sde: Sde::Bm {
                sigma: 1.0,
                t_end: grid.t_end(),
            },
            grid,
            form: RndForm::ExpIntegrator {
                alpha: 1.0,
                sigma: 1.0,
            },
        })
    }

    /// Bridge: truncated N(0, I) prior, Brownian motion σ = 1 on [0, 1], form 3.2 with v.
    pub fn bridge(steps: usize) -> Result<Self> {
        let sde = Sde::bm_unit();
        Ok(Self {
            kind: MethodKind::Bridge,
            prior: Prior::trunc_standard(),
            grid: TimeGrid::uniform(sde.t_end(), steps)?,
            sde,
            form: RndForm::TimeReversal,
        })
    }

    /// The method of a kind with the paper's SDE and `steps` uniform steps (ignored by
    /// `dds_exp`, whose grid is fixed).
    pub fn from_kind(kind: MethodKind, steps: usize) -> Result<Self> {
        match kind {
            MethodKind::Pis => Self::pis(steps),
            MethodKind::Dis => Self::dis(steps),
            MethodKind::Dds => Self::dds(steps),
            MethodKind::DdsExp => Self::dds_exp(),
            MethodKind::Bridge => Self::bridge(steps),
        }
    }

    /// Reference-control coefficient: r(t, x) = `ref_scale(t)`·x (form 3.3 only).
    pub fn ref_scale(&self, t: f64) -> f64 {
        match self.form {
            RndForm::Reference { dds: true } => -self.sde.sigma(t),
            _ => 0.0,
        }
    }

    /// Whether this method needs an inference control v (the bridge).
    pub fn has_inference_control(&self) -> bool {
        self.kind == MethodKind::Bridge
    }
}
