//! The PIS / DDS control with the score term (Langevin preconditioning, spec §6.4).

use super::{clip, require_score, rows_per_time, Clips, CtrlConfig, SCORE_SCALE_INIT};
use crate::fourier::{times_tensor, FourierMlp, HeadArgs, TimeCache, TimeNet};
use lv_core::Control;
use tch::{nn, Tensor};

/// Langevin-preconditioned control of PIS and DDS:
/// u(t, x) = clip_m(NN(t, x)) + clip_s(∇ log ρ(x)) ⊙ clip_m(s(t)), with **no σ factor**;
/// s(t) starts at 0.01 (default). The score is the `score` argument of `eval`.
#[derive(Debug)]
pub struct ScoreCtrl {
    net: FourierMlp,
    scale: TimeNet,
    clips: Clips,
    /// clip_m(s(t_k)) `[K, out]` at the prepared times (with its graph).
    head: TimeCache,
}

impl ScoreCtrl {
    /// NN under `p / "net"`, s(t) under `p / "scale"`.
    /// Errors name the invalid setting ([`CtrlConfig::check`], `dim` ≥ 1).
    pub fn new(p: &nn::Path, dim: i64, cfg: &CtrlConfig) -> anyhow::Result<Self> {
        cfg.check("")?;
        let init = cfg.scale_init.unwrap_or(SCORE_SCALE_INIT);
        Ok(Self {
            net: FourierMlp::new(&(p / "net"), dim, dim, &cfg.mlp)?,
            scale: TimeNet::new(&(p / "scale"), cfg.scale_dim(dim), init, &cfg.mlp)?,
            clips: Clips::new(cfg),
            head: TimeCache::default(),
        })
    }

    /// The base network NN.
    pub fn net(&self) -> &FourierMlp {
        &self.net
    }

    /// The time network s(t).
    pub fn scale(&self) -> &TimeNet {
        &self.scale
    }

    /// clip_m(s(t)) `[1, out]`: from the prepared times, or computed.
    fn clipped_scale(&self, t: f64) -> Tensor {
        self.head
            .lookup(t)
            .unwrap_or_else(|| clip(&self.scale.forward_t(t), self.clips.m()))
    }

    fn combine(&self, nn_out: Tensor, score: &Tensor, s: Tensor) -> Tensor {
        let (cm, cs) = (self.clips.m(), self.clips.s());
        clip(&nn_out, cm) + clip(score, cs) * clip(&s, cm)
    }

    /// clip_m(s(t_k)) `[K, out]` at times `ts`, in the current autograd mode.
    fn head_at(&self, ts: &[f64]) -> Tensor {
        let s = self.scale.forward(&times_tensor(ts, self.net.device()));
        clip(&s, self.clips.m())
    }
}

impl Control for ScoreCtrl {
    fn eval(&self, t: f64, x: &Tensor, score: Option<&Tensor>) -> Tensor {
        let score = require_score(score, "ScoreCtrl");
        let (cm, cs) = (self.clips.m(), self.clips.s());
        let head = HeadArgs {
            x_coef: None,
            score: Some(score),
            score_coef: None,
            clip_s: cs,
        };
        if let Some(u) = self
            .net
            .taped_control(t, x, cm, head, &|| self.head.values())
        {
            return u;
        }
        self.net.forward_t_clipped(t, x, cm) + clip(score, cs) * self.clipped_scale(t)
    }
    fn eval_many(&self, ts: &[f64], x: &Tensor, score: Option<&Tensor>) -> Tensor {
        let score = require_score(score, "ScoreCtrl");
        let n = rows_per_time(ts, x);
        self.combine(
            self.net.forward_many(ts, x, n),
            score,
            self.scale.forward_many(ts, n),
        )
    }
    fn needs_target_score(&self) -> bool {
        true
    }
    fn parameters(&self) -> Vec<Tensor> {
        let mut ps = self.net.parameters();
        ps.extend(self.scale.parameters());
        ps
    }
    fn set_clip_factor(&self, factor: f64) {
        self.clips.set(factor)
    }
    fn prepare_times(&self, ts: &[f64]) {
        self.net.prepare_times(ts);
        self.head.set(ts, self.head_at(ts));
    }
    fn clear_times(&self) {
        self.net.clear_times();
        self.head.clear();
    }
    net_tape!(head);
    fn fork(&self) -> Option<Box<dyn Control + Send>> {
        Some(Box::new(Self {
            net: self.net.fork(),
            scale: self.scale.fork(),
            clips: self.clips.clone(),
            head: TimeCache::default(),
        }))
    }
}
