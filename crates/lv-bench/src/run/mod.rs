//! `lv train`, `lv eval`, `lv sample`: build a run from a validated config, train with
//! checkpoints and an EMA, evaluate (log Z, ESS, sample metrics) and write the run folder:
//!
//! ```text
//! RUN/config.toml            the resolved configuration
//! RUN/checkpoint.safetensors model, EMA shadow, Adam state and the step counters (one
//!                            atomic rename: the whole checkpoint)
//! RUN/checkpoint.json        a readable copy of the counters (written after; resume trusts
//!                            the tensor file's copy, so a kill between the two is harmless)
//! RUN/metrics.jsonl          the training curve
//! RUN/sample_metrics.jsonl   the benchmark metrics of every evaluation during training
//!                            (`eval.protocol = "fixed_reference"` only)
//! RUN/results.json           the final evaluation
//! RUN/samples.npy            terminal samples of the final evaluation
//! ```
//!
//! Determinism: torch's generator is re-seeded at every step from (seed, step), so a run
//! resumed from a checkpoint draws exactly the noises of an uninterrupted one.

use crate::config::{Resolved, RunConfig};

mod build;
mod evaluate;
mod folder;
mod protocol;
mod results;

pub(crate) use build::{annealed_trainer, controls_of};
pub use build::{build, Built, Sampler};
pub(crate) use evaluate::evaluate_run;
pub use evaluate::{
    reference_samples, reference_stds, sample_metrics, to_array, StdReference,
    STD_REFERENCE_SAMPLES,
};
pub use folder::write_atomic;
pub(crate) use folder::{
    read_checkpoint, restore, truncate_metrics, CheckpointMeta, FolderCheckpoint, MetricsFile,
    SAMPLE_METRICS,
};
pub use protocol::{
    FixedReference, PeriodicMetrics, Protocol, SampleMetricsRecord, MEAN_WINDOW, NOISE_FLOOR_DRAWS,
    REFERENCE_SET_SEED,
};
pub use results::{Metric, RunResults};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use lv_core::driver::{Driver, Learner, Schedule};
use lv_core::train::Trainer;
use lv_nets::ema::Ema;
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

/// Arguments of `lv train`.
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// TOML configuration: a full run config, or a preset (`configs/<preset>.toml`) with
    /// `--row`.
    #[arg(long, required_unless_present = "resume")]
    pub config: Option<PathBuf>,
    /// The row of a preset file: `<method>-<loss>-<target>` (e.g. `pis-lv-gmm9`).
    #[arg(long, requires = "config")]
    pub row: Option<String>,
    /// Override a key: `--set train.steps=500` (repeatable).
    #[arg(long = "set")]
    pub set: Vec<String>,
    /// Run folder (default: `runs/<method>-<loss>-<target>-seed<seed>`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in this folder from its last checkpoint.
    #[arg(long, conflicts_with = "config")]
    pub resume: Option<PathBuf>,
    /// Stop after this many steps of this invocation (for tests of resuming).
    #[arg(long, hide = true)]
    pub stop_after: Option<usize>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Global flags that override a run config when given.
#[derive(Clone, Copy, Debug, Default)]
pub struct Overrides {
    pub device: Option<lv_nets::DeviceChoice>,
    pub threads: Option<usize>,
    pub seed: Option<u64>,
}

impl Overrides {
    fn apply(&self, cfg: &mut RunConfig) {
        if let Some(d) = self.device {
            cfg.device = d;
        }
        if let Some(t) = self.threads {
            cfg.threads = t;
        }
        if let Some(s) = self.seed {
            cfg.seed = s;
        }
    }
}

/// The run folder of a config when none is given: `runs/<method>-<loss>-<target>-seed<seed>`
/// (a `:` of a registered target's name, such as `py:gauss`, becomes `_`).
pub fn default_run_dir(cfg: &RunConfig) -> PathBuf {
    PathBuf::from(format!(
        "runs/{}-{}-{}-seed{}",
        cfg.method,
        cfg.loss,
        cfg.target.replace(':', "_"),
        cfg.seed
    ))
}

/// `lv train`.
pub fn train(args: &TrainArgs, ov: &Overrides) -> Result<PathBuf> {
    let (cfg, dir, resume) = match &args.resume {
        Some(dir) => {
            let mut cfg = RunConfig::load(&dir.join("config.toml"), &args.set)?;
            // Only device and threads may change on resume (the seed fixes the noises).
            cfg.device = ov.device.unwrap_or(cfg.device);
            cfg.threads = ov.threads.unwrap_or(cfg.threads);
            (cfg, dir.clone(), true)
        }
        None => {
            let path = args.config.as_ref().expect("clap requires --config");
            let mut cfg = crate::preset::load_run_config(path, args.row.as_deref(), &args.set)?;
            ov.apply(&mut cfg);
            let dir = args.out.clone().unwrap_or_else(|| default_run_dir(&cfg));
            (cfg, dir, false)
        }
    };
    train_in(
        cfg,
        &dir,
        resume,
        &TrainOptions {
            stop_after: args.stop_after,
            quiet: args.quiet,
            interrupt: None,
        },
    )?;
    Ok(dir)
}

/// How [`train_in`] runs, beyond the config.
#[derive(Default)]
pub struct TrainOptions<'a> {
    /// Stop after this many steps of this invocation (with a checkpoint).
    pub stop_after: Option<usize>,
    /// No progress bar and no results on stdout.
    pub quiet: bool,
    /// Asked after every step; `true` stops the run with a checkpoint
    /// ([`lv_core::driver::Driver::interrupt`]).
    pub interrupt: Option<&'a dyn Fn() -> bool>,
}

/// Trains `cfg` in the run folder `dir` (a new run, or with `resume` the folder's own run from
/// its checkpoint), then evaluates it; returns the final results, or `None` when the run
/// stopped early (`stop_after`, `interrupt`), its checkpoint then being valid for `--resume`.
/// This is `lv train` without the command line, for the library and the Python package.
pub fn train_in(
    cfg: RunConfig,
    dir: &Path,
    resume: bool,
    opts: &TrainOptions<'_>,
) -> Result<Option<RunResults>> {
    let dir = dir.to_path_buf();
    let res = cfg.validate()?;
    res.runtime.install();
    if resume && !dir.join("checkpoint.safetensors").exists() {
        bail!(
            "{} has no checkpoint to resume from (checkpoint.safetensors)",
            dir.display()
        );
    }
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating run folder {}", dir.display()))?;
    // One writer per folder, held until this process exits.
    let _lock = crate::lock::lock_run(&dir)?;
    if !resume {
        for f in ["config.toml", "checkpoint.safetensors"] {
            if dir.join(f).exists() {
                bail!(
                    "run folder {} already holds a run ({f}); continue it with `lv train --resume {}`, or train into another --out",
                    dir.display(),
                    dir.display()
                );
            }
        }
        let text = toml::to_string_pretty(&res.cfg)?;
        write_atomic(&dir.join("config.toml"), text.as_bytes())?;
    }
    tch::manual_seed(res.runtime.seed as i64);
    let built = build(&res)?;
    train_built(&res, &built, &dir, resume, opts)
}

fn train_built(
    res: &Resolved,
    b: &Built,
    dir: &Path,
    resume: bool,
    opts: &TrainOptions<'_>,
) -> Result<Option<RunResults>> {
    let quiet = opts.quiet;
    let cfg = &res.cfg;
    let mut diffusion;
    let mut annealed;
    let trainer: &mut dyn Learner = match &b.sampler {
        Sampler::Diffusion(method) => {
            let mut settings = cfg.train.clone();
            settings.max_rnd = settings.max_rnd.filter(|_| res.loss.detached());
            let t = Trainer::new(
                method,
                b.target.as_ref(),
                controls_of(b),
                res.loss,
                settings,
                b.device,
                None,
            );
            diffusion = match &b.potential {
                Some(p) if cfg.train.subtraj.is_some() => t.with_potential(p.as_ref())?,
                _ => t,
            };
            &mut diffusion
        }
        Sampler::Annealed { parts, betas } => {
            annealed = build::annealed_trainer(b, parts, betas, res.loss)?;
            &mut annealed
        }
    };
    let mut ema = Ema::from_var_store(&b.vs, &cfg.ema, cfg.train.steps as u64)?;
    let mut seconds = 0.0;
    let ckpt = dir.join("checkpoint.safetensors");
    let meta_path = dir.join("checkpoint.json");
    if resume {
        let (tensors, meta) = read_checkpoint(dir)?;
        restore(&b.vs, trainer, &mut ema, &tensors, &meta)?;
        // Re-sync the readable copy (stale if the kill fell between the two renames) and
        // forget the training curve past the checkpoint.
        write_atomic(&meta_path, serde_json::to_string_pretty(&meta)?.as_bytes())?;
        truncate_metrics(&dir.join("metrics.jsonl"), meta.counters.step)?;
        truncate_metrics(&dir.join(SAMPLE_METRICS), meta.counters.step)?;
        seconds = meta.seconds;
        eprintln!(
            "resuming {} at step {}",
            dir.display(),
            trainer.counters().step
        );
    } else {
        let _ = std::fs::remove_file(dir.join("metrics.jsonl"));
        let _ = std::fs::remove_file(dir.join(SAMPLE_METRICS));
    }
    let fixed = match cfg.eval.protocol {
        Protocol::FixedReference => {
            Some(FixedReference::new(b.target.as_ref(), cfg.eval.n_metrics)?)
        }
        Protocol::Fresh => None,
    };
    let total = cfg.train.steps;
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total as u64)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .expect("valid template"),
    );
    bar.set_position(trainer.counters().step as u64);
    let metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("metrics.jsonl"))?;
    let sample_metrics = match &fixed {
        Some(f) => Some((
            f,
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(SAMPLE_METRICS))?,
        )),
        None => None,
    };
    let mut sink = MetricsFile {
        file: metrics,
        bar: &bar,
        sample_metrics,
    };
    let mut store = FolderCheckpoint {
        vs: &b.vs,
        ckpt: &ckpt,
        meta_path: &meta_path,
    };
    let schedule = Schedule {
        steps: total,
        seed: res.runtime.seed,
        eval_every: cfg.eval.every,
        eval_n: cfg.eval.n_during,
        eval_chunk: cfg.eval.chunk,
        log_every: cfg.log_every,
        checkpoint_every: cfg.checkpoint_every,
    };
    let outcome = Driver::new(trainer, schedule)
        .resumed_seconds(seconds)
        .stop_after(opts.stop_after)
        .interrupt(opts.interrupt)
        .run(&mut ema, &mut sink, &mut store)?;
    if !outcome.finished {
        bar.abandon();
        return Ok(None);
    }
    bar.finish();
    drop(sink);
    ema.swap_in();
    let results = evaluate_run(res, b, dir, outcome.seconds, &outcome.counters, true)?;
    ema.swap_out();
    if !quiet {
        println!("{}", serde_json::to_string_pretty(&results)?);
    }
    Ok(Some(results))
}

/// Arguments of `lv eval`.
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// The run folder.
    pub run: PathBuf,
    /// Override a key of the run's config (e.g. `eval.n=20000`); training keys have no effect, except `train.native_eval`.
    #[arg(long = "set")]
    pub set: Vec<String>,
}

/// Arguments of `lv sample`.
#[derive(clap::Args, Debug)]
pub struct SampleArgs {
    /// The run folder.
    pub run: PathBuf,
    /// Number of samples.
    #[arg(short = 'n', long, default_value_t = 10_000)]
    pub n: usize,
    /// Output file (.npy, float32 [n, d]).
    #[arg(long)]
    pub out: PathBuf,
}

/// Loads a finished or interrupted run with its EMA weights in the model and the clip
/// schedule it had reached applied to the controls.
fn open_run(
    dir: &Path,
    set: &[String],
    ov: &Overrides,
) -> Result<(Resolved, Built, CheckpointMeta)> {
    let mut cfg = RunConfig::load(&dir.join("config.toml"), set)?;
    cfg.device = ov.device.unwrap_or(cfg.device);
    cfg.threads = ov.threads.unwrap_or(cfg.threads);
    let res = cfg.validate()?;
    res.runtime.install();
    let built = build(&res)?;
    let (tensors, meta) = read_checkpoint(dir)?;
    let ema: Vec<(String, Tensor)> = tensors
        .iter()
        .filter_map(|(k, t)| {
            k.strip_prefix("ema.")
                .map(|s| (s.to_string(), t.shallow_clone()))
        })
        .collect();
    lv_nets::checkpoint::load_into_var_store(&built.vs, &ema).context("loading the EMA weights")?;
    // The clip values the run had reached (its trainer applies the same schedule after every
    // step, and a resumed run from its counters): the function its final evaluation used.
    if let Sampler::Diffusion(_) = &built.sampler {
        let f = res.cfg.train.clip_factor_after(meta.counters.successful);
        built.u.set_clip_factor(f);
        if let Some(v) = &built.v {
            v.set_clip_factor(f);
        }
    }
    Ok((res, built, meta))
}

/// `lv eval RUN`: evaluates the run's EMA weights again and rewrites results.json. While a
/// trainer holds the folder ([`crate::lock`]), it evaluates the latest checkpoint, prints the
/// results and writes nothing into the folder (its results belong to the trainer).
pub fn eval(args: &EvalArgs, ov: &Overrides) -> Result<()> {
    let results = evaluate_folder(&args.run, &args.set, ov)?;
    println!("{}", serde_json::to_string_pretty(&results)?);
    Ok(())
}

/// `lv eval` without the command line: evaluates the EMA weights of the run in `run` and
/// rewrites its results.json (unless a trainer holds the folder); returns the results.
pub fn evaluate_folder(run: &Path, set: &[String], ov: &Overrides) -> Result<RunResults> {
    if !run.join("config.toml").exists() {
        bail!("{} is not a run folder (no config.toml)", run.display());
    }
    let lock = crate::lock::lock_run(run).ok();
    let (res, built, meta) = open_run(run, set, ov)?;
    if lock.is_none() {
        eprintln!(
            "{} is being trained: evaluating its checkpoint at step {} without writing into the folder",
            run.display(),
            meta.counters.step
        );
    }
    evaluate_run(
        &res,
        &built,
        run,
        meta.seconds,
        &meta.counters,
        lock.is_some(),
    )
}

/// `lv sample RUN -n N --out FILE.npy`.
pub fn sample(args: &SampleArgs, ov: &Overrides) -> Result<()> {
    let x = sample_folder(&args.run, args.n, ov)?;
    ndarray_npy::write_npy(&args.out, &x.mapv(|v| v as f32))
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "wrote {} samples of dimension {} to {}",
        x.nrows(),
        x.ncols(),
        args.out.display()
    );
    Ok(())
}

/// `lv sample` without the command line: `n` terminal samples `[n, d]` of the run in `run`
/// (its checkpoint's weights; seeded by `ov.seed`, else the run's seed).
pub fn sample_folder(run: &Path, n: usize, ov: &Overrides) -> Result<ndarray::Array2<f64>> {
    if n == 0 || n > lv_core::check::MAX_COUNT {
        bail!("-n must be in [1, {}] (got {n})", lv_core::check::MAX_COUNT);
    }
    if !run.join("config.toml").exists() {
        bail!("{} is not a run folder (no config.toml)", run.display());
    }
    let (res, built, _) = open_run(run, &[], ov)?;
    let d = built.target.dim();
    crate::memory::ensure_fits(
        &format!("{} samples of dimension {d}", n),
        (n as u64).saturating_mul(d as u64).saturating_mul(24),
        "lower -n",
    )?;
    tch::manual_seed(ov.seed.unwrap_or(res.runtime.seed) as i64);
    let d = d as i64;
    let mut parts = Vec::new();
    let mut done = 0;
    while done < n {
        let m = (n - done).min(res.cfg.eval.chunk) as i64;
        let x = match &built.sampler {
            Sampler::Diffusion(method) => {
                let x0 = method.prior.sample(m, d, built.device);
                let out = tch::no_grad(|| {
                    lv_core::sim::simulate(
                        method,
                        built.target.as_ref(),
                        controls_of(&built),
                        &x0,
                        lv_core::sim::SimOptions::new(lv_core::sim::Mode::EvalNoIto),
                    )
                });
                out.x_final
            }
            Sampler::Annealed { parts: a, betas } => {
                let tr = build::annealed_trainer(&built, a, betas, res.loss)?;
                tr.evaluate_plain(m as usize, m as usize).1
            }
        };
        parts.push(x.to_device(Device::Cpu));
        done += m as usize;
    }
    to_array(&Tensor::cat(&parts, 0))
}
