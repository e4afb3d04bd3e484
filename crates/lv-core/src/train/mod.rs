//! The training loop, independent of the network type (spec §3.6, §6.5, §7).
//!
//! One step: sample X_0 from the prior (B initial points × K for `lv_traj`), simulate
//! (step by step, or for the LV family without gradients followed by one batched replay),
//! compute the loss, backpropagate, then
//! 1. **skip** the step (no optimizer, scheduler, EMA or clip-schedule update; the step
//!    counter still increments) when the scaled loss or any gradient is non-finite, or
//!    |loss| > `max_loss`, or ‖g‖_∞ > `max_grad`;
//! 2. otherwise clip the global gradient norm, update Adam, the StepLR schedule and the
//!    clip schedule (×factor after the given numbers of *successful* steps), and call the
//!    `after_update` hook (EMA).
//!
//! The skip decision needs one device→host read per step (a single boolean); gradient
//! clipping itself never synchronises.

use crate::control::Control;
use crate::estimate::Evaluation;
use crate::loss::{batch_loss, LossKind};
use crate::method::Method;
use crate::optim::{clip_grad_norm, grad_norm, schedule_factor, Adam, ParamGroup};
use crate::sim::{Controls, DivMode, SimOptions};
use crate::target::Target;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

mod explore;
mod paths;
mod settings;
mod shard;

pub use explore::{Exploration, ExploreDecay};
pub use settings::{DivModeSetting, TrainSettings, MIN_SHARD_ROWS};

/// Statistics of one step (host values; reading them syncs, so the trainer only fills the
/// loss when asked to).
#[derive(Clone, Debug, Default, Serialize)]
pub struct StepStats {
    pub step: usize,
    pub loss: f64,
    pub skipped: bool,
    pub kept: f64,
    pub grad_norm: f64,
    pub lr: f64,
}

/// Counters kept across the run (and in checkpoints).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Counters {
    /// Steps attempted.
    pub step: usize,
    /// Successful (non-skipped) steps.
    pub successful: usize,
    pub skipped: usize,
    /// Trajectories filtered out (non-finite R or R ≥ max_rnd), cumulative.
    pub filtered: u64,
    /// Target evaluations (log ρ or its score), cumulative, counted per sample.
    pub target_evals: u64,
}

/// Hooks called by the trainer.
pub trait Hooks {
    /// After each successful optimizer update (EMA lives here).
    fn after_update(&mut self, _counters: &Counters) {}
}

impl Hooks for () {}

/// The trainer: method, target, controls, optimizer and counters.
pub struct Trainer<'a> {
    pub method: &'a Method,
    pub target: &'a dyn Target,
    pub controls: Controls<'a>,
    pub loss: LossKind,
    pub settings: TrainSettings,
    pub adam: Adam,
    pub log_z: Option<Tensor>,
    pub counters: Counters,
    pub device: Device,
    params: Vec<Tensor>,
    potential: Option<&'a dyn crate::control::Potential>,
    /// Sub-trajectory steps taken (cumulative).
    pub subtraj_steps: usize,
}

impl<'a> Trainer<'a> {
    /// Builds the trainer; `u_params`/`v_params` are the trainable tensors of the controls
    /// (`v_lr` optionally gives v its own learning rate, as the later bridge code does).
    pub fn new(
        method: &'a Method,
        target: &'a dyn Target,
        controls: Controls<'a>,
        loss: LossKind,
        settings: TrainSettings,
        device: Device,
        v_lr: Option<f64>,
    ) -> Self {
        let mut groups = vec![ParamGroup {
            params: controls.u.parameters(),
            lr: settings.lr,
        }];
        if let Some(v) = controls.v {
            let p = v.parameters();
            match v_lr {
                Some(lr) => groups.push(ParamGroup { params: p, lr }),
                None => groups[0].params.extend(p),
            }
        }
        let log_z = (loss == LossKind::Moment)
            .then(|| Tensor::zeros([], (Kind::Float, device)).set_requires_grad(true));
        if let Some(c) = &log_z {
            groups.push(ParamGroup {
                params: vec![c.shallow_clone()],
                lr: settings.lr_log_z,
            });
        }
        let params: Vec<Tensor> = groups
            .iter()
            .flat_map(|g| g.params.iter().map(Tensor::shallow_clone))
            .collect();
        let mut controls = controls;
        controls.div = match settings.div {
            DivModeSetting::Exact => DivMode::Exact,
            DivModeSetting::Hutchinson => DivMode::Hutchinson,
        };
        Self {
            method,
            target,
            controls,
            loss,
            adam: Adam::new(groups, settings.weight_decay),
            settings,
            log_z,
            counters: Counters::default(),
            device,
            params,
            potential: None,
            subtraj_steps: 0,
        }
    }

    /// Enables sub-trajectory training with the potential Φ of the generative control (which
    /// must be the same network as `controls.u`). Errors unless the method is DIS with the LV
    /// loss and `settings.subtraj` is set.
    pub fn with_potential(mut self, p: &'a dyn crate::control::Potential) -> anyhow::Result<Self> {
        if self.settings.subtraj.is_none() {
            anyhow::bail!("a potential was given but `train.subtraj` is not set");
        }
        if self.method.form != crate::method::RndForm::TimeReversal || self.controls.v.is_some() {
            anyhow::bail!("sub-trajectory training needs DIS (time-reversal form without v)");
        }
        if self.loss != LossKind::Lv {
            anyhow::bail!(
                "sub-trajectory training needs the `lv` loss (got `{}`)",
                self.loss.name()
            );
        }
        self.potential = Some(p);
        Ok(self)
    }

    /// Current behaviour noise scale λ ([`Exploration::noise_scale`]; 1 outside the LV
    /// family).
    pub fn noise_scale(&self) -> f64 {
        if !self.loss.detached() {
            return 1.0;
        }
        self.settings.exploration().noise_scale(self.counters.step)
    }

    /// Number of clip milestones reached (counted in successful steps).
    fn milestones_reached(&self) -> i32 {
        let s = self.counters.successful;
        self.settings
            .clip_milestones
            .iter()
            .filter(|&&m| s >= m)
            .count() as i32
    }

    /// Current `max_loss` after the milestones reached.
    fn max_loss(&self) -> Option<f64> {
        let f = self
            .settings
            .max_loss_factor
            .powi(self.milestones_reached());
        self.settings.max_loss.map(|m| m * f)
    }

    /// Applies the clip schedule reached so far (×`clip_factor` per milestone) to the controls.
    pub fn apply_clip_schedule(&self) {
        let f = self.settings.clip_factor_after(self.counters.successful);
        self.controls.u.set_clip_factor(f);
        if let Some(v) = self.controls.v {
            v.set_clip_factor(f);
        }
    }

    /// How [`Trainer::batch_loss`] obtains the gradient of a full-trajectory batch with the
    /// current settings (sub-trajectory training aside).
    pub fn grad_path(&self) -> GradPath {
        if !self.loss.detached() {
            return if self.adjoint_ok() {
                GradPath::Adjoint
            } else {
                GradPath::Graph
            };
        }
        if !self.settings.replay {
            return GradPath::Graph;
        }
        let rows = self.method.grid.steps() * self.batch_rows();
        let chunk = self.settings.replay_rows;
        let large = chunk != 0 && rows > 8 * chunk;
        let direct_ok = self.settings.lv_direct
            && rows <= self.settings.lv_direct_max_rows
            && self.controls.v.is_none();
        // A control with a native network (tape) makes the direct path the fastest at every
        // size (docs/performance.md); without one it pays off only for large replays.
        let native = direct_ok && self.settings.native_trunk && self.controls.u.tape_supported();
        if direct_ok && (large || native) {
            GradPath::Direct { native }
        } else {
            GradPath::Replay {
                chunk_rows: large.then_some(chunk),
            }
        }
    }

    /// Whether the KL family takes the adjoint path ([`GradPath::Adjoint`]): `kl_adjoint`
    /// and the native trunk are on, the control supports [`Control::tape_vjp`], there is no
    /// inference control and no zero-centre-of-mass subspace, and the batch lives on the CPU.
    fn adjoint_ok(&self) -> bool {
        self.settings.kl_adjoint
            && self.settings.native_trunk
            && self.device == Device::Cpu
            && self.controls.v.is_none()
            && self.target.zero_com().is_none()
            && self.controls.u.tape_vjp_supported()
    }

    /// Number of batch shards of the full-trajectory paths with the current settings
    /// ([`TrainSettings::batch_shards`]); 1 means no sharding.
    pub fn shards(&self) -> usize {
        self.shard_count(self.batch_rows())
    }

    /// Trajectories per initial point: K for `lv_traj`, else
    /// [`TrainSettings::initial_repeats`].
    pub fn initial_repeats(&self) -> usize {
        match self.loss {
            LossKind::LvTraj { k } => k,
            _ => self.settings.initial_repeats,
        }
        .max(1)
    }

    /// Trajectories of one step: `batch` rounded down to a multiple of the repeats (at least
    /// one initial point).
    pub fn batch_rows(&self) -> usize {
        let k = self.initial_repeats();
        (self.settings.batch.max(1) / k).max(1) * k
    }

    /// The initial points of one step, `[batch_rows, d]`: `batch_rows / repeats` prior draws,
    /// each repeated [`Trainer::initial_repeats`] times in consecutive rows.
    pub fn draw_initial(&self) -> Tensor {
        let d = self.target.dim() as i64;
        let k = self.initial_repeats();
        let b = (self.batch_rows() / k) as i64;
        let x0 = self.method.prior.sample(b, d, self.device);
        if k == 1 {
            x0
        } else {
            x0.repeat_interleave_self_int(k as i64, Some(0), None)
        }
    }

    fn shard_count(&self, rows: usize) -> usize {
        let wanted = self.wanted_shards(rows);
        if wanted > 1 && self.controls.u.fork().is_some() {
            wanted
        } else {
            1
        }
    }

    /// Shards the settings ask for, before checking that the control can be forked. Only
    /// on CPU, for the direct and graph paths, and without an inference control (the
    /// bridge is not sharded).
    fn wanted_shards(&self, rows: usize) -> usize {
        if self.device != Device::Cpu
            || self.controls.v.is_some()
            || !matches!(
                self.grad_path(),
                GradPath::Direct { .. } | GradPath::Graph | GradPath::Adjoint
            )
        {
            return 1;
        }
        match self.settings.batch_shards {
            0 => {
                let t = crate::par::threads();
                if t >= 2 && rows >= t * MIN_SHARD_ROWS {
                    t
                } else {
                    1
                }
            }
            s => s.min(rows),
        }
    }

    /// The loss of one batch and the number of filtered samples. When the returned flag is
    /// true the gradients have already been accumulated (chunked replay) and the loss is
    /// detached; otherwise the caller backpropagates the loss.
    pub fn batch_loss(&mut self) -> (Tensor, Tensor, bool) {
        let n = self.settings.batch as i64;
        let x0 = self.draw_initial();
        let n_eff = x0.size()[0] as u64;
        let steps = self.method.grid.steps() as u64;
        let score_evals = if self.controls.u.needs_target_score() {
            steps
        } else {
            0
        };
        self.counters.target_evals += n_eff * (score_evals + 1);
        let mut opts = SimOptions::new(self.loss.mode());
        opts.noise_scale = self.noise_scale();
        let device = self.device;
        let filtered_of = |kept: &Tensor| Tensor::from(n_eff as f32).to_device(device) - kept;
        let (kind, max_rnd, dim) = (self.loss, self.settings.max_rnd, self.target.dim());
        let log_z = self.log_z.as_ref();
        let loss_of = |rnd: &Tensor| batch_loss(kind, rnd, max_rnd, dim, log_z);
        if let (Some(st), Some(pot)) = (self.settings.subtraj, self.potential) {
            if Tensor::rand([1], (Kind::Float, Device::Cpu)).double_value(&[0]) < st.prob {
                let dr = crate::subtraj::draw(self.method, self.target, &st);
                let res = crate::subtraj::subtraj_loss(
                    self.method,
                    self.target,
                    self.controls,
                    pot,
                    &dr,
                    &st,
                    (n, device),
                );
                // `with_potential` checked the method, so this cannot fail.
                let (loss, kept) = res.expect("sub-trajectory set-up was validated");
                self.subtraj_steps += 1;
                return (loss, filtered_of(&kept), false);
            }
        }
        let path = self.grad_path();
        let wanted = self.wanted_shards(n_eff as usize);
        // One fork per shard (fresh leaves over the same storage); `None` if not forkable.
        let forks: Option<Vec<Box<dyn Control + Send>>> = if wanted > 1 {
            (0..wanted).map(|_| self.controls.u.fork()).collect()
        } else {
            None
        };
        let (lv, backward_done) = match (forks, path) {
            (Some(forks), _) => self.sharded_loss(&x0, opts, path, forks, &loss_of),
            (None, GradPath::Graph) => self.graph_loss(&x0, opts, &loss_of),
            (None, GradPath::Direct { native }) => self.direct_loss(&x0, opts, native, &loss_of),
            (None, GradPath::Adjoint) => self.adjoint_loss(&x0, opts, &loss_of),
            (None, GradPath::Replay { chunk_rows }) => {
                self.replay_loss(&x0, opts, chunk_rows, &loss_of)
            }
        };
        (lv.loss, filtered_of(&lv.kept), backward_done)
    }

    /// One training step (see the module docs). Returns host statistics.
    pub fn step(&mut self, hooks: &mut dyn Hooks) -> StepStats {
        self.adam.zero_grad();
        let (loss, filtered, backward_done) = self.batch_loss();
        let loss_ok = loss.isfinite();
        if !backward_done && loss.requires_grad() {
            // A non-finite loss still backpropagates (the gradients are checked below).
            loss.backward();
        }
        let gn = grad_norm(&self.params);
        let mut ok = loss_ok.logical_and(&gn.isfinite());
        if let Some(ml) = self.max_loss() {
            ok = ok.logical_and(&loss.abs().le(ml));
        }
        if let Some(mg) = self.settings.max_grad {
            let gmax: Vec<Tensor> = self
                .params
                .iter()
                .filter_map(|p| {
                    let g = p.grad();
                    g.defined().then(|| g.abs().max())
                })
                .collect();
            if !gmax.is_empty() {
                ok = ok.logical_and(&Tensor::stack(&gmax, 0).max().le(mg));
            }
        }
        // The one host read of the step: [ok, loss, filtered, grad norm].
        let packed = Tensor::stack(
            &[
                ok.to_kind(Kind::Float),
                loss.detach().to_kind(Kind::Float),
                filtered.to_kind(Kind::Float),
                gn.to_kind(Kind::Float),
            ],
            0,
        )
        .to_device(Device::Cpu);
        let host = Vec::<f32>::try_from(&packed).expect("4 values");
        let ok = host[0] > 0.5 && !self.loss_is_constant();
        self.counters.step += 1;
        self.counters.filtered += host[2] as u64;
        if ok {
            if let Some(c) = self.settings.grad_clip {
                clip_grad_norm(&self.params, &gn, c);
            }
            self.adam.step();
            self.counters.successful += 1;
            let s = &self.settings;
            if let Some(f) = schedule_factor(
                s.lr_schedule,
                s.lr_milestones.as_ref(),
                self.counters.successful,
            ) {
                self.adam.lr_factor = f;
            }
            self.apply_clip_schedule();
            hooks.after_update(&self.counters);
        } else {
            self.counters.skipped += 1;
        }
        StepStats {
            step: self.counters.step,
            loss: host[1] as f64,
            skipped: !ok,
            kept: self.settings.batch as f64 - host[2] as f64,
            grad_norm: host[3] as f64,
            lr: self.settings.lr * self.adam.lr_factor,
        }
    }

    /// A control without parameters cannot be trained; such steps are not "successful".
    fn loss_is_constant(&self) -> bool {
        self.params.is_empty()
    }

    /// Trainable parameters (u, v and the learned log Z).
    pub fn params(&self) -> &[Tensor] {
        &self.params
    }

    /// Evaluates with the current weights (callers swap in EMA weights first).
    pub fn evaluate(&self, n: usize, chunk: usize) -> (Evaluation, Tensor) {
        let out = crate::estimate::evaluate(
            self.method,
            self.target,
            self.controls,
            n,
            chunk,
            self.device,
            self.settings.native_eval,
        );
        (out.estimates, out.samples)
    }
}

/// The gradient path of an LV-family batch ([`Trainer::grad_path`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GradPath {
    /// Autograd through the simulation: the KL family, or LV step by step (`replay = false`).
    Graph,
    /// The direct backward through the kept controls (`lv_direct`); `native`: the control
    /// runs its network natively ([`Control::start_tape`]).
    Direct { native: bool },
    /// The batched replay, in chunks of `chunk_rows` rows or (`None`) in one piece.
    Replay { chunk_rows: Option<usize> },
    /// The KL family without a graph of the trajectory: the control's network in tape mode
    /// and the adjoint backward through the states ([`crate::sim::AdjointRecord`]).
    Adjoint,
}

impl std::fmt::Display for GradPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GradPath::Graph => write!(f, "graph"),
            GradPath::Adjoint => write!(f, "adjoint, native net"),
            GradPath::Direct { native: true } => write!(f, "direct, native net"),
            GradPath::Direct { native: false } => write!(f, "direct"),
            GradPath::Replay { chunk_rows: None } => write!(f, "replay"),
            GradPath::Replay {
                chunk_rows: Some(r),
            } => write!(f, "replay, {r} rows per chunk"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{rng_lock, ScaledGauss};

    /// u(t, x) = w·x; its forks panic when evaluated (or not, with `fail = false`).
    struct Boom {
        w: Tensor,
        fail: bool,
    }

    impl Control for Boom {
        fn eval(&self, _t: f64, x: &Tensor, _score: Option<&Tensor>) -> Tensor {
            assert!(!self.fail, "shard control fails");
            x * &self.w
        }
        fn parameters(&self) -> Vec<Tensor> {
            vec![self.w.shallow_clone()]
        }
        fn fork(&self) -> Option<Box<dyn Control + Send>> {
            Some(Box::new(Boom {
                w: self.w.detach().set_requires_grad(true),
                fail: self.fail,
            }))
        }
    }

    fn trainer<'a>(m: &'a Method, t: &'a ScaledGauss, u: &'a Boom, loss: LossKind) -> Trainer<'a> {
        let s = TrainSettings {
            batch: 16,
            batch_shards: 2,
            replay_rows: 4, // LV takes the direct path
            ..TrainSettings::default()
        };
        Trainer::new(m, t, Controls::new(u), loss, s, Device::Cpu, None)
    }

    /// A panic in a shard thread reaches the caller (no hang), for the graph and the direct
    /// path; with working forks the same trainer shards and trains.
    #[test]
    fn shard_panics_propagate() {
        let _rng = rng_lock();
        let m = Method::pis(4).unwrap();
        let t = ScaledGauss {
            dim: 2,
            mean: 0.0,
            std: 1.0,
            log_z: 0.0,
        };
        let w = Tensor::from(0.1f32).set_requires_grad(true);
        for loss in [LossKind::Kl, LossKind::Lv] {
            let bad = Boom {
                w: w.shallow_clone(),
                fail: true,
            };
            let mut tr = trainer(&m, &t, &bad, loss);
            assert_eq!(tr.shards(), 2);
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| tr.batch_loss()));
            let msg = r.expect_err("the shard's panic is re-raised");
            assert_eq!(msg.downcast_ref::<&str>(), Some(&"shard control fails"));
            let good = Boom {
                w: w.shallow_clone(),
                fail: false,
            };
            let mut tr = trainer(&m, &t, &good, loss);
            let stats = tr.step(&mut ());
            assert!(
                stats.loss.is_finite() && !stats.skipped,
                "{loss:?}: {stats:?}"
            );
        }
    }
}
