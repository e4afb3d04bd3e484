//! The run folder's files: checkpoints (one atomic tensor file with the counters inside,
//! plus a readable `checkpoint.json`), the metrics log and atomic writes.

use super::protocol::{FixedReference, SampleMetricsRecord};
use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use lv_core::driver::Learner;
use lv_core::driver::{Averager, Checkpoint, EvalRecord, Observer, StepRecord};
use lv_core::estimate::Evaluation;
use lv_core::train::{Counters, StepStats};
use lv_nets::checkpoint::{load_tensors, save_tensors_atomic};
use lv_nets::ema::Ema;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;
use tch::{nn::VarStore, Tensor};

/// Step counters and bookkeeping saved beside the tensors.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct CheckpointMeta {
    pub(crate) counters: Counters,
    pub(crate) ema_calls: u64,
    pub(crate) seconds: f64,
}

/// The training curve of a run folder: `metrics.jsonl` (one JSON line per [`StepRecord`]
/// and [`EvalRecord`]) and the progress bar.
pub(crate) struct MetricsFile<'b> {
    pub(crate) file: std::fs::File,
    pub(crate) bar: &'b ProgressBar,
    /// With the benchmark protocol: the fixed reference set and `sample_metrics.jsonl`.
    pub(crate) sample_metrics: Option<(&'b FixedReference, std::fs::File)>,
}

/// The benchmark metrics of the evaluations during training ([`SampleMetricsRecord`] lines).
pub(crate) const SAMPLE_METRICS: &str = "sample_metrics.jsonl";

/// Reads the [`SampleMetricsRecord`]s of a run folder (none if the file is absent; a line
/// that does not parse, as one cut short by a kill, is skipped).
pub(crate) fn read_sample_metrics(dir: &Path) -> Vec<SampleMetricsRecord> {
    std::fs::read_to_string(dir.join(SAMPLE_METRICS))
        .map(|t| {
            t.lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()
        })
        .unwrap_or_default()
}

impl Observer for MetricsFile<'_> {
    fn on_step(&mut self, r: &StepRecord) -> Result<()> {
        writeln!(self.file, "{}", serde_json::to_string(r)?)?;
        Ok(())
    }

    fn on_eval(&mut self, r: &EvalRecord, samples: &Tensor) -> Result<()> {
        writeln!(self.file, "{}", serde_json::to_string(r)?)?;
        if let Some((fixed, file)) = &mut self.sample_metrics {
            let rec = SampleMetricsRecord {
                step: r.step,
                metrics: fixed.metrics(samples)?,
            };
            writeln!(file, "{}", serde_json::to_string(&rec)?)?;
        }
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
pub(crate) struct FolderCheckpoint<'b> {
    pub(crate) vs: &'b VarStore,
    pub(crate) ckpt: &'b Path,
    pub(crate) meta_path: &'b Path,
}

impl Checkpoint for FolderCheckpoint<'_> {
    fn save(&mut self, trainer: &dyn Learner, averager: &dyn Averager, seconds: f64) -> Result<()> {
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

pub(crate) fn save_checkpoint(
    vs: &VarStore,
    trainer: &dyn Learner,
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
    named.extend(trainer.state());
    named.push((
        "meta.step".into(),
        Tensor::from(trainer.counters().step as i64),
    ));
    let meta = CheckpointMeta {
        counters: trainer.counters().clone(),
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
pub(crate) const META_TENSOR: &str = "meta.json";

/// The tensors and counters of the run folder `dir`'s checkpoint.
pub(crate) fn read_checkpoint(dir: &Path) -> Result<(Vec<(String, Tensor)>, CheckpointMeta)> {
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
pub(crate) fn checkpoint_meta(
    tensors: &[(String, Tensor)],
    meta_path: &Path,
) -> Result<CheckpointMeta> {
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

/// Drops the lines of `metrics.jsonl` (or `sample_metrics.jsonl`) logged after `step` (a run killed after its last
/// checkpoint logged steps that the resumed run repeats). Rewritten atomically.
pub(crate) fn truncate_metrics(path: &Path, step: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let mut kept = String::with_capacity(text.len());
    let mut dropped = false;
    /// The step of any record line.
    #[derive(Deserialize)]
    struct Stepped {
        step: u64,
    }
    for line in text.lines() {
        let line_step = serde_json::from_str::<Stepped>(line).ok().map(|s| s.step);
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

pub(crate) fn restore(
    vs: &VarStore,
    trainer: &mut dyn Learner,
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
    // The optimiser state, the counters and what depends on them (the clip schedule).
    trainer.restore(tensors, meta.counters.clone())
}

/// Writes `bytes` to `path` atomically (temporary file, then rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}
