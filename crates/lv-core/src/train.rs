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
use crate::optim::{clip_grad_norm, grad_norm, Adam, ParamGroup, StepLr};
use crate::sim::{
    replay_lv, replay_lv_steps, simulate, simulate_with_noise, Controls, DivMode, SimOptions,
};
use crate::target::Target;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// Fewest rows per shard when [`TrainSettings::batch_shards`] is 0 (auto).
pub const MIN_SHARD_ROWS: usize = 64;

/// Settings of the training loop (validated by the config layer).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainSettings {
    pub steps: usize,
    /// Trajectories per step (for `lv_traj`: B·K).
    pub batch: usize,
    /// Trajectories per initial point x₀ for every loss but `lv_traj` (whose K decides it):
    /// each step draws `batch / initial_repeats` prior points and repeats each this many
    /// times. 1 (default) draws `batch` independent points. The paper preset's KL runs use
    /// 16, like its `lv_traj` runs (spec §7/§8: 128 initial points × K = 16).
    pub initial_repeats: usize,
    pub lr: f64,
    /// Learning rate of the learned log Z of the moment loss.
    pub lr_log_z: f64,
    /// Coupled L2 weight decay.
    pub weight_decay: f64,
    /// StepLR (every, γ); `None` keeps the lr constant.
    pub lr_schedule: Option<(usize, f64)>,
    /// Global-norm gradient clipping.
    pub grad_clip: Option<f64>,
    pub max_rnd: Option<f64>,
    /// Skip threshold on |loss| with its own milestones: (base, [(successful step, factor)]).
    pub max_loss: Option<f64>,
    pub max_grad: Option<f64>,
    /// Clip schedule: after these numbers of successful steps multiply clips by `clip_factor`.
    pub clip_milestones: Vec<usize>,
    pub clip_factor: f64,
    /// Multiply `max_loss` by this at each clip milestone (paper: 1e-4).
    pub max_loss_factor: f64,
    /// Use the batched replay for the LV family.
    pub replay: bool,
    /// Rows (trajectories × time steps) per replay chunk; 0 replays all N·n rows at once.
    /// Replays of at most 8 × `replay_rows` rows run in one piece; larger ones in chunks of
    /// about `replay_rows` rows, each backpropagated through dL/dR (exact: L depends on the
    /// parameters only through R = Σ_chunks R_c + const). Measured on the 2-core CPU
    /// (docs/performance.md): one piece is fastest at 25,600 rows (B = 256, N = 100), chunks
    /// of 8,192 rows are 1.6× faster than one piece at 409,600 rows (B = 2048, N = 200).
    pub replay_rows: usize,
    /// For replays above 8 × `replay_rows` rows, or at any size when the control runs its
    /// network natively (`native_trunk` and [`Control::start_tape`]), and with no inference
    /// control, skip the replay:
    /// keep the live controls of the simulation with their graphs and backpropagate
    /// Σ_k ⟨u_k, ∂R/∂u_k · ∂L/∂R⟩ ([`crate::sim::KeptControls`]): one network forward and
    /// one backward per step instead of two forwards (docs/performance.md). `false` uses the
    /// chunked replay there.
    pub lv_direct: bool,
    /// The direct path keeps every step's network activations until the backward (about
    /// 2 kB per row at width 64: 0.8 GB at B = 2048, N = 200); above this many rows
    /// (trajectories × steps) the trainer uses the chunked replay, whose memory is bounded by
    /// `replay_rows`, instead.
    pub lv_direct_max_rows: usize,
    /// In the direct path, let the control run its network natively and backpropagate it
    /// itself ([`Control::start_tape`]; lv-nets' FourierMLP on CPU: fused bias + GELU + GELU′,
    /// no autograd graph for the trunk). Same gradients to float32 rounding; `false` keeps
    /// the whole step in autograd.
    pub native_trunk: bool,
    /// Batch shards for the full-trajectory paths (direct LV and the graph path of KL,
    /// moment and LV without replay) on CPU: the batch is split into this many row blocks,
    /// each simulated and backpropagated on its own thread with one libtorch thread, using a
    /// [`Control::fork`] of the controls; dL/dR is computed once over the whole batch in
    /// between, and the forks' gradients are added in shard order (deterministic). 0 = auto:
    /// one shard per libtorch thread (the `threads` setting) when the control can be forked
    /// and every shard gets at least [`MIN_SHARD_ROWS`] rows, else 1 (no sharding). Methods
    /// with an inference control (the bridge) are not sharded. On the
    /// 2-core CPU two shards are faster than two libtorch threads on one batch
    /// (docs/performance.md), because most of a step is many small operations that
    /// libtorch runs on one thread.
    pub batch_shards: usize,
    /// Off-policy behaviour noise scale λ(0) for the LV family (1 = on-policy); decays
    /// linearly to 1 over the first `explore_steps` steps.
    pub explore_scale: f64,
    pub explore_steps: usize,
    pub div: DivModeSetting,
    /// Sub-trajectory LV training (spec §5.5): needs a potential control
    /// ([`Trainer::with_potential`]) and DIS.
    pub subtraj: Option<crate::subtraj::SubTrajSettings>,
}

impl TrainSettings {
    /// Checks the settings (not their agreement with a loss or a method, which the caller
    /// knows); errors name the key as `{prefix}steps` etc.
    pub fn check(&self, prefix: &str) -> anyhow::Result<()> {
        use crate::check::{count, in_range, non_negative, positive, MAX_COUNT};
        let key = |k: &str| format!("{prefix}{k}");
        count(&key("steps"), self.steps, 1, MAX_COUNT)?;
        count(&key("batch"), self.batch, 2, MAX_COUNT)?;
        count(&key("initial_repeats"), self.initial_repeats, 1, self.batch)?;
        if !self.batch.is_multiple_of(self.initial_repeats) {
            anyhow::bail!(
                "key `{}` ({}) must be a multiple of `{}` ({})",
                key("batch"),
                self.batch,
                key("initial_repeats"),
                self.initial_repeats
            );
        }
        positive(&key("lr"), self.lr)?;
        positive(&key("lr_log_z"), self.lr_log_z)?;
        non_negative(&key("weight_decay"), self.weight_decay)?;
        if let Some((every, gamma)) = self.lr_schedule {
            count(&key("lr_schedule[0]"), every, 1, MAX_COUNT)?;
            positive(&key("lr_schedule[1]"), gamma)?;
        }
        for (name, v) in [
            ("grad_clip", self.grad_clip),
            ("max_rnd", self.max_rnd),
            ("max_loss", self.max_loss),
            ("max_grad", self.max_grad),
        ] {
            if let Some(v) = v {
                positive(&key(name), v)?;
            }
        }
        positive(&key("clip_factor"), self.clip_factor)?;
        positive(&key("max_loss_factor"), self.max_loss_factor)?;
        count(&key("replay_rows"), self.replay_rows, 0, MAX_COUNT)?;
        count(
            &key("lv_direct_max_rows"),
            self.lv_direct_max_rows,
            0,
            MAX_COUNT,
        )?;
        count(&key("batch_shards"), self.batch_shards, 0, self.batch)?;
        in_range(&key("explore_scale"), self.explore_scale, 1.0, 1e3)?;
        count(&key("explore_steps"), self.explore_steps, 0, MAX_COUNT)?;
        if let Some(st) = &self.subtraj {
            st.check(&key("subtraj."))?;
        }
        Ok(())
    }
}

/// Serializable [`DivMode`].
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DivModeSetting {
    #[default]
    Exact,
    Hutchinson,
}

impl Default for TrainSettings {
    /// The paper's settings (spec §7) except steps and batch, which callers set.
    fn default() -> Self {
        Self {
            steps: 60_000,
            batch: 2048,
            initial_repeats: 1,
            lr: 5e-3,
            lr_log_z: 0.1,
            weight_decay: 1e-7,
            lr_schedule: Some((100, 0.02f64.powf(100.0 / 60_000.0))),
            grad_clip: Some(1.0),
            max_rnd: Some(1e8),
            max_loss: None,
            max_grad: None,
            clip_milestones: vec![200, 400],
            clip_factor: 5.0,
            max_loss_factor: 1e-4,
            replay: true,
            replay_rows: 8_192,
            lv_direct: true,
            lv_direct_max_rows: 2_000_000,
            native_trunk: true,
            batch_shards: 0,
            explore_scale: 1.0,
            explore_steps: 0,
            div: DivModeSetting::Exact,
            subtraj: None,
        }
    }
}

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

    /// Current behaviour noise scale λ (linear decay to 1 over `explore_steps`).
    pub fn noise_scale(&self) -> f64 {
        let s = &self.settings;
        if !self.loss.detached() || s.explore_scale <= 1.0 || s.explore_steps == 0 {
            return 1.0;
        }
        let frac = (self.counters.step as f64 / s.explore_steps as f64).min(1.0);
        s.explore_scale + (1.0 - s.explore_scale) * frac
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
        let f = self.settings.clip_factor.powi(self.milestones_reached());
        self.controls.u.set_clip_factor(f);
        if let Some(v) = self.controls.v {
            v.set_clip_factor(f);
        }
    }

    /// How [`Trainer::batch_loss`] obtains the gradient of a full-trajectory batch with the
    /// current settings (sub-trajectory training aside).
    pub fn grad_path(&self) -> GradPath {
        if !self.loss.detached() || !self.settings.replay {
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
            || !matches!(self.grad_path(), GradPath::Direct { .. } | GradPath::Graph)
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
        let d = self.target.dim() as i64;
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
        if let Some(forks) = forks {
            let direct = match path {
                GradPath::Direct { native } => Some(native),
                _ => None,
            };
            if direct.is_some() {
                opts.keep_controls = true;
            }
            let noise = Tensor::randn(
                [self.method.grid.steps() as i64, n_eff as i64, d],
                (x0.kind(), x0.device()),
            );
            let parts = crate::par::split_rows(n_eff as usize, 1, forks.len());
            let work: Vec<Shard> = parts
                .iter()
                .zip(forks)
                .map(|(r, u)| {
                    let (a, len) = (r.start as i64, r.len() as i64);
                    Shard {
                        u,
                        x0: x0.narrow(0, a, len).contiguous(),
                        noise: noise.narrow(1, a, len).contiguous(),
                    }
                })
                .collect();
            let run = ShardRun {
                method: self.method,
                target: self.target,
                opts,
                direct,
            };
            let (loss, kept, done) = run.run(work, &loss_of);
            add_fork_grads(self.controls.u, done.iter().map(|s| &*s.u));
            return (loss, filtered_of(&kept), true);
        }
        if let GradPath::Direct { native } = path {
            // Direct LV gradient: g = dL/dR on a leaf copy of R, then one backward of
            // Σ_k ⟨u_k, stopgrad(∂R/∂u_k · g)⟩ through the kept control graphs.
            opts.keep_controls = true;
            let tape = TapeGuard::start(self.controls.u, native);
            let out = simulate(self.method, self.target, self.controls, &x0, opts);
            let kept = out.kept.expect("kept controls requested");
            let r_leaf = out.rnd.detach().set_requires_grad(true);
            let lv = loss_of(&r_leaf);
            lv.loss.backward();
            kept.backward(&r_leaf.grad());
            tape.finish();
            return (lv.loss.detach(), filtered_of(&lv.kept), true);
        }
        if self.loss.detached() && self.settings.replay {
            opts.record = true;
            let out = tch::no_grad(|| simulate(self.method, self.target, self.controls, &x0, opts));
            let rec = out.recording.expect("recording requested");
            let steps = rec.ts.len();
            let rows = self.settings.replay_rows;
            let chunk = if rows == 0 || steps * n_eff as usize <= 8 * rows {
                steps
            } else {
                (rows / n_eff.max(1) as usize).clamp(1, steps)
            };
            if chunk >= steps {
                let out = loss_of(&replay_lv(
                    self.method,
                    &self.method.grid,
                    self.controls,
                    &rec,
                ));
                return (out.loss, filtered_of(&out.kept), false);
            }
            // Chunked replay: g = dL/dR on a leaf copy of R, then Σ_chunks backward(⟨R_c, g⟩).
            let r_leaf = out.rnd.detach().set_requires_grad(true);
            let lv = loss_of(&r_leaf);
            lv.loss.backward();
            let g = r_leaf.grad().detach();
            let mut k0 = 0;
            while k0 < steps {
                let k1 = (k0 + chunk).min(steps);
                let rc =
                    replay_lv_steps(self.method, &self.method.grid, self.controls, &rec, k0, k1);
                (rc * &g).sum(Kind::Float).backward();
                k0 = k1;
            }
            return (lv.loss.detach(), filtered_of(&lv.kept), true);
        }
        let out = loss_of(&simulate(self.method, self.target, self.controls, &x0, opts).rnd);
        (out.loss, filtered_of(&out.kept), false)
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
            if let Some((every, gamma)) = self.settings.lr_schedule {
                self.adam.lr_factor = StepLr { every, gamma }.factor(self.counters.successful);
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
}

impl std::fmt::Display for GradPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GradPath::Graph => write!(f, "graph"),
            GradPath::Direct { native: true } => write!(f, "direct, native net"),
            GradPath::Direct { native: false } => write!(f, "direct"),
            GradPath::Replay { chunk_rows: None } => write!(f, "replay"),
            GradPath::Replay {
                chunk_rows: Some(r),
            } => write!(f, "replay, {r} rows per chunk"),
        }
    }
}

/// One shard of a batch-sharded step: forked controls and the shard's rows.
struct Shard {
    u: Box<dyn Control + Send>,
    x0: Tensor,
    /// `[steps, rows, d]`.
    noise: Tensor,
}

/// What the shard threads share (read-only).
struct ShardRun<'a> {
    method: &'a Method,
    target: &'a dyn Target,
    opts: SimOptions,
    /// `Some(native)`: the direct LV path (kept controls, tape if `native`); `None`: the
    /// graph path.
    direct: Option<bool>,
}

impl ShardRun<'_> {
    /// Simulates every shard on its own thread (one libtorch thread each), computes the
    /// loss on the concatenated R of all shards here and g = dL/dR, then lets each shard
    /// backpropagate ⟨R_shard, g_shard⟩ (graph path) or its kept controls with g_shard
    /// (direct path) into its forks. Returns the detached loss, the kept mask and the shards
    /// with their gradients. The shard threads set their own thread count
    /// ([`crate::par::set_local_threads`]; if that is unavailable, the global one, restored
    /// afterwards); a panic in a shard is re-raised here.
    fn run(
        &self,
        shards: Vec<Shard>,
        loss_of: &dyn Fn(&Tensor) -> crate::loss::LossValue,
    ) -> (Tensor, Tensor, Vec<Shard>) {
        use std::sync::mpsc;
        let threads = tch::get_num_threads();
        let global_fallback = std::sync::atomic::AtomicBool::new(false);
        let rows: Vec<i64> = shards.iter().map(|s| s.x0.size()[0]).collect();
        let out = std::thread::scope(|scope| {
            let (tx_r, rx_r) = mpsc::channel::<(usize, Tensor)>();
            let mut to_shards = Vec::new();
            let mut handles = Vec::new();
            for (i, shard) in shards.into_iter().enumerate() {
                let (tx_g, rx_g) = mpsc::channel::<Tensor>();
                to_shards.push(tx_g);
                let tx_r = tx_r.clone();
                let global_fallback = &global_fallback;
                handles.push(scope.spawn(move || {
                    // One libtorch thread here; without the per-thread setters, the global one.
                    if !crate::par::set_local_threads(1) {
                        global_fallback.store(true, std::sync::atomic::Ordering::Relaxed);
                        tch::set_num_threads(1);
                    }
                    self.shard(i, &shard, tx_r, rx_g);
                    shard
                }));
            }
            drop(tx_r);
            let mut parts: Vec<Option<Tensor>> = (0..rows.len()).map(|_| None).collect();
            for (i, r) in rx_r.iter() {
                parts[i] = Some(r);
            }
            let result = if parts.iter().all(Option::is_some) {
                let parts: Vec<Tensor> = parts.into_iter().flatten().collect();
                let r_leaf = Tensor::cat(&parts, 0).set_requires_grad(true);
                let lv = loss_of(&r_leaf);
                lv.loss.backward();
                let g = r_leaf.grad();
                let mut start = 0;
                for (tx, &len) in to_shards.iter().zip(&rows) {
                    let _ = tx.send(g.narrow(0, start, len).contiguous());
                    start += len;
                }
                Some((lv.loss.detach(), lv.kept))
            } else {
                None // a shard panicked before sending R; its panic is re-raised below
            };
            drop(to_shards);
            let done: Vec<Shard> = handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect();
            let (loss, kept) = result.expect("every shard sent R");
            (loss, kept, done)
        });
        if global_fallback.into_inner() {
            tch::set_num_threads(threads);
        }
        out
    }
}

impl ShardRun<'_> {
    /// Shard `i` on its thread: simulate, send R, wait for g, backpropagate (see
    /// [`ShardRun::run`]). Without g (another shard failed) the tape is dropped.
    fn shard(
        &self,
        i: usize,
        shard: &Shard,
        tx_r: std::sync::mpsc::Sender<(usize, Tensor)>,
        rx_g: std::sync::mpsc::Receiver<Tensor>,
    ) {
        let controls = Controls::new(&*shard.u);
        let tape = TapeGuard::start(controls.u, self.direct == Some(true));
        let out = simulate_with_noise(
            self.method,
            &self.method.grid,
            self.target,
            controls,
            &shard.x0,
            self.opts,
            Some(&shard.noise),
        );
        let _ = tx_r.send((i, out.rnd.detach()));
        drop(tx_r);
        if let Ok(g) = rx_g.recv() {
            match &out.kept {
                Some(kept) => kept.backward(&g),
                None => (&out.rnd * g).sum(Kind::Float).backward(),
            }
            tape.finish();
        }
    }
}

/// Adds the forks' parameter gradients to `control`'s, in fork order (so the sum does not
/// depend on thread timing): one backward of Σ_i ⟨p_i, Σ_forks ∂p_i⟩.
fn add_fork_grads<'f>(
    control: &dyn Control,
    forks: impl Iterator<Item = &'f (dyn Control + Send)>,
) {
    let params = control.parameters();
    let mut sums: Vec<Option<Tensor>> = params.iter().map(|_| None).collect();
    for fork in forks {
        let fp = fork.parameters();
        assert_eq!(
            fp.len(),
            params.len(),
            "a fork has other parameters than its control"
        );
        for (sum, p) in sums.iter_mut().zip(&fp) {
            let g = p.grad();
            if g.defined() {
                *sum = Some(match sum.take() {
                    Some(s) => s + g,
                    None => g.detach().copy(),
                });
            }
        }
    }
    let terms: Vec<Tensor> = params
        .iter()
        .zip(sums)
        .filter_map(|(p, g)| g.map(|g| (p * g).sum(Kind::Float)))
        .collect();
    if !terms.is_empty() {
        Tensor::stack(&terms, 0).sum(Kind::Float).backward();
    }
}

/// An open [`Control::start_tape`]: `finish` completes the gradients; dropping it unfinished
/// (an early return or a panic) discards the tape.
struct TapeGuard<'a> {
    control: &'a dyn Control,
    open: bool,
}

impl<'a> TapeGuard<'a> {
    fn start(control: &'a dyn Control, enabled: bool) -> Self {
        let open = enabled && control.tape_supported() && control.start_tape();
        Self { control, open }
    }
    fn finish(mut self) {
        if self.open {
            self.open = false;
            self.control.finish_tape();
        }
    }
}

impl Drop for TapeGuard<'_> {
    fn drop(&mut self) {
        if self.open {
            self.control.drop_tape();
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
