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
//! RUN/results.json           the final evaluation
//! RUN/samples.npy            terminal samples of the final evaluation
//! ```
//!
//! Determinism: torch's generator is re-seeded at every step from (seed, step), so a run
//! resumed from a checkpoint draws exactly the noises of an uninterrupted one.

use crate::config::{Resolved, RunConfig};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use lv_core::driver::{
    step_seed, Averager, Checkpoint, Driver, EvalRecord, Observer, Schedule, StepRecord,
};
use lv_core::estimate::Evaluation;
use lv_core::method::{Method, MethodKind};
use lv_core::sim::Controls;
use lv_core::train::{Counters, StepStats, Trainer};
use lv_core::{Control, Target};
use lv_nets::checkpoint::{load_tensors, save_tensors_atomic};
use lv_nets::ctrl::{
    ClippedCtrl, ControlKind, LerpCtrl, LerpPriorCtrl, LerpTargetCtrl, PotentialCtrl, ScoreCtrl,
};
use lv_nets::ema::Ema;
use lv_nets::select_device;
use ndarray::Array2;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use tch::{nn::VarStore, Device, Kind, Tensor};

/// Everything a run needs, built from a [`Resolved`] config.
pub struct Built {
    pub vs: VarStore,
    pub method: Method,
    pub target: Box<dyn Target>,
    pub u: Box<dyn Control>,
    pub v: Option<Box<dyn Control>>,
    /// The potential Φ of `u` when `control = "potential"` (sub-trajectory training).
    pub potential: Option<Rc<PotentialCtrl>>,
    pub device: Device,
}

/// Builds method, target and controls.
pub fn build(res: &Resolved) -> Result<Built> {
    let cfg = &res.cfg;
    let device = select_device(cfg.device)?;
    let target = lv_targets::by_name(&cfg.target)?;
    let method = Method::from_kind(res.method, cfg.sde.steps)?;
    let vs = VarStore::new(device);
    let d = target.dim() as i64;
    let sde = method.sde;
    let t_end = method.grid.t_end();
    let sigma = move || -> lv_nets::ctrl::SigmaFn { std::sync::Arc::new(move |t| sde.sigma(t)) };
    let root = vs.root();
    let mut potential = None;
    let (u, v): (Box<dyn Control>, Option<Box<dyn Control>>) = match (res.method, res.control) {
        (MethodKind::Dis, ControlKind::Potential) => {
            let p = Rc::new(PotentialCtrl::new(&(&root / "u"), d, &cfg.model, sigma()));
            potential = Some(p.clone());
            (Box::new(p), None)
        }
        (MethodKind::Bridge, _) => (
            Box::new(LerpTargetCtrl::new(
                &(&root / "u"),
                d,
                &cfg.model,
                sigma(),
                t_end,
            )),
            Some(Box::new(LerpPriorCtrl::new(
                &(&root / "v"),
                d,
                &cfg.model,
                sigma(),
                t_end,
                1.0,
            ))),
        ),
        (_, ControlKind::Clipped) => (
            Box::new(ClippedCtrl::new(&(&root / "u"), d, &cfg.model)),
            None,
        ),
        _ => match res.method {
            MethodKind::Pis | MethodKind::Dds | MethodKind::DdsExp => (
                Box::new(ScoreCtrl::new(&(&root / "u"), d, &cfg.model)),
                None,
            ),
            MethodKind::Dis => (
                Box::new(LerpCtrl::new(
                    &(&root / "u"),
                    d,
                    &cfg.model,
                    sigma(),
                    t_end,
                    1.0,
                )),
                None,
            ),
            MethodKind::Bridge => unreachable!("the bridge is matched above"),
        },
    };
    Ok(Built {
        vs,
        method,
        target,
        u,
        v,
        potential,
        device,
    })
}

/// Step counters and bookkeeping saved beside the tensors.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct CheckpointMeta {
    counters: Counters,
    ema_calls: u64,
    seconds: f64,
}

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
            let dir = args.out.clone().unwrap_or_else(|| {
                PathBuf::from(format!(
                    "runs/{}-{}-{}-seed{}",
                    cfg.method, cfg.loss, cfg.target, cfg.seed
                ))
            });
            (cfg, dir, false)
        }
    };
    let res = cfg.validate()?;
    lv_nets::set_threads(res.cfg.threads);
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
    tch::manual_seed(res.cfg.seed as i64);
    let built = build(&res)?;
    train_built(&res, &built, &dir, resume, args.stop_after, args.quiet)?;
    Ok(dir)
}

fn train_built(
    res: &Resolved,
    b: &Built,
    dir: &Path,
    resume: bool,
    stop_after: Option<usize>,
    quiet: bool,
) -> Result<()> {
    let cfg = &res.cfg;
    let controls = controls_of(b);
    let settings_subtraj = cfg.train.subtraj.is_some();
    let mut settings = cfg.train.clone();
    // The batch of lv_traj is B·K; the trainer draws B = batch / K initial points.
    settings.max_rnd = settings.max_rnd.filter(|_| res.loss.detached());
    let trainer = Trainer::new(
        &b.method,
        b.target.as_ref(),
        controls,
        res.loss,
        settings,
        b.device,
        None,
    );
    let mut trainer = match &b.potential {
        Some(p) if settings_subtraj => trainer.with_potential(p.as_ref())?,
        _ => trainer,
    };
    let mut ema = Ema::from_var_store(&b.vs, &cfg.ema, cfg.train.steps as u64);
    let mut seconds = 0.0;
    let ckpt = dir.join("checkpoint.safetensors");
    let meta_path = dir.join("checkpoint.json");
    if resume {
        let (tensors, meta) = read_checkpoint(dir)?;
        restore(&b.vs, &mut trainer, &mut ema, &tensors, &meta)?;
        // Re-sync the readable copy (stale if the kill fell between the two renames) and
        // forget the training curve past the checkpoint.
        write_atomic(&meta_path, serde_json::to_string_pretty(&meta)?.as_bytes())?;
        truncate_metrics(&dir.join("metrics.jsonl"), meta.counters.step)?;
        trainer.counters = meta.counters.clone();
        trainer.apply_clip_schedule();
        seconds = meta.seconds;
        eprintln!(
            "resuming {} at step {}",
            dir.display(),
            trainer.counters.step
        );
    } else {
        let _ = std::fs::remove_file(dir.join("metrics.jsonl"));
    }
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
    bar.set_position(trainer.counters.step as u64);
    let metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("metrics.jsonl"))?;
    let mut sink = MetricsFile {
        file: metrics,
        bar: &bar,
    };
    let mut store = FolderCheckpoint {
        vs: &b.vs,
        ckpt: &ckpt,
        meta_path: &meta_path,
    };
    let schedule = Schedule {
        steps: total,
        seed: cfg.seed,
        eval_every: cfg.eval.every,
        eval_n: cfg.eval.n_during,
        eval_chunk: cfg.eval.chunk,
        log_every: cfg.log_every,
        checkpoint_every: cfg.checkpoint_every,
    };
    let outcome = Driver::new(&mut trainer, schedule)
        .resumed_seconds(seconds)
        .stop_after(stop_after)
        .run(&mut ema, &mut sink, &mut store)?;
    if !outcome.finished {
        bar.abandon();
        return Ok(());
    }
    bar.finish();
    drop(sink);
    drop(trainer);
    ema.swap_in();
    let results = evaluate_run(res, b, dir, outcome.seconds, &outcome.counters, true)?;
    ema.swap_out();
    if !quiet {
        println!("{}", serde_json::to_string_pretty(&results)?);
    }
    Ok(())
}

/// The training curve of a run folder: `metrics.jsonl` (one JSON line per [`StepRecord`]
/// and [`EvalRecord`]) and the progress bar.
struct MetricsFile<'b> {
    file: std::fs::File,
    bar: &'b ProgressBar,
}

impl Observer for MetricsFile<'_> {
    fn on_step(&mut self, r: &StepRecord) -> Result<()> {
        writeln!(self.file, "{}", serde_json::to_string(r)?)?;
        Ok(())
    }

    fn on_eval(&mut self, r: &EvalRecord) -> Result<()> {
        writeln!(self.file, "{}", serde_json::to_string(r)?)?;
        Ok(())
    }

    fn on_progress(&mut self, st: &StepStats, last: Option<&Evaluation>, rate: f64) {
        let (lz, ess) = last.map_or((f64::NAN, f64::NAN), |e| (e.log_z_is, e.ess));
        self.bar.set_position(st.step as u64);
        self.bar.set_message(format!(
            "loss {:.3e}  logZ {:.3}  ESS {:.3}  {:.1} steps/s",
            st.loss, lz, ess, rate
        ));
    }
}

/// Checkpoints of a run folder: `checkpoint.safetensors` and its readable copy
/// `checkpoint.json` (see the module docs).
struct FolderCheckpoint<'b> {
    vs: &'b VarStore,
    ckpt: &'b Path,
    meta_path: &'b Path,
}

impl Checkpoint for FolderCheckpoint<'_> {
    fn save(&mut self, trainer: &Trainer<'_>, averager: &dyn Averager, seconds: f64) -> Result<()> {
        save_checkpoint(
            self.vs,
            trainer,
            averager,
            self.ckpt,
            self.meta_path,
            seconds,
        )
    }
}

fn save_checkpoint(
    vs: &VarStore,
    trainer: &Trainer<'_>,
    averager: &dyn Averager,
    ckpt: &Path,
    meta_path: &Path,
    seconds: f64,
) -> Result<()> {
    let mut named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(k, t)| (format!("model.{k}"), t))
        .collect();
    let (shadow, ema_calls) = averager.state();
    named.extend(shadow.into_iter().map(|(k, t)| (format!("ema.{k}"), t)));
    named.extend(trainer.adam.state());
    if let Some(c) = &trainer.log_z {
        named.push(("log_z".into(), c.shallow_clone()));
    }
    named.push((
        "meta.step".into(),
        Tensor::from(trainer.counters.step as i64),
    ));
    let meta = CheckpointMeta {
        counters: trainer.counters.clone(),
        ema_calls,
        seconds,
    };
    let json = serde_json::to_string_pretty(&meta)?;
    // The counters travel inside the (atomically renamed) tensor file, so the one file is a
    // consistent checkpoint on its own; checkpoint.json is a readable copy written after it.
    // A kill between the two renames leaves a stale checkpoint.json, which resume ignores.
    named.push((META_TENSOR.into(), Tensor::from_slice(json.as_bytes())));
    save_tensors_atomic(ckpt, &named)?;
    write_atomic(meta_path, json.as_bytes())
}

/// Name of the u8 tensor holding the [`CheckpointMeta`] JSON inside the tensor file.
const META_TENSOR: &str = "meta.json";

/// The tensors and counters of the run folder `dir`'s checkpoint.
fn read_checkpoint(dir: &Path) -> Result<(Vec<(String, Tensor)>, CheckpointMeta)> {
    let ckpt = dir.join("checkpoint.safetensors");
    if !ckpt.exists() {
        bail!("{} has no checkpoint ({})", dir.display(), ckpt.display());
    }
    let tensors = load_tensors(&ckpt)?;
    let meta = checkpoint_meta(&tensors, &dir.join("checkpoint.json"))?;
    Ok((tensors, meta))
}

/// The checkpoint's counters: from the tensor file's embedded JSON when present (it is
/// written in the same atomic rename as the tensors), else from `checkpoint.json` (files
/// written before the counters were embedded).
fn checkpoint_meta(tensors: &[(String, Tensor)], meta_path: &Path) -> Result<CheckpointMeta> {
    if let Some((_, t)) = tensors.iter().find(|(k, _)| k == META_TENSOR) {
        let bytes = Vec::<u8>::try_from(t).context("reading the checkpoint's meta.json tensor")?;
        return serde_json::from_slice(&bytes).context("parsing the checkpoint's meta.json tensor");
    }
    serde_json::from_str(
        &std::fs::read_to_string(meta_path)
            .with_context(|| format!("reading {}", meta_path.display()))?,
    )
    .with_context(|| format!("parsing {}", meta_path.display()))
}

/// Drops the lines of `metrics.jsonl` logged after `step` (a run killed after its last
/// checkpoint logged steps that the resumed run repeats). Rewritten atomically.
fn truncate_metrics(path: &Path, step: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let mut kept = String::with_capacity(text.len());
    let mut dropped = false;
    for line in text.lines() {
        let line_step = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v["step"].as_u64());
        match line_step {
            Some(s) if s as usize > step => dropped = true,
            // A line cut short by the kill does not parse: drop it too.
            None => dropped = true,
            Some(_) => {
                kept.push_str(line);
                kept.push('\n');
            }
        }
    }
    if dropped {
        write_atomic(path, kept.as_bytes())?;
    }
    Ok(())
}

fn restore(
    vs: &VarStore,
    trainer: &mut Trainer<'_>,
    ema: &mut Ema,
    tensors: &[(String, Tensor)],
    meta: &CheckpointMeta,
) -> Result<()> {
    let step = tensors
        .iter()
        .find(|(k, _)| k == "meta.step")
        .map(|(_, t)| t.int64_value(&[]) as usize)
        .context("checkpoint has no meta.step")?;
    if step != meta.counters.step {
        bail!(
            "checkpoint tensors are at step {step} but checkpoint.json says {}",
            meta.counters.step
        );
    }
    let strip = |prefix: &str| -> Vec<(String, Tensor)> {
        tensors
            .iter()
            .filter_map(|(k, t)| {
                k.strip_prefix(prefix)
                    .map(|s| (s.to_string(), t.shallow_clone()))
            })
            .collect()
    };
    lv_nets::checkpoint::load_into_var_store(vs, &strip("model."))?;
    ema.load_shadow(&strip("ema."))?;
    ema.set_calls(meta.ema_calls);
    trainer.adam.load_state(tensors)?;
    if let Some(c) = &trainer.log_z {
        let src = tensors
            .iter()
            .find(|(k, _)| k == "log_z")
            .context("checkpoint has no log_z")?;
        tch::no_grad(|| c.shallow_clone().copy_(&src.1));
    }
    // Re-apply the clip schedule reached so far (counters are restored by the caller first).
    Ok(())
}

/// Writes `bytes` to `path` atomically (temporary file, then rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// Converts a `[n, d]` tensor to an f64 ndarray.
pub fn to_array(t: &Tensor) -> Result<Array2<f64>> {
    let t = t.to_device(Device::Cpu).to_kind(Kind::Double).contiguous();
    let (n, d) = (t.size()[0] as usize, t.size()[1] as usize);
    let v = Vec::<f64>::try_from(&t.view([-1]))?;
    Ok(Array2::from_shape_vec((n, d), v)?)
}

/// Reference samples of a target: fresh exact samples, or the shipped set.
pub fn reference_samples(target: &dyn Target, n: usize) -> Option<Result<Array2<f64>>> {
    if let Some(s) = target.sampler() {
        return Some(to_array(&s.sample(n as i64 as usize, Device::Cpu)));
    }
    target
        .reference_samples()
        .map(|r| r.and_then(|t| to_array(&t)))
}

fn controls_of(b: &Built) -> Controls<'_> {
    match &b.v {
        Some(v) => Controls::with_v(b.u.as_ref(), v.as_ref()),
        None => Controls::new(b.u.as_ref()),
    }
}

/// The final evaluation of a run with the weights currently in the VarStore (the caller
/// swaps the EMA weights in): log Z (IS, ELBO), ESS, sample metrics; with `write`, writes
/// results.json, samples.npy and the plots into `dir`.
fn evaluate_run(
    res: &Resolved,
    b: &Built,
    dir: &Path,
    seconds: f64,
    counters: &Counters,
    write: bool,
) -> Result<serde_json::Value> {
    let cfg = &res.cfg;
    tch::manual_seed(step_seed(cfg.seed, usize::MAX >> 1));
    let out = lv_core::estimate::evaluate(
        &b.method,
        b.target.as_ref(),
        controls_of(b),
        cfg.eval.n,
        cfg.eval.chunk,
        b.device,
    );
    let (ev, samples) = (out.estimates, out.samples);
    let all = to_array(&samples)?;
    if write {
        ndarray_npy::write_npy(dir.join("samples.npy"), &all.mapv(|v| v as f32))
            .with_context(|| format!("writing {}", dir.join("samples.npy").display()))?;
    }
    // Sample metrics use the finite samples only; the count of the others is reported.
    let finite: Vec<usize> = (0..all.nrows())
        .filter(|&i| all.row(i).iter().all(|v| v.is_finite()))
        .collect();
    let non_finite_samples = all.nrows() - finite.len();
    let x = all.select(ndarray::Axis(0), &finite);
    let mut out = serde_json::json!({
        "method": cfg.method, "loss": cfg.loss, "target": cfg.target, "seed": cfg.seed,
        "steps": counters.step, "batch": cfg.train.batch, "grid_steps": b.method.grid.steps(),
        "log_z_is": ev.log_z_is, "log_z_elbo": ev.log_z_elbo, "log_z_lb_ito": ev.log_z_lb_ito,
        "ess": ev.ess, "lv": ev.lv, "eval_n": ev.n, "eval_non_finite": ev.non_finite,
        "seconds": seconds, "skipped_steps": counters.skipped,
        "filtered_samples": counters.filtered, "target_evals": counters.target_evals,
    });
    let o = out.as_object_mut().expect("object");
    let log_z = b.target.log_z();
    o.insert("log_z_ref".into(), serde_json::json!(log_z));
    // Absolute and relative errors of the three estimates (spec §4):
    // abs = |p − log Z_ref|, rel = abs / (|log Z_ref| + 1e-8).
    for (key, p) in [
        ("is", ev.log_z_is),
        ("elbo", ev.log_z_elbo),
        ("lb_ito", ev.log_z_lb_ito),
    ] {
        let abs = log_z.map(|z| (p - z).abs());
        let rel = log_z.map(|z| (p - z).abs() / (z.abs() + 1e-8));
        o.insert(format!("log_z_error_{key}"), serde_json::json!(abs));
        o.insert(format!("rel_error_{key}"), serde_json::json!(rel));
    }
    o.insert(
        "non_finite_samples".into(),
        serde_json::json!(non_finite_samples),
    );
    if x.nrows() >= 2 {
        if let Some(m) = sample_metrics(b.target.as_ref(), &x, &cfg.eval, cfg.seed)? {
            o.extend(m);
        }
        let (stds, source) = reference_stds(b.target.as_ref())?;
        let se = lv_metrics::std_errors(x.view(), &stds)?;
        o.insert(
            "avg_marginal_stddev".into(),
            serde_json::json!(se.avg_marginal_stddev),
        );
        o.insert("avg_stddev".into(), serde_json::json!(se.avg_stddev));
        o.insert(
            "stddev_error_per_coordinate".into(),
            serde_json::json!(se.per_coordinate),
        );
        o.insert("stddev_reference".into(), serde_json::to_value(&source)?);
    }
    if let Some(centres) = b.target.mode_centres().filter(|_| x.nrows() > 0) {
        let c = Array2::from_shape_vec(
            (centres.len(), centres[0].len()),
            centres.iter().flatten().cloned().collect(),
        )?;
        let cov = lv_metrics::mode_coverage(x.view(), c.view(), None)?;
        o.insert("mode_coverage".into(), serde_json::to_value(&cov)?);
    }
    if write {
        write_atomic(
            &dir.join("results.json"),
            serde_json::to_string_pretty(&out)?.as_bytes(),
        )?;
        if x.nrows() > 0 {
            write_plots(cfg, b, &x, dir)?;
        }
    }
    Ok(out)
}

/// The sample metrics of model samples `x` against the target's reference (fresh exact
/// samples, or the shipped set), each on the number of samples its config key names: W2,
/// the debiased Sinkhorn divergence and the MMDs on `eval.n_metrics`, the sde_sampler
/// Sinkhorn on `eval.n_sinkhorn_sde` (spec §10: 1e5 against 1e5 fresh exact samples; the
/// streaming solver needs O(n·d) memory). Fresh reference samples number
/// max(n_metrics, n_sinkhorn_sde); each metric subsamples both sets (seeded, without
/// replacement) to its size, so a set smaller than the key gives a smaller size, which the
/// `metric_sizes` entry of the result records. `None` when the target has no reference.
pub fn sample_metrics(
    target: &dyn Target,
    x: &Array2<f64>,
    eval: &crate::config::EvalConfig,
    seed: u64,
) -> Result<Option<serde_json::Map<String, serde_json::Value>>> {
    let n_ref = eval.n_metrics.max(eval.n_sinkhorn_sde);
    let Some(reference) = reference_samples(target, n_ref) else {
        return Ok(None);
    };
    let reference = reference?;
    let opts = lv_metrics::ReportOptions {
        max_exact: eval.n_metrics,
        max_sinkhorn_div: eval.n_metrics,
        max_mmd: eval.n_metrics,
        max_sinkhorn_sde: eval.n_sinkhorn_sde,
        seed,
        particles: target.zero_com().map(|z| z.particles),
        ..Default::default()
    };
    let rep = lv_metrics::compute_report(x, &reference, &opts)?;
    match serde_json::to_value(&rep)? {
        serde_json::Value::Object(m) => Ok(Some(m)),
        _ => bail!("the metrics report is not a JSON object"),
    }
}

/// Where the s_k of the Δstd metrics come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StdReference {
    /// The target's exact stds ([`Target::marginal_stds`]).
    Exact,
    /// The unbiased std of `n` reference samples (exact samples with a fixed seed, or the
    /// whole shipped set).
    Samples { n: usize },
}

/// Exact samples drawn for the Δstd reference when the target knows no exact stds (spec §9:
/// 1e6), with a fixed seed so every run of a target compares against the same s_k.
pub const STD_REFERENCE_SAMPLES: usize = 1_000_000;
const STD_REFERENCE_SEED: i64 = 0x5EED_0057D;

/// The s_k of the Δstd metrics (spec §10): exact where the target knows them, else the
/// unbiased std of [`STD_REFERENCE_SAMPLES`] exact samples (fixed seed, drawn in chunks,
/// accumulated in f64), else of the shipped reference set. Errors when the target has none.
pub fn reference_stds(target: &dyn Target) -> Result<(Vec<f64>, StdReference)> {
    if let Some(s) = target.marginal_stds() {
        return Ok((s, StdReference::Exact));
    }
    let d = target.dim();
    if let Some(sampler) = target.sampler() {
        tch::manual_seed(STD_REFERENCE_SEED);
        let (mut sum, mut sq) = (vec![0.0f64; d], vec![0.0f64; d]);
        // Shifted sums (by the first chunk's mean) keep the variance accurate in f64.
        let mut shift: Option<Vec<f64>> = None;
        let chunk = 100_000;
        let mut done = 0;
        while done < STD_REFERENCE_SAMPLES {
            let m = chunk.min(STD_REFERENCE_SAMPLES - done);
            let x = to_array(&sampler.sample(m, Device::Cpu))?;
            let c = shift.get_or_insert_with(|| {
                x.mean_axis(ndarray::Axis(0))
                    .map(|v| v.to_vec())
                    .unwrap_or_else(|| vec![0.0; d])
            });
            for row in x.rows() {
                for k in 0..d {
                    let v = row[k] - c[k];
                    sum[k] += v;
                    sq[k] += v * v;
                }
            }
            done += m;
        }
        let n = STD_REFERENCE_SAMPLES as f64;
        let s = (0..d)
            .map(|k| ((sq[k] - sum[k] * sum[k] / n) / (n - 1.0)).max(0.0).sqrt())
            .collect();
        return Ok((
            s,
            StdReference::Samples {
                n: STD_REFERENCE_SAMPLES,
            },
        ));
    }
    match target.reference_samples() {
        Some(r) => {
            let r = to_array(&r?)?;
            let s = lv_metrics::marginals::unbiased_std(r.view())?.to_vec();
            Ok((s, StdReference::Samples { n: r.nrows() }))
        }
        None => bail!(
            "target `{}` has neither exact stds, an exact sampler nor reference samples",
            target.name()
        ),
    }
}

/// The sample plot (`samples.png`: density and samples for 2-D targets, first two marginals
/// against the reference otherwise) and the training curves (`curves.png`).
fn write_plots(cfg: &RunConfig, b: &Built, x: &Array2<f64>, dir: &Path) -> Result<()> {
    let title = format!(
        "{}-{}-{} seed {}",
        cfg.method, cfg.loss, cfg.target, cfg.seed
    );
    let dom = b.target.domain();
    if dom.len() >= 2 {
        let domain = [dom[0], dom[1]];
        if b.target.dim() == 2 {
            let target = b.target.as_ref();
            let log_density = |g: &Array2<f64>| -> Vec<f64> {
                let flat: Vec<f64> = g.iter().cloned().collect();
                let t = Tensor::from_slice(&flat)
                    .view([g.nrows() as i64, 2])
                    .to_kind(Kind::Float)
                    .to_device(b.device);
                let lp = tch::no_grad(|| target.log_density(&t))
                    .to_kind(Kind::Double)
                    .to_device(Device::Cpu);
                Vec::<f64>::try_from(&lp).unwrap_or_default()
            };
            crate::plots::plot_samples_2d(
                &dir.join("samples.png"),
                x,
                &log_density,
                domain,
                &title,
            )?;
        } else {
            let reference = match reference_samples(b.target.as_ref(), 2000) {
                Some(r) => Some(r?),
                None => None,
            };
            crate::plots::plot_marginals(
                &dir.join("samples.png"),
                x,
                reference.as_ref(),
                domain,
                &title,
            )?;
        }
    }
    let metrics = dir.join("metrics.jsonl");
    if metrics.exists() {
        crate::plots::plot_curves(&dir.join("curves.png"), &metrics)?;
    }
    Ok(())
}

/// Arguments of `lv eval`.
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// The run folder.
    pub run: PathBuf,
    /// Override a key of the run's config (e.g. `eval.n=20000`); training keys are ignored.
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

/// Loads a finished or interrupted run with its EMA weights in the model.
fn open_run(
    dir: &Path,
    set: &[String],
    ov: &Overrides,
) -> Result<(Resolved, Built, CheckpointMeta)> {
    let mut cfg = RunConfig::load(&dir.join("config.toml"), set)?;
    cfg.device = ov.device.unwrap_or(cfg.device);
    cfg.threads = ov.threads.unwrap_or(cfg.threads);
    let res = cfg.validate()?;
    lv_nets::set_threads(res.cfg.threads);
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
    Ok((res, built, meta))
}

/// `lv eval RUN`: evaluates the run's EMA weights again and rewrites results.json. While a
/// trainer holds the folder ([`crate::lock`]), it evaluates the latest checkpoint, prints the
/// results and writes nothing into the folder (its results belong to the trainer).
pub fn eval(args: &EvalArgs, ov: &Overrides) -> Result<()> {
    if !args.run.join("config.toml").exists() {
        bail!(
            "{} is not a run folder (no config.toml)",
            args.run.display()
        );
    }
    let lock = crate::lock::lock_run(&args.run).ok();
    let (res, built, meta) = open_run(&args.run, &args.set, ov)?;
    if lock.is_none() {
        eprintln!(
            "{} is being trained: evaluating its checkpoint at step {} without writing into the folder",
            args.run.display(),
            meta.counters.step
        );
    }
    let results = evaluate_run(
        &res,
        &built,
        &args.run,
        meta.seconds,
        &meta.counters,
        lock.is_some(),
    )?;
    println!("{}", serde_json::to_string_pretty(&results)?);
    Ok(())
}

/// `lv sample RUN -n N --out FILE.npy`.
pub fn sample(args: &SampleArgs, ov: &Overrides) -> Result<()> {
    if args.n == 0 || args.n > lv_core::check::MAX_COUNT {
        bail!(
            "-n must be in [1, {}] (got {})",
            lv_core::check::MAX_COUNT,
            args.n
        );
    }
    if !args.run.join("config.toml").exists() {
        bail!(
            "{} is not a run folder (no config.toml)",
            args.run.display()
        );
    }
    let (res, built, _) = open_run(&args.run, &[], ov)?;
    let d = built.target.dim();
    crate::memory::ensure_fits(
        &format!("{} samples of dimension {d}", args.n),
        (args.n as u64).saturating_mul(d as u64).saturating_mul(24),
        "lower -n",
    )?;
    tch::manual_seed(ov.seed.unwrap_or(res.cfg.seed) as i64);
    let d = d as i64;
    let mut parts = Vec::new();
    let mut done = 0;
    while done < args.n {
        let m = (args.n - done).min(res.cfg.eval.chunk) as i64;
        let x0 = built.method.prior.sample(m, d, built.device);
        let out = tch::no_grad(|| {
            lv_core::sim::simulate(
                &built.method,
                built.target.as_ref(),
                controls_of(&built),
                &x0,
                lv_core::sim::SimOptions::new(lv_core::sim::Mode::EvalNoIto),
            )
        });
        parts.push(out.x_final.to_device(Device::Cpu));
        done += m as usize;
    }
    let x = to_array(&Tensor::cat(&parts, 0))?;
    ndarray_npy::write_npy(&args.out, &x.mapv(|v| v as f32))
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "wrote {} samples of dimension {} to {}",
        args.n,
        d,
        args.out.display()
    );
    Ok(())
}
