//! The time network s(t) (spec §6.3).

use super::{
    const_linear, fork_linear, gelu, linear_params, times_tensor, torch_linear, FourierEmbedding,
    MlpConfig, TimeCache,
};
use tch::nn::{self, Module};
use tch::Tensor;

/// The time network s(t) (spec §6.3): the same Fourier features, then
/// Lin_{2F→C}, GELU, Lin_{C→C}, GELU, Lin_{C→C}, GELU, Lin_{C→out}; the last layer has zero
/// weights and constant bias `init_bias` (0.01 for ScoreCtrl, 1.0 for the Lerp controls), so
/// s(t) ≡ `init_bias` at initialisation. `out` is 1, or d for the `*_dim` variants.
#[derive(Debug)]
pub struct TimeNet {
    /// `pub(super)`: the prepared-times test of [`FourierMlp`](super::FourierMlp) reads it.
    pub(super) cache: TimeCache,
    emb: FourierEmbedding,
    layers: Vec<nn::Linear>,
    out: nn::Linear,
    out_dim: i64,
}

impl TimeNet {
    /// Builds s(t) under `p` (sub-paths `emb`, `layer{0,1,2}`, `out`).
    pub fn new(
        p: &nn::Path,
        out_dim: i64,
        init_bias: f64,
        cfg: &MlpConfig,
    ) -> anyhow::Result<Self> {
        cfg.check("")?;
        lv_core::check::count("output dimension", out_dim.max(0) as usize, 1, 1 << 20)?;
        let c = cfg.width;
        let emb = FourierEmbedding::new(&(p / "emb"), cfg);
        let layers = vec![
            torch_linear(p / "layer0", emb.out_dim(), c),
            torch_linear(p / "layer1", c, c),
            torch_linear(p / "layer2", c, c),
        ];
        let out = const_linear(p / "out", c, out_dim, init_bias);
        Ok(Self {
            cache: TimeCache::default(),
            emb,
            layers,
            out,
            out_dim,
        })
    }

    /// Output dimension (1 or d).
    pub fn out_dim(&self) -> i64 {
        self.out_dim
    }

    /// A copy for another thread (see [`FourierMlp::fork`](super::FourierMlp::fork)).
    pub fn fork(&self) -> Self {
        Self {
            cache: TimeCache::default(),
            emb: self.emb.fork(),
            layers: self.layers.iter().map(fork_linear).collect(),
            out: fork_linear(&self.out),
            out_dim: self.out_dim,
        }
    }

    /// s at times `t: [K]`: `[K, out]`.
    pub fn forward(&self, t: &Tensor) -> Tensor {
        let mut h = self.emb.forward(t);
        for l in &self.layers {
            h = gelu(&l.forward(&h));
        }
        self.out.forward(&h)
    }

    /// s at one raw time: `[1, out]` (broadcasts over a batch); from
    /// [`TimeNet::prepare_times`] when `t` was prepared.
    pub fn forward_t(&self, t: f64) -> Tensor {
        self.cache
            .lookup(t)
            .unwrap_or_else(|| self.forward(&times_tensor(&[t], self.emb.device())))
    }

    /// Computes s at all `ts` in one call for later [`TimeNet::forward_t`] calls.
    pub fn prepare_times(&self, ts: &[f64]) {
        let s = self.forward(&times_tensor(ts, self.emb.device()));
        self.cache.set(ts, s);
    }

    /// Drops the prepared values.
    pub fn clear_times(&self) {
        self.cache.clear();
    }

    /// s at the times `ts`, each row repeated `n` times: `[K·n, out]`.
    pub fn forward_many(&self, ts: &[f64], n: i64) -> Tensor {
        let k = ts.len() as i64;
        self.forward(&times_tensor(ts, self.emb.device()))
            .repeat_interleave_self_int(n, 0, k * n)
    }

    /// Trainable parameters.
    pub fn parameters(&self) -> Vec<Tensor> {
        let mut ps = self.emb.parameters();
        for l in &self.layers {
            linear_params(l, &mut ps);
        }
        linear_params(&self.out, &mut ps);
        ps
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fourier::tests::max_abs_diff;
    use tch::nn::VarStore;
    use tch::{Device, Kind};

    #[test]
    fn time_net_initial_output_is_the_bias() {
        let vs = VarStore::new(Device::Cpu);
        let s = TimeNet::new(&vs.root(), 3, 0.01, &MlpConfig::default()).unwrap();
        let y = s.forward_many(&[0.0, 0.5], 2);
        assert_eq!(y.size(), vec![4, 3]);
        assert!(max_abs_diff(&y, &Tensor::full([4, 3], 0.01, (Kind::Float, Device::Cpu))) < 1e-8);
        assert_eq!(s.forward_t(2.0).size(), vec![1, 3]);
        let n: i64 = vs
            .trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum();
        assert_eq!(n, 64 + 128 * 64 + 64 + 2 * (64 * 64 + 64) + 64 * 3 + 3);
    }
}
