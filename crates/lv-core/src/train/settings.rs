//! Settings of the training loop ([`TrainSettings`]) and their checks.

use super::explore::{Exploration, ExploreDecay};
use serde::{Deserialize, Serialize};

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
    /// A multi-step schedule (×γ at given update counts, as RSMC's ×0.3 at 20k and 30k);
    /// with `lr_schedule` as well, the two factors multiply.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr_milestones: Option<crate::optim::LrMilestones>,
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
    /// With `native_trunk`: train the KL family on the adjoint path
    /// ([`super::GradPath::Adjoint`]: the control's network in tape mode, no graph of the
    /// trajectory, the gradient through the states by the adjoint recursion of
    /// [`crate::sim::AdjointRecord`]). Same gradients as the graph path to float32 rounding
    /// (tests/grad_paths.rs in lv-nets). Off by default, so that KL runs reproduce the
    /// committed tables, which the graph path trained; serialised only when on (so configs
    /// without it keep their hashes).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub kl_adjoint: bool,
    /// The evaluations (periodic and final, [`crate::estimate::evaluate`]) run the controls'
    /// networks natively without a tape ([`Control::start_inference`]) and update X and R
    /// in one host pass per step (CPU float32, no inference control). The same estimators,
    /// rounded differently: on chaotic targets a trajectory's R can move by more than the
    /// rounding (docs/performance.md, "Evaluation throughput"). Off by default, so that
    /// runs reproduce the committed tables, which the tensor path evaluated; serialised only
    /// when on (so configs without it keep their hashes).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub native_eval: bool,
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
    /// Off-policy behaviour noise scale λ(0) for the LV family (1 = on-policy); returns to
    /// 1 over the first `explore_steps` steps as `explore_decay` says ([`Exploration`]).
    pub explore_scale: f64,
    pub explore_steps: usize,
    /// Serialised only when not the default (so configs without it keep their hashes).
    #[serde(skip_serializing_if = "ExploreDecay::is_default")]
    pub explore_decay: ExploreDecay,
    pub div: DivModeSetting,
    /// Sub-trajectory LV training (spec §5.5): needs a potential control
    /// ([`Trainer::with_potential`]) and DIS.
    pub subtraj: Option<crate::subtraj::SubTrajSettings>,
}

impl TrainSettings {
    /// The exploration schedule of these settings.
    pub fn exploration(&self) -> Exploration {
        Exploration {
            scale: self.explore_scale,
            steps: self.explore_steps,
            decay: self.explore_decay,
        }
    }

    /// The factor of the controls' clip values after `successful` optimizer steps:
    /// `clip_factor` to the power of the milestones reached (`successful ≥ m`).
    pub fn clip_factor_after(&self, successful: usize) -> f64 {
        let reached = self
            .clip_milestones
            .iter()
            .filter(|&&m| successful >= m)
            .count();
        self.clip_factor.powi(reached as i32)
    }

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
        if let Some(m) = &self.lr_milestones {
            positive(&key("lr_milestones.gamma"), m.gamma)?;
            for (i, &at) in m.at.iter().enumerate() {
                count(&key(&format!("lr_milestones.at[{i}]")), at, 1, MAX_COUNT)?;
                if i > 0 && at <= m.at[i - 1] {
                    anyhow::bail!(
                        "key `{}` must increase (entry {i} is {at} after {})",
                        key("lr_milestones.at"),
                        m.at[i - 1]
                    );
                }
            }
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
            lr_milestones: None,
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
            kl_adjoint: false,
            native_eval: false,
            batch_shards: 0,
            explore_scale: 1.0,
            explore_steps: 0,
            explore_decay: ExploreDecay::Scale,
            div: DivModeSetting::Exact,
            subtraj: None,
        }
    }
}
