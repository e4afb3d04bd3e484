//! `lv-nets`: libtorch control networks for diffusion samplers, and device selection.
//!
//! - [`fourier`]: Fourier time features, the FourierMLP base network and s(t) (spec §6.1–6.3).
//! - [`ctrl`]: control parametrisations implementing `lv_core::Control` (spec §6.4–6.5).
//! - [`ema`]: the EMA of the parameters (spec §7).
//! - [`checkpoint`]: atomic safetensors checkpoints.
//! - [`device`]: device selection and runtime information.

pub mod checkpoint;
pub mod ctrl;
pub mod device;
pub mod ema;
pub mod fourier;
mod native;

pub use checkpoint::{load_into_var_store, load_tensors, save_tensors_atomic};
pub use ctrl::{
    ClippedCtrl, CtrlConfig, LerpCtrl, LerpPriorCtrl, LerpTargetCtrl, LerpTerms, PotentialCtrl,
    ScoreCtrl, SigmaFn,
};
pub use device::{select_device, set_threads, DeviceChoice, RuntimeInfo};
pub use ema::{Ema, EmaAction, EmaConfig, EmaSchedule};
pub use fourier::{FourierEmbedding, FourierMlp, MlpConfig, TimeNet};
