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
    /// The discrete-time "ou_dds" reference of the RSMC code (nolerk/gfn-smc-jax, spec
    /// benchmarks §5.1): N(0, σ₀²I) prior, OU kernels with the cos⁴ step scheme
    /// ([`ou_dds_alpha`]); [`RndForm::OuDds`].
    OuDds,
    /// Controlled Monte Carlo diffusions (Vargas et al. 2024): annealed Langevin with a learned
    /// control, one piece; built by [`crate::anneal`] (no [`Method`] value).
    Cmcd,
    /// Sequential controlled Langevin diffusions (Chen et al. 2025): CMCD in K pieces joined
    /// by SMC resampling; built by [`crate::anneal`] (no [`Method`] value).
    Scld,
}

impl MethodKind {
    /// Whether the kind is an annealed sampler of [`crate::anneal`] rather than a [`Method`].
    pub fn is_annealed(self) -> bool {
        matches!(self, Self::Cmcd | Self::Scld)
    }

    /// The config name (`pis`, `dis`, `dds`, `dds_exp`, `bridge`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Pis => "pis",
            Self::Dis => "dis",
            Self::Dds => "dds",
            Self::DdsExp => "dds_exp",
            Self::Bridge => "bridge",
            Self::OuDds => "ou_dds",
            Self::Cmcd => "cmcd",
            Self::Scld => "scld",
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
            "ou_dds" => Self::OuDds,
            "cmcd" => Self::Cmcd,
            "scld" => Self::Scld,
            other => {
                bail!(
                    "unknown method `{other}`: expected one of pis, dis, dds, dds_exp, bridge, \
                     ou_dds, cmcd, scld"
                )
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
    /// The discrete-time OU reference of RSMC's "ou_dds" on the uniform grid t_n = n/N,
    /// N = `steps`, with a_n = [`ou_dds_alpha`]`(n, N, noise_scale)`:
    /// forward kernel p_F(x_{n+1}|x_n) = N(√(1−a_n)x_n + a_n u_n, a_n σ₀² I) (the control u
    /// is RSMC's mean shift f_θ), backward kernel p_B(x_n|x_{n+1}) = N(√(1−a_n)x_{n+1},
    /// a_n σ₀² I), prior N(0, σ₀² I). The OU kernel is reversible for N(0, σ₀² I), so
    /// r(τ) = log p_0(x_0) + Σ log p_F − Σ log p_B − log ρ(x_N) is exactly
    /// Σ_n [(a_n/σ₀²) u_n·(w_n − ½u_n) + (√a_n/σ₀) u_n·ξ_n] + log N(x_N; 0, σ₀² I) − log ρ(x_N)
    /// (no discretisation error).
    OuDds {
        sigma0: f64,
        noise_scale: f64,
        steps: usize,
    },
}

/// Offset s of the cos⁴ step scheme of DDS/RSMC.
pub const OU_DDS_OFFSET: f64 = 0.008;

/// The step coefficient a_n of RSMC's "ou_dds" reference (its `cos_sq_fn_step_scheme`; the
/// exponent is 4 despite the name): a_n = ns·c_n / Σ_{k=0}^{N} c_k with
/// c_k = cos⁴(½π·(k/N + s)/(1 + s)), s = [`OU_DDS_OFFSET`], ns = `noise_scale` (6 in
/// RSMC). Steps n = 0 … N − 1 use a_0 … a_{N−1}; the (N + 1)-th entry only enters the
/// normaliser, so Σ_{n<N} a_n is just below ns. Clamped to [0, 1] (the kernel needs
/// a_n ≤ 1; RSMC clamps √a_n to [0, 1]).
pub fn ou_dds_alpha(n: usize, steps: usize, noise_scale: f64) -> f64 {
    let c = |k: usize| {
        let phase = (k as f64 / steps as f64 + OU_DDS_OFFSET) / (1.0 + OU_DDS_OFFSET)
            * std::f64::consts::FRAC_PI_2;
        phase.cos().powi(4)
    };
    let total: f64 = (0..=steps).map(c).sum();
    (noise_scale * c(n) / total).clamp(0.0, 1.0)
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

    /// RSMC's discrete-time "ou_dds" reference ([`RndForm::OuDds`]): N(0, σ₀² I) prior,
    /// `steps` steps on the grid t_n = n/N of [0, 1] (the network's time input, as RSMC's
    /// `step / num_steps`), step scheme with total noise `noise_scale` (RSMC: 6).
    pub fn ou_dds(steps: usize, sigma0: f64, noise_scale: f64) -> Result<Self> {
        if !(sigma0.is_finite() && sigma0 > 0.0) {
            bail!("ou_dds needs a positive finite prior std σ₀ (got {sigma0})");
        }
        if !(noise_scale.is_finite() && noise_scale > 0.0) {
            bail!("ou_dds needs a positive finite noise scale (got {noise_scale})");
        }
        Ok(Self {
            kind: MethodKind::OuDds,
            prior: Prior::Gauss { std: sigma0 },
            grid: TimeGrid::uniform(1.0, steps)?,
            sde: Sde::Bm {
                sigma: sigma0,
                t_end: 1.0,
            },
            form: RndForm::OuDds {
                sigma0,
                noise_scale,
                steps,
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
    /// `dds_exp`, whose grid is fixed; `ou_dds` with σ₀ = 1 and noise scale 6, see
    /// [`Method::ou_dds`] for others).
    pub fn from_kind(kind: MethodKind, steps: usize) -> Result<Self> {
        match kind {
            MethodKind::Pis => Self::pis(steps),
            MethodKind::Dis => Self::dis(steps),
            MethodKind::Dds => Self::dds(steps),
            MethodKind::DdsExp => Self::dds_exp(),
            MethodKind::Bridge => Self::bridge(steps),
            MethodKind::OuDds => Self::ou_dds(steps, 1.0, 6.0),
            MethodKind::Cmcd | MethodKind::Scld => bail!(
                "`{kind}` is an annealed sampler: build it with lv_core::anneal::Annealed, not \
                 as a Method"
            ),
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
