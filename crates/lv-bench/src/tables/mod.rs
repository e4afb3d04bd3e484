//! `lv reproduce`: runs a table specification (data in `configs/tables/<table>.toml`) at a
//! preset (`configs/<preset>.toml`, rows `<method>-<loss>-<target>`, crate::preset) over
//! several seeds, and writes
//!
//! ```text
//! results/<table>/<preset>/<method>-<loss>-<target>-seed<s>/   one run folder per (row, seed)
//! results/<table>/summary.json, summary.csv                     one object per (row, seed)
//! docs/results/<table>-<preset>.md                              medians, spread, published values
//! ```
//!
//! Rows run as child processes (`lv train`), `--jobs` at a time. A row whose run folder
//! holds a `results.json` computed from the same resolved configuration (SHA-256 of the
//! resolved TOML, stored in `config.sha256`) is skipped, and so is a row recorded for that
//! configuration in `docs/results/<table>-<preset>-runs/` (the committed record of every
//! run's results, [`archive`]); an interrupted row resumes from its checkpoint. `--force`
//! recomputes.

use crate::config::RunConfig;
use crate::run::{write_atomic, Metric, Overrides};
use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use lv_core::driver::CurveLine;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod archive;
mod markdown;
mod slurm;
mod summary;

use markdown::render_markdown;
use slurm::emit_slurm;
use summary::collect;

/// A table specification.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    pub name: String,
    pub title: String,
    /// Where the published numbers come from.
    pub source: String,
    /// Result columns shown in the markdown table (results.json keys).
    pub metrics: Vec<Metric>,
    pub rows: Vec<RowSpec>,
}

/// One row: a (method, loss, target) cell with the published values beside it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowSpec {
    /// Which configuration of the row this is (e.g. `paper`: the LV variant of the paper the
    /// published number comes from; `ours`); shown as a column when any row has one.
    #[serde(default)]
    pub variant: Option<String>,
    pub method: String,
    pub loss: String,
    pub target: String,
    /// Metric convention note shown in the table.
    #[serde(default)]
    pub note: String,
    /// Published value of this cell (LV paper or the benchmark's LV number), by metric key.
    #[serde(default)]
    pub published: BTreeMap<String, f64>,
    /// Best published peer: method name and value, by metric key.
    #[serde(default)]
    pub peer: Option<Peer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    pub name: String,
    pub metric: String,
    pub value: f64,
}

#[derive(Args, Debug)]
pub struct ReproduceArgs {
    /// Table specification: `paper` or `benchmarks` (`configs/tables/<table>.toml`).
    #[arg(long, default_value = "paper")]
    pub table: String,
    /// Preset: `quick` (CPU, minutes), `cpu` (≤ 15 min per run on 2 cores) or `paper` (the
    /// papers' hyper-parameters, for a GPU or a Slurm array).
    #[arg(long, default_value = "quick")]
    pub preset: String,
    /// Seeds, comma-separated (default: 1,2,3 for quick, 1..5 for paper).
    #[arg(long, value_delimiter = ',')]
    pub seeds: Option<Vec<u64>>,
    /// Only rows whose `<method>-<loss>-<target>` contains one of these strings; an entry
    /// ending in `$` must equal the row (`pis-lv-mw5$` selects pis-lv-mw5, not pis-lv-mw50).
    #[arg(long, value_delimiter = ',')]
    pub rows: Option<Vec<String>>,
    /// Rows trained at the same time (child processes, one libtorch thread each).
    #[arg(long, default_value_t = 2)]
    pub jobs: usize,
    /// Recompute rows that already have results.
    #[arg(long)]
    pub force: bool,
    /// Results folder.
    #[arg(long, default_value = "results")]
    pub out: PathBuf,
    /// Markdown output folder.
    #[arg(long, default_value = "docs/results")]
    pub docs: PathBuf,
    /// Write a Slurm job-array script (and the collect command) into this folder instead of
    /// running.
    #[arg(long)]
    pub emit_slurm: Option<PathBuf>,
    /// Only collect existing results into the summary and the markdown table.
    #[arg(long)]
    pub collect_only: bool,
}

/// The repository root (configs live there).
pub fn repo_root() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    p.canonicalize().unwrap_or(p)
}

/// One (row, seed) job.
struct Job {
    key: String,
    seed: u64,
    /// The preset file; the row is `key`.
    config: PathBuf,
    dir: PathBuf,
    hash: String,
    steps: usize,
}

fn row_key(r: &RowSpec) -> String {
    format!("{}-{}-{}", r.method, r.loss, r.target)
}

/// Loads `configs/tables/<table>.toml`.
pub fn load_table(table: &str) -> Result<TableSpec> {
    let path = repo_root()
        .join("configs/tables")
        .join(format!("{table}.toml"));
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("unknown table `{table}`: cannot read {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("table specification {}", path.display()))
}

fn resolved_hash(cfg: &RunConfig) -> Result<String> {
    let text = toml::to_string(cfg)?;
    Ok(format!("{:x}", Sha256::digest(text.as_bytes())))
}

fn plan(args: &ReproduceArgs, spec: &TableSpec) -> Result<Vec<Job>> {
    let seeds = args.seeds.clone().unwrap_or_else(|| {
        if args.preset == "paper" {
            vec![1, 2, 3, 4, 5]
        } else {
            vec![1, 2, 3]
        }
    });
    let preset_file = crate::preset::preset_path(&repo_root(), &args.preset);
    let preset = crate::preset::Preset::load(&preset_file)
        .with_context(|| format!("preset `{}`", args.preset))?;
    let mut jobs = Vec::new();
    for r in &spec.rows {
        let key = row_key(r);
        if let Some(filter) = &args.rows {
            if !filter.iter().any(|f| row_matches(&key, f)) {
                continue;
            }
        }
        let config = preset_file.clone();
        for &seed in &seeds {
            let mut cfg = preset.resolve(&key, &[])?;
            cfg.seed = seed;
            let steps = cfg.train.steps;
            cfg.clone()
                .validate()
                .with_context(|| format!("row `{key}`"))?;
            let dir = args
                .out
                .join(&spec.name)
                .join(&args.preset)
                .join(format!("{key}-seed{seed}"));
            jobs.push(Job {
                key: key.clone(),
                seed,
                config: config.clone(),
                dir,
                hash: resolved_hash(&cfg)?,
                steps,
            });
        }
    }
    if jobs.is_empty() {
        bail!("no rows selected");
    }
    Ok(jobs)
}

fn is_done(job: &Job) -> bool {
    job.dir.join("results.json").exists()
        && std::fs::read_to_string(job.dir.join("config.sha256"))
            .ok()
            .as_deref()
            == Some(job.hash.as_str())
}

fn spawn(job: &Job, ov: &Overrides) -> Result<Child> {
    let mut cmd = Command::new(self_exe()?);
    let resumable = job.dir.join("checkpoint.json").exists()
        && std::fs::read_to_string(job.dir.join("config.sha256"))
            .ok()
            .as_deref()
            == Some(job.hash.as_str());
    if resumable {
        cmd.arg("train").arg("--resume").arg(&job.dir);
    } else {
        if job.dir.exists() {
            std::fs::remove_dir_all(&job.dir)
                .with_context(|| format!("clearing stale run folder {}", job.dir.display()))?;
        }
        std::fs::create_dir_all(&job.dir)?;
        write_atomic(&job.dir.join("config.sha256"), job.hash.as_bytes())?;
        cmd.arg("train")
            .arg("--config")
            .arg(&job.config)
            .arg("--row")
            .arg(&job.key)
            .arg("--out")
            .arg(&job.dir)
            .arg("--set")
            .arg(format!("seed={}", job.seed));
    }
    if let Some(d) = ov.device {
        cmd.arg("--device").arg(d.to_string());
    }
    cmd.arg("--threads")
        .arg(ov.threads.unwrap_or(1).to_string());
    cmd.arg("--quiet");
    let log = std::fs::File::create(job.dir.join("train.log"))?;
    cmd.stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log));
    cmd.spawn().context("starting `lv train`")
}

/// This binary's path. When the binary is rebuilt while a table runs, Linux reports the old
/// inode as `… (deleted)`; the rebuilt binary at the same path is used then.
fn self_exe() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the lv binary")?;
    let s = exe.to_string_lossy();
    Ok(match s.strip_suffix(" (deleted)") {
        Some(p) => PathBuf::from(p),
        None => exe,
    })
}

fn last_step(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .ok()
        .and_then(|t| {
            t.lines()
                .rev()
                .find_map(|l| CurveLine::parse(l).map(|c| c.step() as u64))
        })
        .unwrap_or(0)
}

/// `lv reproduce`.
pub fn run(args: &ReproduceArgs, ov: &Overrides) -> Result<()> {
    let spec = load_table(&args.table)?;
    let jobs = plan(args, &spec)?;
    if let Some(dir) = &args.emit_slurm {
        return emit_slurm(dir, args, &jobs);
    }
    let t0 = Instant::now();
    let archived = archive::dir(args, &spec);
    if !args.collect_only {
        let mp = MultiProgress::new();
        let overall = mp.add(ProgressBar::new(jobs.len() as u64));
        overall.set_style(ProgressStyle::with_template(
            "rows {bar:30} {pos}/{len} [{elapsed_precise}] {msg}",
        )?);
        let row_style = ProgressStyle::with_template("  {prefix:28} {bar:30} {pos}/{len} {msg}")?;
        let mut pending: Vec<&Job> = Vec::new();
        for j in &jobs {
            if !args.force && (is_done(j) || archive::lookup(&archived, j).is_some()) {
                overall.inc(1);
            } else {
                if args.force {
                    let _ = std::fs::remove_dir_all(&j.dir);
                }
                pending.push(j);
            }
        }
        overall.set_message(format!("{} already done", jobs.len() - pending.len()));
        let mut running: Vec<(&Job, Child, ProgressBar)> = Vec::new();
        let mut failures = Vec::new();
        let mut queue = pending.into_iter();
        loop {
            while running.len() < args.jobs.max(1) {
                let Some(j) = queue.next() else { break };
                let child = spawn(j, ov)?;
                let bar = mp.add(ProgressBar::new(j.steps as u64));
                bar.set_style(row_style.clone());
                bar.set_prefix(format!("{} s{}", j.key, j.seed));
                running.push((j, child, bar));
            }
            if running.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
            let mut i = 0;
            while i < running.len() {
                let (j, child, bar) = &mut running[i];
                bar.set_position(last_step(&j.dir));
                if let Some(status) = child.try_wait()? {
                    bar.finish_and_clear();
                    if !status.success() || !j.dir.join("results.json").exists() {
                        failures.push(format!(
                            "{} seed {} ({status}; see {})",
                            j.key,
                            j.seed,
                            j.dir.join("train.log").display()
                        ));
                    }
                    overall.inc(1);
                    running.remove(i);
                } else {
                    i += 1;
                }
            }
        }
        overall.finish();
        if !failures.is_empty() {
            bail!("{} row(s) failed: {}", failures.len(), failures.join("; "));
        }
    }
    let summary = collect(&spec, args, &jobs)?;
    // `collect` returns one row per job, in order.
    for (j, row) in jobs.iter().zip(&summary).filter(|(j, _)| is_done(j)) {
        archive::record(&archived, j, &row.results)?;
    }
    let md = render_markdown(&spec, args, &jobs, &summary, t0.elapsed().as_secs_f64())?;
    std::fs::create_dir_all(&args.docs)?;
    // One panel per row, from its first seed whose run folder is on this machine (rows taken
    // from the record of runs have no samples here).
    let panels: Vec<(String, PathBuf)> = spec
        .rows
        .iter()
        .filter_map(|r| {
            let key = row_key(r);
            jobs.iter().filter(|j| j.key == key).find_map(|j| {
                let p = j.dir.join("samples.png");
                p.exists().then(|| (format!("{key} (seed {})", j.seed), p))
            })
        })
        .collect();
    if !panels.is_empty() {
        let png = args.docs.join(format!("{}-{}.png", spec.name, args.preset));
        crate::plots::plot_grid(&png, &panels)?;
    }
    let md_path = args.docs.join(format!("{}-{}.md", spec.name, args.preset));
    write_atomic(&md_path, md.as_bytes())?;
    let json_path = args
        .docs
        .join(format!("{}-{}.json", spec.name, args.preset));
    let rows = summary::doc_rows(&spec, &summary);
    write_atomic(&json_path, serde_json::to_string_pretty(&rows)?.as_bytes())?;
    println!("{md}");
    eprintln!(
        "wall time {:.0} s; table written to {}",
        t0.elapsed().as_secs_f64(),
        md_path.display()
    );
    Ok(())
}

/// Whether `key` is selected by the `--rows` entry `f`: a substring, or with a trailing `$`
/// the whole row name.
fn row_matches(key: &str, f: &str) -> bool {
    match f.strip_suffix('$') {
        Some(exact) => key == exact,
        None => key.contains(f),
    }
}

#[cfg(test)]
mod row_filter_tests {
    use super::row_matches;

    #[test]
    fn substrings_and_exact_names() {
        assert!(row_matches("pis-lv-mw50", "mw5"));
        assert!(row_matches("pis-lv-mw5", "pis-lv-mw5$"));
        assert!(!row_matches("pis-lv-mw50", "pis-lv-mw5$"));
        assert!(!row_matches("pis-lv-mw5", "dis"));
    }
}
