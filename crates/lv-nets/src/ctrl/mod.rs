//! Control parametrisations (spec §6.4) implementing [`lv_core::Control`].
//!
//! Notation: NN(t, x) is a [`FourierMlp`](crate::fourier::FourierMlp), s(t) a
//! [`TimeNet`](crate::fourier::TimeNet), clip_m and clip_s are
//! **elementwise** clamps to [−c_m, c_m] and [−c_s, c_s] (not norm clipping), with
//! c = base clip × clip factor (the ×5 schedule of spec §6.5 is applied by the trainer through
//! [`Control::set_clip_factor`](lv_core::Control::set_clip_factor)). Every network sees the raw time t ∈ [0, T].
//!
//! `eval_many` is overridden everywhere: the time embeddings and s(t) are computed once per
//! time and repeated over the rows of each block, so one trunk call serves all times.

use crate::fourier::{times_tensor, MlpConfig};
use serde::{Deserialize, Serialize};
use std::cell::Cell;
use tch::{Device, Tensor};

/// The diffusion coefficient σ(t) of the SDE, at raw generative time t.
pub type SigmaFn = std::sync::Arc<dyn Fn(f64) -> f64 + Send + Sync>;

/// Settings shared by the control parametrisations.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CtrlConfig {
    /// The base network NN(t, x) (and the width and features of s(t)).
    pub mlp: MlpConfig,
    /// Base clip c_m of the network outputs NN and s(t) (default 10).
    pub clip_model: f64,
    /// Base clip c_s of the score term (default 10).
    pub clip_score: f64,
    /// `*_dim` variant: s(t) outputs d values (per-dimension scaling) instead of one.
    pub scale_per_dim: bool,
    /// Initial constant output of s(t); `None` uses the method default
    /// (0.01 for [`ScoreCtrl`], 1.0 for the Lerp controls).
    pub scale_init: Option<f64>,
}

impl Default for CtrlConfig {
    fn default() -> Self {
        Self {
            mlp: MlpConfig::default(),
            clip_model: 10.0,
            clip_score: 10.0,
            scale_per_dim: false,
            scale_init: None,
        }
    }
}

impl CtrlConfig {
    /// Checks the settings; errors name the key as `{prefix}clip_model` etc.
    pub fn check(&self, prefix: &str) -> anyhow::Result<()> {
        use lv_core::check::positive;
        self.mlp.check(&format!("{prefix}mlp."))?;
        positive(&format!("{prefix}clip_model"), self.clip_model)?;
        positive(&format!("{prefix}clip_score"), self.clip_score)?;
        if let Some(s) = self.scale_init {
            if !s.is_finite() {
                anyhow::bail!("key `{prefix}scale_init` must be finite (got {s})");
            }
        }
        Ok(())
    }

    fn scale_dim(&self, dim: i64) -> i64 {
        if self.scale_per_dim {
            dim
        } else {
            1
        }
    }
}

/// Which parametrisation of the control u a run uses (`control = "…"` in a config).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlKind {
    /// The method's own: [`ScoreCtrl`] for PIS and DDS, [`LerpCtrl`] for DIS, the
    /// lerp-target / lerp-prior pair for the bridge.
    #[default]
    Default,
    /// Score-free u = clip(NN) ([`ClippedCtrl`]).
    Clipped,
    /// u = σ∇ₓclip(Φ) ([`PotentialCtrl`], DIS only; needed by sub-trajectory training).
    Potential,
}

/// Default initial output of s(t) for [`ScoreCtrl`] (PIS, DDS).
pub const SCORE_SCALE_INIT: f64 = 0.01;
/// Default initial output of s(t) for the Lerp controls (DIS, Bridge).
pub const LERP_SCALE_INIT: f64 = 1.0;

/// Elementwise clamp to [−c, c].
fn clip(x: &Tensor, c: f64) -> Tensor {
    x.clamp(-c, c)
}

/// The elementwise clip values c_m and c_s, with a shared multiplicative factor.
#[derive(Clone, Debug)]
struct Clips {
    model: f64,
    score: f64,
    factor: Cell<f64>,
}

impl Clips {
    /// From a checked config ([`CtrlConfig::check`]: positive clips).
    fn new(cfg: &CtrlConfig) -> Self {
        Self {
            model: cfg.clip_model,
            score: cfg.clip_score,
            factor: Cell::new(1.0),
        }
    }
    fn m(&self) -> f64 {
        self.model * self.factor.get()
    }
    fn s(&self) -> f64 {
        self.score * self.factor.get()
    }
    fn set(&self, f: f64) {
        assert!(f > 0.0, "clip factor must be positive, got {f}");
        self.factor.set(f);
    }
}

fn require_score<'a>(score: Option<&'a Tensor>, who: &str) -> &'a Tensor {
    score.unwrap_or_else(|| {
        panic!(
            "{who} needs the target score ∇ log ρ(x) (needs_target_score() is true), \
             but eval was called with score = None"
        )
    })
}

fn rows_per_time(ts: &[f64], x: &Tensor) -> i64 {
    assert!(!ts.is_empty(), "eval_many called with no times");
    let k = ts.len() as i64;
    let rows = x.size()[0];
    assert_eq!(
        rows % k,
        0,
        "eval_many: {rows} rows of x are not divisible into {k} time blocks"
    );
    rows / k
}

/// A per-row column `[K·n, 1]` holding `f(ts[k])` for the rows of block k.
fn per_row(ts: &[f64], n: i64, device: Device, f: impl Fn(f64) -> f64) -> Tensor {
    let vals: Vec<f64> = ts.iter().map(|&t| f(t)).collect();
    times_tensor(&vals, device)
        .repeat_interleave_self_int(n, 0, ts.len() as i64 * n)
        .unsqueeze(1)
}

/// The tape-mode methods of [`Control`] for a control whose base network is `self.net`
/// (a [`FourierMlp`], which does the work). `net_tape!(head)`: the control's taped
/// evaluations include a head (`FourierMlp::taped_control`), recomputed by `self.head_at(ts)`
/// when the tape ends.
macro_rules! net_tape {
    () => {
        net_tape!(@common);
        fn finish_tape(&self) {
            self.net.finish_tape()
        }
    };
    (head) => {
        net_tape!(@common);
        fn finish_tape(&self) {
            self.net
                .finish_tape_with_head(Some(&|ts: &[f64]| self.head_at(ts)))
        }
    };
    (@common) => {
        fn start_tape(&self) -> bool {
            self.net.start_tape()
        }
        fn tape_supported(&self) -> bool {
            self.net.tape_supported()
        }
        fn drop_tape(&self) {
            self.net.drop_tape()
        }
        fn tape_vjp(&self, delta: &Tensor) -> Option<lv_core::control::TapeVjp> {
            self.net.tape_vjp(delta)
        }
        fn tape_vjp_supported(&self) -> bool {
            self.net.tape_supported()
        }
        fn start_inference(&self) -> bool {
            self.net.start_inference()
        }
        fn end_inference(&self) {
            self.net.end_inference()
        }
    };
}

mod clipped;
mod lerp;
mod potential;
mod score;

pub use clipped::ClippedCtrl;
pub use lerp::{LerpCtrl, LerpPriorCtrl, LerpTargetCtrl, LerpTerms};
pub use potential::PotentialCtrl;
pub use score::ScoreCtrl;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fourier::tests::{max_abs_diff, randomize};
    use lv_core::Control;
    use tch::nn::VarStore;
    use tch::Kind;

    const CPU: (Kind, Device) = (Kind::Float, Device::Cpu);

    fn vp_sigma() -> SigmaFn {
        // vp_10: σ(t) = sqrt(β(T − t)), β(s) = 0.1 + 9.9 s / T, T = 1.
        std::sync::Arc::new(|t: f64| (0.1 + 9.9 * (1.0 - t)).sqrt())
    }

    fn loop_eval(c: &dyn Control, ts: &[f64], x: &Tensor, score: Option<&Tensor>) -> Tensor {
        let n = x.size()[0] / ts.len() as i64;
        let parts: Vec<Tensor> = ts
            .iter()
            .enumerate()
            .map(|(k, &t)| {
                let xs = x.narrow(0, k as i64 * n, n);
                let ss = score.map(|s| s.narrow(0, k as i64 * n, n));
                c.eval(t, &xs, ss.as_ref())
            })
            .collect();
        Tensor::cat(&parts, 0)
    }

    /// eval_many agrees with a loop of eval, and the parameters get gradients through it.
    fn check_many_and_grads(c: &dyn Control, vs: &VarStore, d: i64, with_score: bool) {
        randomize(vs);
        let ts = [0.0, 0.3, 0.9];
        let x = Tensor::randn([6, d], CPU) * 2.0;
        let score = Tensor::randn([6, d], CPU) * 3.0;
        let score = with_score.then_some(&score);
        let many = c.eval_many(&ts, &x, score);
        let looped = loop_eval(c, &ts, &x, score);
        assert_eq!(many.size(), vec![6, d]);
        let scale = looped.abs().max().double_value(&[]);
        assert!(scale > 1e-3, "trivial control");
        assert!(
            max_abs_diff(&many, &looped) < 1e-5 * (1.0 + scale),
            "eval_many != loop"
        );
        let mut params = c.parameters();
        assert_eq!(params.len(), vs.trainable_variables().len());
        for p in &mut params {
            p.zero_grad();
        }
        (many * Tensor::randn([6, d], CPU))
            .sum(Kind::Float)
            .backward();
        let mut nonzero = 0;
        for p in &params {
            let g = p.grad();
            if g.defined() && g.abs().max().double_value(&[]) > 0.0 {
                nonzero += 1;
            }
        }
        // All but at most one (Φ's output bias does not enter ∇_x Φ) get a gradient.
        assert!(
            nonzero >= params.len() - 1,
            "{nonzero} of {} nonzero",
            params.len()
        );
    }

    #[test]
    fn clipped_ctrl() {
        let _rng = lv_core::testing::rng_lock();
        tch::manual_seed(0);
        let vs = VarStore::new(Device::Cpu);
        let c = ClippedCtrl::new(&vs.root(), 2, &CtrlConfig::default()).unwrap();
        let x = Tensor::randn([4, 2], CPU);
        assert_eq!(c.eval(0.1, &x, None).abs().max().double_value(&[]), 0.0);
        assert!(!c.needs_target_score());
        // Clipping is active on a large output and scales with the factor.
        tch::no_grad(|| {
            let vars = vs.variables();
            let _ = vars["net.out.bias"].shallow_clone().fill_(30.0);
        });
        assert!((c.eval(0.1, &x, None) - 10.0).abs().max().double_value(&[]) < 1e-6);
        c.set_clip_factor(2.0);
        assert!((c.eval(0.1, &x, None) - 20.0).abs().max().double_value(&[]) < 1e-6);
        c.set_clip_factor(1.0);
        check_many_and_grads(&c, &vs, 2, false);
    }

    #[test]
    fn score_ctrl_at_init_and_clip_factor() {
        let _rng = lv_core::testing::rng_lock();
        tch::manual_seed(0);
        let vs = VarStore::new(Device::Cpu);
        let c = ScoreCtrl::new(&vs.root(), 2, &CtrlConfig::default()).unwrap();
        assert!(c.needs_target_score());
        let x = Tensor::randn([3, 2], CPU);
        let score = Tensor::from_slice(&[1.0f32, -2.0, 30.0, -40.0, 5.0, 0.5]).reshape([3, 2]);
        let u = c.eval(2.5, &x, Some(&score));
        let expect = score.clamp(-10.0, 10.0) * 0.01;
        assert!(max_abs_diff(&u, &expect) < 1e-7);
        // Clip factor 5: clip at 50, so the large entries pass unclipped.
        c.set_clip_factor(5.0);
        let u5 = c.eval(2.5, &x, Some(&score));
        assert!(max_abs_diff(&u5, &(&score * 0.01)) < 1e-7);
        assert!(max_abs_diff(&u5, &u) > 0.1);
        let u5m = c.eval_many(&[2.5], &x, Some(&score));
        assert!(max_abs_diff(&u5m, &u5) < 1e-7);
        c.set_clip_factor(1.0);
        check_many_and_grads(&c, &vs, 2, true);
    }

    #[test]
    fn score_ctrl_per_dim_scale() {
        let vs = VarStore::new(Device::Cpu);
        let cfg = CtrlConfig {
            scale_per_dim: true,
            ..Default::default()
        };
        let c = ScoreCtrl::new(&vs.root(), 3, &cfg).unwrap();
        assert_eq!(c.scale().out_dim(), 3);
        check_many_and_grads(&c, &vs, 3, true);
    }

    #[test]
    #[should_panic(expected = "needs the target score")]
    fn score_ctrl_without_score_panics() {
        let vs = VarStore::new(Device::Cpu);
        let c = ScoreCtrl::new(&vs.root(), 2, &CtrlConfig::default()).unwrap();
        let _ = c.eval(0.0, &Tensor::zeros([2, 2], CPU), None);
    }

    #[test]
    fn lerp_ctrl_at_init() {
        let _rng = lv_core::testing::rng_lock();
        tch::manual_seed(0);
        let vs = VarStore::new(Device::Cpu);
        let prior_std = 2.0;
        let c = LerpCtrl::new(
            &vs.root(),
            2,
            &CtrlConfig::default(),
            vp_sigma(),
            1.0,
            prior_std,
        )
        .unwrap();
        assert!(c.needs_target_score());
        let x = Tensor::from_slice(&[1.0f32, -60.0, 3.0, 0.2]).reshape([2, 2]);
        let score = Tensor::from_slice(&[25.0f32, 1.0, -4.0, 0.0]).reshape([2, 2]);
        let ts = [0.25, 0.8];
        for &t in &ts {
            let u = c.eval(t, &x, Some(&score));
            let lerp = (&x / -(prior_std * prior_std)) * (1.0 - t) + &score * t;
            let sig = (0.1 + 9.9 * (1.0 - t)).sqrt();
            let expect = lerp.clamp(-10.0, 10.0) * sig;
            assert!(max_abs_diff(&u, &expect) < 1e-5, "t = {t}");
        }
        // Many-times path, with clipping active on some entries.
        let xx = Tensor::cat(&[&x, &x], 0);
        let ss = Tensor::cat(&[&score, &score], 0);
        let many = c.eval_many(&ts, &xx, Some(&ss));
        assert!(max_abs_diff(&many, &loop_eval(&c, &ts, &xx, Some(&ss))) < 1e-5);
        c.set_clip_factor(5.0);
        let t = 0.25;
        let u = c.eval(t, &x, Some(&score));
        let lerp = (&x / -4.0) * (1.0 - t) + &score * t;
        let expect = lerp.clamp(-50.0, 50.0) * (0.1 + 9.9 * (1.0 - t)).sqrt();
        assert!(max_abs_diff(&u, &expect) < 1e-5);
        c.set_clip_factor(1.0);
        check_many_and_grads(&c, &vs, 2, true);
    }

    #[test]
    fn lerp_bridge_variants() {
        let _rng = lv_core::testing::rng_lock();
        tch::manual_seed(0);
        let vs = VarStore::new(Device::Cpu);
        let sigma = || -> SigmaFn { std::sync::Arc::new(|_t: f64| 1.0) };
        let cfg = CtrlConfig::default();
        let u = LerpTargetCtrl::new(&(vs.root() / "u"), 2, &cfg, sigma(), 1.0).unwrap();
        let v = LerpPriorCtrl::new(&(vs.root() / "v"), 2, &cfg, sigma(), 1.0, 1.0).unwrap();
        assert!(u.needs_target_score());
        assert!(!v.needs_target_score());
        let x = Tensor::randn([3, 2], CPU);
        let score = Tensor::randn([3, 2], CPU);
        let t = 0.3;
        let uu = u.eval(t, &x, Some(&score));
        let vv = v.eval(t, &x, None);
        assert!(max_abs_diff(&uu, &(&score * t)) < 1e-6);
        assert!(max_abs_diff(&vv, &(&x * -(1.0 - t))) < 1e-6);
        // At initialisation u + v = σ[(t/T)∇ log ρ + (1 − t/T)∇ log p_prior].
        let sum = uu + vv;
        assert!(max_abs_diff(&sum, &(&score * t - &x * (1.0 - t))) < 1e-6);
        // v keeps its graph to x (for the divergence): ∇·v = −(1 − t)·d at init.
        let xg = x.detach().set_requires_grad(true);
        let vg = v.eval(t, &xg, None);
        let div = lv_core::control::divergence_exact(&vg, &xg);
        assert!((div + 2.0 * (1.0 - t)).abs().max().double_value(&[]) < 1e-6);
    }

    #[test]
    fn lerp_variants_many_and_grads() {
        let vs = VarStore::new(Device::Cpu);
        let v = LerpPriorCtrl::new(&vs.root(), 2, &CtrlConfig::default(), vp_sigma(), 1.0, 1.0)
            .unwrap();
        check_many_and_grads(&v, &vs, 2, false);
        let vs2 = VarStore::new(Device::Cpu);
        let u =
            LerpTargetCtrl::new(&vs2.root(), 2, &CtrlConfig::default(), vp_sigma(), 1.0).unwrap();
        check_many_and_grads(&u, &vs2, 2, true);
    }

    #[test]
    fn potential_ctrl_matches_finite_differences() {
        let _rng = lv_core::testing::rng_lock();
        tch::manual_seed(3);
        let vs = VarStore::new(Device::Cpu);
        let cfg = CtrlConfig {
            clip_model: 1e4,
            ..Default::default()
        };
        let c = PotentialCtrl::new(&vs.root(), 2, &cfg, vp_sigma()).unwrap();
        // At initialisation Φ is constant: u = 0.
        let x = Tensor::randn([4, 2], CPU);
        assert_eq!(c.eval(0.5, &x, None).abs().max().double_value(&[]), 0.0);
        randomize(&vs);
        let t = 0.4;
        let u = c.eval(t, &x, None);
        assert!(
            u.abs().max().double_value(&[]) > 1e-2,
            "clip active: Φ too large"
        );
        let sig = (0.1 + 9.9 * (1.0 - t)).sqrt();
        let h = 1e-2;
        for i in 0..2 {
            let e = Tensor::zeros([4, 2], CPU).index_fill(1, &Tensor::from_slice(&[i]), h);
            let fd = tch::no_grad(|| {
                (c.potential(t, &(&x + &e)) - c.potential(t, &(&x - &e))) / (2.0 * h)
            });
            let got = u.select(1, i) / sig;
            let err = max_abs_diff(&got, &fd);
            let scale = fd.abs().max().double_value(&[]);
            assert!(
                err < 2e-3 * (1.0 + scale),
                "dim {i}: err {err}, scale {scale}"
            );
        }
        // Under no_grad the control is still computed (without a graph).
        let u_ng = tch::no_grad(|| c.eval(t, &x, None));
        assert!(!u_ng.requires_grad());
        assert!(max_abs_diff(&u_ng, &u) < 1e-6);
        // KL mode: x requiring grad keeps the path to x.
        let xg = x.detach().set_requires_grad(true);
        let ug = c.eval(t, &xg, None);
        let gx = Tensor::run_backward(&[ug.sum(Kind::Float)], &[&xg], false, false);
        assert!(gx[0].abs().max().double_value(&[]) > 0.0);
        check_many_and_grads(&c, &vs, 2, false);
        assert_eq!(c.potential_many(&[0.1, 0.2], &x).size(), vec![4]);
    }

    #[test]
    fn potential_clip_zeroes_the_control() {
        let _rng = lv_core::testing::rng_lock();
        let vs = VarStore::new(Device::Cpu);
        let c = PotentialCtrl::new(&vs.root(), 2, &CtrlConfig::default(), vp_sigma()).unwrap();
        randomize(&vs);
        tch::no_grad(|| {
            let _ = vs.variables()["net.out.bias"].shallow_clone().fill_(1e3);
        });
        let x = Tensor::randn([4, 2], CPU);
        let u = c.eval(0.2, &x, None);
        assert_eq!(u.abs().max().double_value(&[]), 0.0);
        assert!((c.potential(0.2, &x) - 10.0).abs().max().double_value(&[]) < 1e-6);
    }

    /// Runs only where libtorch sees a GPU: every control on CUDA, eval_many vs eval.
    #[test]
    fn cuda_smoke_if_available() {
        let _rng = lv_core::testing::rng_lock();
        if !tch::Cuda::is_available() {
            return;
        }
        let dev = Device::Cuda(0);
        let vs = VarStore::new(dev);
        let cfg = CtrlConfig::default();
        let root = vs.root();
        let controls: Vec<Box<dyn Control>> = vec![
            Box::new(ClippedCtrl::new(&(&root / "a"), 2, &cfg).unwrap()),
            Box::new(ScoreCtrl::new(&(&root / "b"), 2, &cfg).unwrap()),
            Box::new(LerpCtrl::new(&(&root / "c"), 2, &cfg, vp_sigma(), 1.0, 1.0).unwrap()),
            Box::new(PotentialCtrl::new(&(&root / "d"), 2, &cfg, vp_sigma()).unwrap()),
        ];
        randomize(&vs);
        let ts = [0.1, 0.5];
        let x = Tensor::randn([8, 2], (Kind::Float, dev));
        let score = Tensor::randn([8, 2], (Kind::Float, dev));
        for c in &controls {
            let many = c.eval_many(&ts, &x, Some(&score));
            assert_eq!(many.device(), dev);
            let looped = loop_eval(c.as_ref(), &ts, &x, Some(&score));
            let scale = looped.abs().max().double_value(&[]);
            assert!(max_abs_diff(&many, &looped) < 1e-4 * (1.0 + scale));
        }
        let dir = std::env::temp_dir().join(format!("lv-nets-cuda-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.safetensors");
        crate::checkpoint::save_var_store(&vs, &path).unwrap();
        crate::checkpoint::load_var_store(&vs, &path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn config_deserialises_with_defaults() {
        let cfg: CtrlConfig =
            serde_json::from_str(r#"{"clip_model": 5.0, "mlp": {"width": 16}}"#).unwrap();
        assert_eq!(cfg.clip_model, 5.0);
        assert_eq!(cfg.clip_score, 10.0);
        assert_eq!(cfg.mlp.width, 16);
        assert_eq!(cfg.mlp.num_layers, 4);
    }
}
