//! `lv-core`: path-space math for diffusion-based samplers trained with path-space
//! divergences, above all the log-variance (LV) loss of Richter & Berner (ICLR 2024,
//! arXiv:2307.01198).
//!
//! - [`target`]: the `Target` trait (log ρ, score, log Z, samplers).
//! - [`control`]: the `Control` trait u(t, x) and divergences.
//! - [`grid`], [`prior`], [`sde`], [`method`]: time grids, priors, base SDEs, methods
//!   (PIS, DIS, DDS, exponential DDS, bridge) as values.
//! - [`sim`]: Euler–Maruyama with log-RND accumulation; batched LV replay.
//! - [`loss`]: KL, KL-Itô, LV, LV per initial point, moment/TB.
//! - [`estimate`]: log Z (IS, ELBO), ESS.
//! - [`par`]: row-parallel host loops in libtorch's OpenMP thread team.
//! - [`optim`], [`train`]: Adam (coupled L2), StepLR, clipping, the training loop.
//! - [`anneal`]: the annealed samplers CMCD and SCLD (geometric path, CMCD kernels, SMC
//!   resampling and MCMC refresh, per-piece LV), with their own trainer.
//! - [`driver`]: the loop of a run over any [`driver::Learner`] (EMA, evaluations,
//!   checkpoints).

pub mod anneal;
pub mod check;
pub mod control;
pub mod driver;
pub mod estimate;
pub mod grid;
pub mod json;
pub mod loss;
pub mod method;
pub mod optim;
pub mod par;
pub mod prior;
pub mod sde;
pub mod sim;
pub mod subspace;
pub mod subtraj;
pub mod target;
pub mod testing;
pub mod train;
pub mod ula;

pub use control::{Control, FnControl, ZeroControl};
pub use method::{Method, MethodKind, RndForm};
pub use target::{check_batch, checked_log_density, CountingTarget, ExactSampler, Target};
