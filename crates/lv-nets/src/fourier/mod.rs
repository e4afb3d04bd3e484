//! Fourier-feature networks (spec §6.1–6.3): the time embedding, the FourierMLP base network
//! of every control, and the time-only network s(t).
//!
//! All networks see the **raw** time t (not divided by the horizon T) and work in float32 on
//! the device of the `nn::Path` they are built from.
//!
//! This module holds the settings ([`MlpConfig`]), the layer helpers, the Fourier time
//! embedding and the per-time value cache shared by both networks; [`FourierMlp`] and
//! [`TimeNet`] have their own files.

mod mlp;
mod time_net;

pub use mlp::FourierMlp;
pub(crate) use mlp::HeadArgs;
pub use time_net::TimeNet;

use serde::{Deserialize, Serialize};
use tch::nn::{self, Init, LinearConfig};
use tch::{Device, Kind, Tensor};

/// Settings of the Fourier networks. The defaults are the paper's (spec §6.2).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MlpConfig {
    /// Width C of every hidden layer (time branch and trunk). Default 64.
    pub width: i64,
    /// Number of linear layers of the trunk, counting the input and the output layer
    /// (default 4: `in`, 2 hidden, `out`). At least 2.
    pub num_layers: usize,
    /// Number F of Fourier frequencies; the features have size 2F. Default 64.
    pub num_freqs: i64,
    /// Smallest fixed frequency (default 0.1).
    pub freq_min: f64,
    /// Largest fixed frequency (default 100).
    pub freq_max: f64,
}

impl Default for MlpConfig {
    fn default() -> Self {
        Self {
            width: 64,
            num_layers: 4,
            num_freqs: 64,
            freq_min: 0.1,
            freq_max: 100.0,
        }
    }
}

impl MlpConfig {
    /// Checks the settings; errors name the key as `{prefix}width` etc.
    pub fn check(&self, prefix: &str) -> anyhow::Result<()> {
        use lv_core::check::{count, positive};
        count(
            &format!("{prefix}width"),
            self.width.max(0) as usize,
            1,
            1 << 16,
        )?;
        count(&format!("{prefix}num_layers"), self.num_layers, 2, 64)?;
        count(
            &format!("{prefix}num_freqs"),
            self.num_freqs.max(0) as usize,
            1,
            1 << 16,
        )?;
        positive(&format!("{prefix}freq_min"), self.freq_min)?;
        positive(&format!("{prefix}freq_max"), self.freq_max)?;
        if self.freq_max < self.freq_min {
            anyhow::bail!(
                "key `{prefix}freq_max` ({}) must be ≥ `{prefix}freq_min` ({})",
                self.freq_max,
                self.freq_min
            );
        }
        Ok(())
    }
}

/// Whether autograd is recording in the calling context (probed with a tiny CPU op).
pub(crate) fn grad_mode_enabled() -> bool {
    let probe = Tensor::zeros([1], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    (probe * 1.0).requires_grad()
}

/// Exact (erf) GELU.
fn gelu(x: &Tensor) -> Tensor {
    x.gelu("none")
}

/// A linear layer with PyTorch's default initialisation: weights and bias both
/// U(−1/√fan_in, 1/√fan_in).
///
/// (tch's `LinearConfig::default()` uses Kaiming-uniform with the ReLU gain, i.e. weights
/// U(−√6/√fan_in, √6/√fan_in), which is **not** PyTorch's default; hence this helper.)
pub fn torch_linear(p: nn::Path, fan_in: i64, fan_out: i64) -> nn::Linear {
    let b = 1.0 / (fan_in as f64).sqrt();
    let init = Init::Uniform { lo: -b, up: b };
    nn::linear(
        p,
        fan_in,
        fan_out,
        LinearConfig {
            ws_init: init,
            bs_init: Some(init),
            bias: true,
        },
    )
}

/// A linear layer with zero weights and a constant bias `bias`.
pub fn const_linear(p: nn::Path, fan_in: i64, fan_out: i64, bias: f64) -> nn::Linear {
    nn::linear(
        p,
        fan_in,
        fan_out,
        LinearConfig {
            ws_init: Init::Const(0.0),
            bs_init: Some(Init::Const(bias)),
            bias: true,
        },
    )
}

fn linear_params(l: &nn::Linear, out: &mut Vec<Tensor>) {
    out.push(l.ws.shallow_clone());
    if let Some(b) = &l.bs {
        out.push(b.shallow_clone());
    }
}

/// Times as a float32 column vector `[K]` on `device`.
pub fn times_tensor(ts: &[f64], device: Device) -> Tensor {
    Tensor::from_slice(ts)
        .to_kind(Kind::Float)
        .to_device(device)
}

/// Fourier time features (spec §6.1): fixed frequencies c = linspace(f_min, f_max, F)
/// (a non-trainable buffer `freqs`), learnable phases φ ~ N(0, 1) (`phases`), and
/// features [sin(c t + φ), cos(c t + φ)] ∈ R^{2F} of the raw time t.
#[derive(Debug)]
pub struct FourierEmbedding {
    freqs: Tensor,
    phases: Tensor,
}

impl FourierEmbedding {
    /// Registers `freqs` (non-trainable) and `phases` (trainable) under `p`.
    pub fn new(p: &nn::Path, cfg: &MlpConfig) -> Self {
        let f = cfg.num_freqs;
        let mut freqs = p.zeros_no_train("freqs", &[f]);
        tch::no_grad(|| {
            freqs.copy_(&Tensor::linspace(
                cfg.freq_min,
                cfg.freq_max,
                f,
                (Kind::Float, p.device()),
            ))
        });
        let phases = p.randn_standard("phases", &[f]);
        Self { freqs, phases }
    }

    /// Features of times `t: [K]` (or `[K, 1]`): `[K, 2F]`.
    pub fn forward(&self, t: &Tensor) -> Tensor {
        let t = t.reshape([-1, 1]);
        let arg = t * &self.freqs + &self.phases;
        Tensor::cat(&[arg.sin(), arg.cos()], 1)
    }

    /// Size 2F of the features.
    pub fn out_dim(&self) -> i64 {
        2 * self.freqs.size()[0]
    }

    /// The device the buffers live on.
    pub fn device(&self) -> Device {
        self.freqs.device()
    }

    /// Trainable parameters (the phases; the frequencies are fixed).
    pub fn parameters(&self) -> Vec<Tensor> {
        vec![self.phases.shallow_clone()]
    }

    /// A copy whose phases are a fresh leaf over the same storage (detached, requiring grad).
    pub fn fork(&self) -> Self {
        Self {
            freqs: self.freqs.shallow_clone(),
            phases: fork_tensor(&self.phases),
        }
    }
}

/// A parameter for another thread ([`lv_core::Control::fork`]): a fresh autograd leaf over
/// the same storage (values always equal; gradients accumulate separately), trainable iff
/// `t` is.
fn fork_tensor(t: &Tensor) -> Tensor {
    t.detach().set_requires_grad(t.requires_grad())
}

/// [`fork_tensor`] of a linear layer's weight and bias.
fn fork_linear(l: &nn::Linear) -> nn::Linear {
    nn::Linear {
        ws: fork_tensor(&l.ws),
        bs: l.bs.as_ref().map(fork_tensor),
    }
}

/// Values of a time-only branch at prepared times: `[K, C]` rows looked up by exact time.
#[derive(Debug, Default)]
pub(crate) struct TimeCache(std::sync::Mutex<Option<(Vec<f64>, Tensor)>>);

impl TimeCache {
    pub(crate) fn set(&self, ts: &[f64], values: Tensor) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((ts.to_vec(), values));
    }
    pub(crate) fn clear(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
    /// The prepared times and all values `[K, C]` (shallow handles), if prepared.
    pub(crate) fn values(&self) -> Option<(Vec<f64>, Tensor)> {
        let g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        g.as_ref().map(|(ts, v)| (ts.clone(), v.shallow_clone()))
    }
    /// Row `[1, C]` for time `t`, if prepared (a view: its gradient flows to the `[K, C]`
    /// values computed in `set`).
    pub(crate) fn lookup(&self, t: f64) -> Option<Tensor> {
        let g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (ts, v) = g.as_ref()?;
        let k = ts.iter().position(|&s| s == t)?;
        Some(v.narrow(0, k as i64, 1))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use tch::nn::VarStore;
    use tch::Tensor;

    /// Replaces every trainable parameter by N(0, 0.1²) draws (so zero-initialised output
    /// layers do not make tests trivial).
    pub(crate) fn randomize(vs: &VarStore) {
        tch::no_grad(|| {
            for mut v in vs.trainable_variables() {
                let r = v.randn_like() * 0.1;
                v.copy_(&r);
            }
        });
    }

    pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }
}
