//! Annealed samplers trained with path-space losses: CMCD (controlled Monte Carlo
//! diffusions, Vargas et al. 2024) and SCLD (sequential controlled Langevin diffusions,
//! Chen et al. 2025), which is CMCD cut into K pieces joined by SMC resampling.
//!
//! - [`schedule`]: β_k of the annealing path, σ_k of the diffusion.
//! - [`path`]: the geometric path γ_k = p_prior^(1−β_k) ρ^(β_k), its log-density and score.
//! - [`sampler`]: the CMCD kernels and one piece's incremental log-weight Δ.
//! - [`resample`], [`mcmc`], [`smc`]: resampling, MCMC refresh, the SMC rollout with its
//!   log Z estimate.
//! - [`train`]: the training step (KL, LV per piece) and the evaluation.

pub mod mcmc;
pub mod path;
pub mod resample;
pub mod sampler;
pub mod schedule;
pub mod smc;
pub mod train;

#[cfg(test)]
mod tests;

pub use mcmc::{Mcmc, McmcKind};
pub use path::GeometricPath;
pub use resample::{Resampling, Scheme};
pub use sampler::{Annealed, BackwardLevel, Grad};
pub use schedule::{BetaKind, Betas, Diffusion};
pub use smc::{rollout, Rollout, SmcOptions};
pub use train::{AnnealedEval, AnnealedSettings, AnnealedTrainer};
