//! The score-free control u = clip_m(NN(t, x)).

use super::{clip, rows_per_time, Clips, CtrlConfig};
use crate::fourier::FourierMlp;
use lv_core::Control;
use tch::{nn, Tensor};

/// Score-free control u(t, x) = clip_m(NN(t, x)).
#[derive(Debug)]
pub struct ClippedCtrl {
    net: FourierMlp,
    clips: Clips,
}

impl ClippedCtrl {
    /// NN under `p / "net"`.
    /// Errors name the invalid setting ([`CtrlConfig::check`], `dim` ≥ 1).
    pub fn new(p: &nn::Path, dim: i64, cfg: &CtrlConfig) -> anyhow::Result<Self> {
        cfg.check("")?;
        Ok(Self {
            net: FourierMlp::new(&(p / "net"), dim, dim, &cfg.mlp)?,
            clips: Clips::new(cfg),
        })
    }

    /// The base network.
    pub fn net(&self) -> &FourierMlp {
        &self.net
    }
}

impl Control for ClippedCtrl {
    fn eval(&self, t: f64, x: &Tensor, _score: Option<&Tensor>) -> Tensor {
        self.net.forward_t_clipped(t, x, self.clips.m())
    }
    fn eval_many(&self, ts: &[f64], x: &Tensor, _score: Option<&Tensor>) -> Tensor {
        let n = rows_per_time(ts, x);
        clip(&self.net.forward_many(ts, x, n), self.clips.m())
    }
    fn parameters(&self) -> Vec<Tensor> {
        self.net.parameters()
    }
    fn set_clip_factor(&self, factor: f64) {
        self.clips.set(factor)
    }
    fn prepare_times(&self, ts: &[f64]) {
        self.net.prepare_times(ts)
    }
    fn clear_times(&self) {
        self.net.clear_times()
    }
    net_tape!();
    fn fork(&self) -> Option<Box<dyn Control + Send>> {
        Some(Box::new(Self {
            net: self.net.fork(),
            clips: self.clips.clone(),
        }))
    }
}
