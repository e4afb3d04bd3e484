//! The training driver: the loop of a whole run, in the library (argmin's executor pattern).
//!
//! [`Driver::run`] owns the steps of a [`Learner`] (the diffusion [`Trainer`], the annealed
//! [`crate::anneal::AnnealedTrainer`]) and everything a run does between them:
//! re-seeding torch's generator from (seed, step) before every step (so a resumed run draws
//! exactly the noises of an uninterrupted one), the weight average ([`Averager`], the EMA),
//! periodic evaluations with the averaged weights, the training curve ([`Observer`]) and
//! checkpoints ([`Checkpoint`]). The `lv` command is a thin shell over it that parses, builds,
//! runs and writes files; a Rust user plugs in their own target and sinks (or none).
//!
//! Per step k = 1, 2, …, `steps` (k counts attempted steps, skipped ones included):
//! 1. `tch::manual_seed(step_seed(seed, k − 1))`, then one [`Trainer::step`]; the averager's
//!    [`Averager::update`] runs after each successful optimizer update;
//! 2. if `eval_every > 0`, k is a multiple of it and k < `steps`: an evaluation on `eval_n`
//!    trajectories with the averaged weights, passed with their terminal samples to
//!    [`Observer::on_eval`];
//! 3. if k is a multiple of `log_every` or k = `steps`: a [`StepRecord`] to
//!    [`Observer::on_step`];
//! 4. [`Observer::on_progress`] (progress bars);
//! 5. if k is a multiple of `checkpoint_every` or k = `steps`: [`Checkpoint::save`].
//!
//! The final evaluation is the caller's (it decides sizes, metrics and files).

use crate::estimate::Evaluation;
use crate::train::{Counters, Hooks, StepStats, Trainer};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// The seed of step `step` (0-based) of a run with seed `seed`.
pub fn step_seed(seed: u64, step: usize) -> i64 {
    (seed.wrapping_mul(1_000_003).wrapping_add(step as u64) & 0x7fff_ffff_ffff) as i64
}

/// How often a run logs, evaluates and checkpoints (all counts in steps, ≥ 1 except
/// `eval_every`, where 0 means no evaluation during training).
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    /// Total steps of the run.
    pub steps: usize,
    /// Seed of the run (see [`step_seed`]).
    pub seed: u64,
    /// Evaluate every this many steps (0: never during training).
    pub eval_every: usize,
    /// Trajectories of each evaluation during training.
    pub eval_n: usize,
    /// Trajectories per evaluation chunk.
    pub eval_chunk: usize,
    /// Send a [`StepRecord`] every this many steps (and at the last).
    pub log_every: usize,
    /// Save a checkpoint every this many steps (and at the last).
    pub checkpoint_every: usize,
}

impl Default for Schedule {
    fn default() -> Self {
        Self {
            steps: 1000,
            seed: 1,
            eval_every: 0,
            eval_n: 2000,
            eval_chunk: 10_000,
            log_every: 50,
            checkpoint_every: 500,
        }
    }
}

impl Schedule {
    /// Checks the counts; errors name the field.
    pub fn check(&self) -> Result<()> {
        use crate::check::{count, MAX_COUNT};
        count("steps", self.steps, 1, MAX_COUNT)?;
        count("eval_n", self.eval_n, 1, MAX_COUNT)?;
        count("eval_chunk", self.eval_chunk, 1, MAX_COUNT)?;
        count("log_every", self.log_every, 1, MAX_COUNT)?;
        count("checkpoint_every", self.checkpoint_every, 1, MAX_COUNT)?;
        Ok(())
    }
}

/// One line of the training curve (`metrics.jsonl` of the `lv` command).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Steps attempted so far (this one included).
    pub step: usize,
    /// The scaled loss of this step.
    #[serde(deserialize_with = "crate::json::f64_or_nan")]
    pub loss: f64,
    /// Whether the step was skipped (spec §3.6).
    pub skipped: bool,
    /// Trajectories kept by the sample filter.
    #[serde(deserialize_with = "crate::json::f64_or_nan")]
    pub kept: f64,
    /// Global gradient norm before clipping.
    #[serde(deserialize_with = "crate::json::f64_or_nan")]
    pub grad_norm: f64,
    /// Learning rate of this step.
    #[serde(deserialize_with = "crate::json::f64_or_nan")]
    pub lr: f64,
    /// Training seconds so far (over all invocations of a resumed run).
    #[serde(deserialize_with = "crate::json::f64_or_nan")]
    pub seconds: f64,
    /// Skipped steps so far.
    pub skipped_steps: usize,
    /// Filtered trajectories so far.
    pub filtered_samples: u64,
}

/// An evaluation during training (`metrics.jsonl`: `{"step": …, "eval": {…}}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    pub step: usize,
    pub eval: Evaluation,
}

/// One line of `metrics.jsonl`: a step or an evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CurveLine {
    Step(StepRecord),
    Eval(EvalRecord),
}

impl CurveLine {
    /// Parses one line; `None` for a line that is neither record (e.g. one truncated by a
    /// killed run).
    pub fn parse(line: &str) -> Option<Self> {
        serde_json::from_str(line).ok()
    }

    /// The step the line belongs to.
    pub fn step(&self) -> usize {
        match self {
            CurveLine::Step(s) => s.step,
            CurveLine::Eval(e) => e.step,
        }
    }
}

/// What the driver and a checkpoint need of a trainer: one step, an evaluation, the
/// counters and the optimiser state.
pub trait Learner {
    /// One optimisation step; `hooks.after_update` runs after a successful update.
    fn step(&mut self, hooks: &mut dyn Hooks) -> StepStats;
    /// An evaluation on `n` trajectories (in chunks of `chunk`) and its terminal samples.
    fn evaluate(&self, n: usize, chunk: usize) -> (Evaluation, Tensor);
    fn counters(&self) -> &Counters;
    /// The optimiser's state and any trained tensor outside the model's parameters, named.
    fn state(&self) -> Vec<(String, Tensor)>;
    /// Restores [`Learner::state`] and the counters of a checkpoint.
    fn restore(&mut self, named: &[(String, Tensor)], counters: Counters) -> Result<()>;
}

impl Learner for Trainer<'_> {
    fn step(&mut self, hooks: &mut dyn Hooks) -> StepStats {
        Trainer::step(self, hooks)
    }
    fn evaluate(&self, n: usize, chunk: usize) -> (Evaluation, Tensor) {
        Trainer::evaluate(self, n, chunk)
    }
    fn counters(&self) -> &Counters {
        &self.counters
    }
    fn state(&self) -> Vec<(String, Tensor)> {
        let mut named = self.adam.state();
        if let Some(c) = &self.log_z {
            named.push(("log_z".into(), c.shallow_clone()));
        }
        named
    }
    fn restore(&mut self, named: &[(String, Tensor)], counters: Counters) -> Result<()> {
        self.adam.load_state(named)?;
        if let Some(c) = &self.log_z {
            let src = named
                .iter()
                .find(|(k, _)| k == "log_z")
                .context("checkpoint has no log_z")?;
            tch::no_grad(|| c.shallow_clone().copy_(&src.1));
        }
        self.counters = counters;
        // The clip schedule reached so far.
        self.apply_clip_schedule();
        Ok(())
    }
}

/// A weight average of the trained parameters (the EMA of spec §7).
pub trait Averager {
    /// After each successful optimizer update.
    fn update(&mut self);
    /// Puts the averaged weights into the model (no-op if already in).
    fn swap_in(&mut self);
    /// Restores the training weights (no-op if already out).
    fn swap_out(&mut self);
    /// The averaged weights as named tensors and the number of update calls so far, for
    /// checkpoints (default: nothing to save).
    fn state(&self) -> (Vec<(String, Tensor)>, u64) {
        (Vec::new(), 0)
    }
}

/// No averaging: evaluations use the training weights.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoAverage;

impl Averager for NoAverage {
    fn update(&mut self) {}
    fn swap_in(&mut self) {}
    fn swap_out(&mut self) {}
}

/// Receives the training curve (a metrics sink).
pub trait Observer {
    /// Every `log_every` steps and at the last.
    fn on_step(&mut self, _record: &StepRecord) -> Result<()> {
        Ok(())
    }
    /// After each evaluation during training, with its terminal samples `[eval_n, d]`
    /// (sample metrics are the observer's).
    fn on_eval(&mut self, _record: &EvalRecord, _samples: &Tensor) -> Result<()> {
        Ok(())
    }
    /// After every step: its statistics, the latest evaluation and steps/s of this
    /// invocation (for progress bars).
    fn on_progress(&mut self, _stats: &StepStats, _last_eval: Option<&Evaluation>, _rate: f64) {}
}

/// Observes nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoObserver;

impl Observer for NoObserver {}

/// Saves the state of a run (model, optimizer, averager, counters) so that it can resume.
pub trait Checkpoint {
    /// Called every `checkpoint_every` steps, at the last step and when the run stops early;
    /// `seconds` is the training time so far.
    fn save(&mut self, trainer: &dyn Learner, averager: &dyn Averager, seconds: f64) -> Result<()>;
}

/// Keeps no checkpoints.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoCheckpoint;

impl Checkpoint for NoCheckpoint {
    fn save(&mut self, _: &dyn Learner, _: &dyn Averager, _: f64) -> Result<()> {
        Ok(())
    }
}

/// How [`Driver::run`] ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// Counters at the end.
    pub counters: Counters,
    /// Training seconds over all invocations (the resumed `seconds` included).
    pub seconds: f64,
    /// Whether all `steps` were done (false: stopped by `stop_after` or `interrupt`).
    pub finished: bool,
}

/// The loop of a run over a [`Learner`] (see the module docs).
pub struct Driver<'t> {
    trainer: &'t mut dyn Learner,
    schedule: Schedule,
    seconds: f64,
    stop_after: Option<usize>,
    interrupt: Option<&'t dyn Fn() -> bool>,
}

struct AverageHook<'x>(&'x mut dyn Averager);

impl Hooks for AverageHook<'_> {
    fn after_update(&mut self, _c: &Counters) {
        self.0.update();
    }
}

impl<'t> Driver<'t> {
    /// A driver over `trainer` from its current counters (0 for a new run, the checkpoint's
    /// when resuming).
    pub fn new(trainer: &'t mut dyn Learner, schedule: Schedule) -> Self {
        Self {
            trainer,
            schedule,
            seconds: 0.0,
            stop_after: None,
            interrupt: None,
        }
    }

    /// Training seconds already spent (a resumed run's).
    pub fn resumed_seconds(mut self, seconds: f64) -> Self {
        self.seconds = seconds;
        self
    }

    /// Stop (with a checkpoint) after this many steps of this invocation.
    pub fn stop_after(mut self, steps: Option<usize>) -> Self {
        self.stop_after = steps;
        self
    }

    /// Asked after every step: `true` stops the run there, with a checkpoint, as
    /// [`Driver::stop_after`] does (Ctrl-C from Python, an error raised by a user's callback).
    pub fn interrupt(mut self, stop: Option<&'t dyn Fn() -> bool>) -> Self {
        self.interrupt = stop;
        self
    }

    /// Runs the remaining steps (see the module docs).
    pub fn run(
        self,
        averager: &mut dyn Averager,
        observer: &mut dyn Observer,
        checkpoint: &mut dyn Checkpoint,
    ) -> Result<Outcome> {
        self.schedule.check()?;
        let Driver {
            trainer,
            schedule: s,
            mut seconds,
            stop_after,
            interrupt,
        } = self;
        let mut last_eval: Option<Evaluation> = None;
        let mut done_here = 0;
        let mut t0 = std::time::Instant::now();
        while trainer.counters().step < s.steps {
            tch::manual_seed(step_seed(s.seed, trainer.counters().step));
            let st = trainer.step(&mut AverageHook(averager));
            done_here += 1;
            let step = trainer.counters().step;
            if s.eval_every > 0 && step % s.eval_every == 0 && step < s.steps {
                averager.swap_in();
                let (ev, samples) = trainer.evaluate(s.eval_n, s.eval_chunk);
                averager.swap_out();
                observer.on_eval(
                    &EvalRecord {
                        step,
                        eval: ev.clone(),
                    },
                    &samples,
                )?;
                last_eval = Some(ev);
            }
            if step % s.log_every == 0 || step == s.steps {
                observer.on_step(&StepRecord {
                    step,
                    loss: st.loss,
                    skipped: st.skipped,
                    kept: st.kept,
                    grad_norm: st.grad_norm,
                    lr: st.lr,
                    seconds: seconds + t0.elapsed().as_secs_f64(),
                    skipped_steps: trainer.counters().skipped,
                    filtered_samples: trainer.counters().filtered,
                })?;
            }
            let rate = done_here as f64 / t0.elapsed().as_secs_f64().max(1e-9);
            observer.on_progress(&st, last_eval.as_ref(), rate);
            if step % s.checkpoint_every == 0 || step == s.steps {
                seconds += t0.elapsed().as_secs_f64();
                t0 = std::time::Instant::now();
                checkpoint.save(&*trainer, averager, seconds)?;
            }
            let stop = stop_after.is_some_and(|n| done_here >= n) || interrupt.is_some_and(|f| f());
            if stop && step < s.steps {
                seconds += t0.elapsed().as_secs_f64();
                checkpoint.save(&*trainer, averager, seconds)?;
                return Ok(Outcome {
                    counters: trainer.counters().clone(),
                    seconds,
                    finished: false,
                });
            }
        }
        seconds += t0.elapsed().as_secs_f64();
        Ok(Outcome {
            counters: trainer.counters().clone(),
            seconds,
            finished: true,
        })
    }
}
