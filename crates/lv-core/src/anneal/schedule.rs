//! The two schedules of an annealed sampler on the step grid k = 0 … N (t_k = k/N):
//! the annealing schedule β_k of the geometric path and the diffusion schedule σ_k.

use anyhow::{bail, Result};
use tch::{Device, Kind, Tensor};

/// Offset s of the cosine schedules (improved DDPM, eq. 17; SCLD's `cosine`).
pub const COSINE_OFFSET: f64 = 0.008;

/// How β_k runs from β_0 = 0 (the prior) to β_N = 1 (the target).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaKind {
    /// β_k = k/N.
    Linear,
    /// β_k = f(1 − k/N)/f(0) with f(x) = cos²(½π(x + s)/(1 + s)), s = [`COSINE_OFFSET`]:
    /// slow at the prior end (SCLD's `cosine`).
    Cosine,
    /// Learned and monotone by construction (CMCD/SCLD `learnt`): θ ∈ R^N initialised to 1,
    /// b_i = softplus(θ_i), β_k = Σ_{i<k} b_i / Σ_i b_i, so β_0 = 0, β_N = 1 and β_k = k/N at
    /// initialisation.
    Learnt,
}

impl BetaKind {
    /// The config name (`linear`, `cosine`, `learnt`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Linear => "linear",
            Self::Cosine => "cosine",
            Self::Learnt => "learnt",
        }
    }
}

impl std::str::FromStr for BetaKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "linear" | "uniform" => Self::Linear,
            "cosine" => Self::Cosine,
            "learnt" | "learned" => Self::Learnt,
            other => bail!("unknown beta schedule `{other}`: expected linear, cosine, learnt"),
        })
    }
}

/// The annealing schedule β_0 … β_N of one sampler; holds the parameters of a learnt one.
pub struct Betas {
    pub kind: BetaKind,
    pub steps: usize,
    /// θ ∈ R^N (float32, requires grad) for [`BetaKind::Learnt`].
    logits: Option<Tensor>,
}

impl Betas {
    /// The schedule of `kind` on N = `steps` steps (N ≥ 1).
    pub fn new(kind: BetaKind, steps: usize, device: Device) -> Result<Self> {
        if steps == 0 {
            bail!("an annealing schedule needs at least one step");
        }
        let logits = (kind == BetaKind::Learnt)
            .then(|| Tensor::ones([steps as i64], (Kind::Float, device)).set_requires_grad(true));
        Ok(Self {
            kind,
            steps,
            logits,
        })
    }

    /// A learnt schedule whose θ is `logits` (`[N]`, float32, requires grad; initialise to
    /// 1 for β_k = k/N), e.g. a variable of the model's VarStore so that checkpoints and the
    /// EMA carry it.
    pub fn learnt_with(logits: Tensor) -> Result<Self> {
        let size = logits.size();
        if size.len() != 1 || size[0] == 0 {
            bail!("learnt β logits must be a non-empty vector (got shape {size:?})");
        }
        Ok(Self {
            kind: BetaKind::Learnt,
            steps: size[0] as usize,
            logits: Some(logits),
        })
    }

    /// β_0 … β_N as a float32 tensor `[N + 1]`, in the autograd graph of the parameters for
    /// a learnt schedule (call inside `no_grad` to get plain values).
    pub fn values(&self, device: Device) -> Tensor {
        match &self.logits {
            Some(theta) => {
                let b = theta.softplus();
                let c = b.cumsum(0, Kind::Float) / b.sum(Kind::Float);
                Tensor::cat(&[Tensor::zeros([1], (Kind::Float, theta.device())), c], 0)
            }
            None => Tensor::from_slice(&self.host_fixed()).to_device(device),
        }
    }

    /// β_0 … β_N on the host.
    pub fn host(&self) -> Vec<f64> {
        match &self.logits {
            Some(_) => {
                let v = tch::no_grad(|| self.values(Device::Cpu).to_device(Device::Cpu));
                Vec::<f32>::try_from(&v)
                    .expect("a float tensor")
                    .into_iter()
                    .map(f64::from)
                    .collect()
            }
            None => self.host_fixed().into_iter().map(f64::from).collect(),
        }
    }

    fn host_fixed(&self) -> Vec<f32> {
        let n = self.steps as f64;
        (0..=self.steps)
            .map(|k| {
                let x = k as f64 / n;
                let b = match self.kind {
                    BetaKind::Linear | BetaKind::Learnt => x,
                    BetaKind::Cosine => {
                        let f = |y: f64| {
                            ((y + COSINE_OFFSET) / (1.0 + COSINE_OFFSET)
                                * std::f64::consts::FRAC_PI_2)
                                .cos()
                                .powi(2)
                        };
                        f(1.0 - x) / f(0.0)
                    }
                };
                b.clamp(0.0, 1.0) as f32
            })
            .collect()
    }

    /// The trainable tensors (θ of a learnt schedule; empty otherwise).
    pub fn parameters(&self) -> Vec<Tensor> {
        self.logits.iter().map(Tensor::shallow_clone).collect()
    }
}

/// The diffusion coefficient σ_k of step k (forward kernel N(x + σ_k²(∇log γ_k + u)Δ,
/// 2σ_k²Δ I), Δ = 1/N).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Diffusion {
    /// σ_k = σ.
    Constant { sigma: f64 },
    /// SCLD's cosine schedule (`reverse: False`): with τ = (N − k)/N,
    /// σ_k = ½(σ_max − σ_min)·cos²(½π(1 + s − τ)/(1 + s)) + ½σ_min, so σ_0 ≈ ½σ_max at the
    /// prior end and σ_N = ½σ_min at the target end (the largest value is about σ_max/2).
    Cosine { min: f64, max: f64 },
}

impl Diffusion {
    /// Checks the parameters (positive, finite, min ≤ max).
    pub fn validate(&self) -> Result<()> {
        match *self {
            Diffusion::Constant { sigma } => {
                if !(sigma.is_finite() && sigma > 0.0) {
                    bail!("the diffusion σ must be positive and finite (got {sigma})");
                }
            }
            Diffusion::Cosine { min, max } => {
                if !(min.is_finite() && max.is_finite() && min > 0.0 && min <= max) {
                    bail!("the cosine diffusion needs 0 < σ_min ≤ σ_max (got {min}, {max})");
                }
            }
        }
        Ok(())
    }

    /// σ_k on N = `steps` steps.
    pub fn sigma(&self, k: usize, steps: usize) -> f64 {
        match *self {
            Diffusion::Constant { sigma } => sigma,
            Diffusion::Cosine { min, max } => {
                let tau = (steps - k.min(steps)) as f64 / steps as f64;
                let c = ((1.0 + COSINE_OFFSET - tau) / (1.0 + COSINE_OFFSET)
                    * std::f64::consts::FRAC_PI_2)
                    .cos()
                    .powi(2);
                0.5 * (max - min) * c + 0.5 * min
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learnt_betas_start_uniform_and_cosine_runs_from_0_to_1() {
        let n = 16;
        let learnt = Betas::new(BetaKind::Learnt, n, Device::Cpu).unwrap().host();
        let cosine = Betas::new(BetaKind::Cosine, n, Device::Cpu).unwrap().host();
        assert_eq!(learnt.len(), n + 1);
        for (k, b) in learnt.iter().enumerate() {
            assert!((b - k as f64 / n as f64).abs() < 1e-6, "β_{k} = {b}");
        }
        assert!(cosine[0].abs() < 1e-7 && (cosine[n] - 1.0).abs() < 1e-6);
        assert!(cosine.windows(2).all(|w| w[1] >= w[0]));
        // Slow start: below the linear schedule at the prior end.
        assert!(cosine[1] < 1.0 / n as f64);
    }

    #[test]
    fn learnt_betas_stay_monotone_under_any_parameters() {
        let b = Betas::new(BetaKind::Learnt, 8, Device::Cpu).unwrap();
        tch::no_grad(|| {
            let mut theta = b.parameters()[0].shallow_clone();
            theta.copy_(&Tensor::from_slice(&[
                -5.0f32, 3.0, 0.0, -1.0, 7.0, -20.0, 0.5, 2.0,
            ]));
        });
        let v = b.host();
        assert!(v[0] == 0.0 && (v[8] - 1.0).abs() < 1e-6);
        assert!(v.windows(2).all(|w| w[1] >= w[0]), "{v:?}");
    }

    #[test]
    fn cosine_diffusion_tops_out_at_half_sigma_max() {
        let d = Diffusion::Cosine {
            min: 0.01,
            max: 2.0,
        };
        let s0 = d.sigma(0, 128);
        let sn = d.sigma(128, 128);
        assert!((s0 - 1.0).abs() < 1e-3, "σ_0 = {s0}");
        assert!((sn - 0.005).abs() < 1e-12, "σ_N = {sn}");
        assert!(Diffusion::Cosine { min: 2.0, max: 1.0 }.validate().is_err());
        assert!(Diffusion::Constant { sigma: 0.0 }.validate().is_err());
    }
}
