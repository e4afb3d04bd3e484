//! `cargo xtask bench [--compare]`: steps/s of `lv bench-step` on the standard configurations,
//! and with `--compare` of the PyTorch baseline `benches/baselines/pytorch_step.py` on the same
//! configurations in the same run, with their ratio.
//!
//! Configurations: {pis-gmm9, dis-funnel10} × {lv, kl} × {b256-n100, b2048-n200}, for each
//! thread count of `--threads` (default 1 and 2). Results go to a table on stdout and to
//! `target/lv-bench/compare.json` (a list of objects with `config`, `loss`, `threads`,
//! `ours_steps_per_s`, `baseline_steps_per_s`, `ratio`, plus `ours_no_replay_steps_per_s` and
//! `ours_chunked_replay_steps_per_s` on the LV rows with `--no-replay-too` / `--replay-chunk`).
//! `ratio` is ours (the trainer's default step) / baseline.
//!
//! Everything runs as subprocesses (`cargo build --release -p lv-bench --bin lv`, then that
//! binary's `bench-step`, and the venv python), so xtask itself never links libtorch.

use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Arguments of `cargo xtask bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Also run the PyTorch baseline on every configuration and report the ratio.
    #[arg(long)]
    pub compare: bool,
    /// Python with torch for the baseline (default: the venv behind `.libtorch`).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// libtorch thread counts to measure (0 = libtorch's default), comma separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1usize, 2])]
    pub threads: Vec<usize>,
    /// Only the small setting (batch 256, 100 steps).
    #[arg(long)]
    pub quick: bool,
    /// Only configurations whose label contains this string (e.g. `pis-lv`).
    #[arg(long)]
    pub filter: Option<String>,
    /// Also measure ours with `--no-replay` (step-by-step LV with the graph) on the LV rows.
    #[arg(long)]
    pub no_replay_too: bool,
    /// Also measure ours with `--replay-rows K` (LV replay chunk size in rows) on the LV
    /// rows; 0 = off.
    #[arg(long, default_value_t = 0)]
    pub replay_chunk: usize,
    /// Device of both sides: cpu or cuda (`lv --device`, the baseline's `--device`).
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda"])]
    pub device: String,
    /// With more than one thread, also measure ours with `--shards 1` (one batch on all
    /// libtorch threads instead of one batch shard per thread).
    #[arg(long)]
    pub unsharded_too: bool,
    /// Measure every row this many times, alternating ours and the baseline, and report
    /// medians (the ratio: the median of the per-round ratios). The VM's speed drifts by
    /// tens of percent within minutes; paired rounds keep that out of the ratio.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Output file (default target/lv-bench/compare.json).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// One benchmark configuration.
struct Config {
    method: &'static str,
    target: &'static str,
    loss: &'static str,
    batch: usize,
    steps: usize,
    iters: usize,
    warmup: usize,
}

impl Config {
    fn label(&self) -> String {
        format!(
            "{}-{}-{}-b{}-n{}",
            self.method, self.loss, self.target, self.batch, self.steps
        )
    }
    fn args(&self) -> Vec<String> {
        vec![
            "--method".into(),
            self.method.into(),
            "--loss".into(),
            self.loss.into(),
            "--target".into(),
            self.target.into(),
            "--batch".into(),
            self.batch.to_string(),
            "--steps-grid".into(),
            self.steps.to_string(),
            "--iters".into(),
            self.iters.to_string(),
            "--warmup".into(),
            self.warmup.to_string(),
            "--json".into(),
        ]
    }
}

fn configs(quick: bool) -> Vec<Config> {
    let mut v = Vec::new();
    for (method, target) in [("pis", "gmm9"), ("dis", "funnel10")] {
        for loss in ["lv", "kl"] {
            v.push(Config {
                method,
                target,
                loss,
                batch: 256,
                steps: 100,
                iters: 10,
                warmup: 2,
            });
            if !quick {
                // The paper's setting takes seconds per step (KL more): few iterations.
                v.push(Config {
                    method,
                    target,
                    loss,
                    batch: 2048,
                    steps: 200,
                    iters: if loss == "kl" { 3 } else { 5 },
                    warmup: 1,
                });
            }
        }
    }
    v
}

/// The venv python behind `.libtorch` (`<venv>/lib/python3.X/site-packages/torch`), or the
/// default cache venv.
fn default_python(root: &Path) -> PathBuf {
    let link = root.join(".libtorch");
    if let Ok(torch) = std::fs::canonicalize(&link) {
        if let Some(venv) = torch.ancestors().nth(4) {
            let py = venv.join("bin").join("python");
            if py.exists() {
                return py;
            }
        }
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".cache/lv/torch-2.13.0/venv/bin/python")
}

/// Extracts the number after `"key":` from a one-line JSON object.
fn json_number(line: &str, key: &str) -> Option<f64> {
    let pat = format!("\"{key}\":");
    let start = line.find(&pat)? + pat.len();
    let rest = line[start..].trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E')))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Extracts the string after `"key":` from a one-line JSON object (no escapes inside).
fn json_string(line: &str, key: &str) -> Option<String> {
    let pat = format!("\"{key}\":");
    let start = line.find(&pat)? + pat.len();
    let rest = line[start..].trim_start().strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_string())
}

/// Steps per wall-clock second and per CPU-second of the process, and the gradient path
/// `lv bench-step` reported (ours only).
#[derive(Clone)]
struct Speed {
    wall: f64,
    cpu: Option<f64>,
    path: Option<String>,
}

/// Runs a command and returns `steps_per_s` and `cpu_steps_per_s` of the last JSON line it
/// printed.
fn steps_per_s(cmd: &mut Command, what: &str) -> Result<Speed> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}\n{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    stdout
        .lines()
        .rev()
        .find_map(|l| {
            json_number(l, "steps_per_s").map(|wall| Speed {
                wall,
                cpu: json_number(l, "cpu_steps_per_s"),
                path: json_string(l, "lv_path"),
            })
        })
        .with_context(|| format!("{what} printed no steps_per_s:\n{stdout}"))
}

/// Runs the `lv` binary built by [`run`] (not `cargo run` per configuration: files edited
/// while the benchmark runs must not rebuild it halfway through the table).
fn ours(root: &Path, lv: &Path, run: &Run, cfg: &Config, extra: &[String]) -> Result<Speed> {
    let mut cmd = Command::new(lv);
    cmd.current_dir(root).args([
        "--threads",
        &run.threads.to_string(),
        "--device",
        run.device,
        "bench-step",
    ]);
    cmd.args(cfg.args()).args(extra);
    steps_per_s(&mut cmd, &format!("lv bench-step {}", cfg.label()))
}

fn baseline(root: &Path, python: &Path, run: &Run, cfg: &Config) -> Result<Speed> {
    let mut cmd = Command::new(python);
    cmd.current_dir(root)
        .arg(root.join("benches/baselines/pytorch_step.py"))
        .args(cfg.args())
        .args([
            "--threads",
            &run.threads.to_string(),
            "--device",
            run.device,
        ]);
    steps_per_s(&mut cmd, &format!("pytorch_step.py {}", cfg.label()))
}

/// Thread count and device of one pass over the configurations.
struct Run<'a> {
    threads: usize,
    device: &'a str,
}

/// Every round's measurements of one row.
#[derive(Default)]
struct Measured {
    ours: Vec<Speed>,
    no_replay: Vec<f64>,
    chunked: Vec<f64>,
    unsharded: Vec<f64>,
    baseline: Vec<Speed>,
}

/// Median (mean of the middle two for an even count); `None` when empty.
fn median(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    (n > 0).then(|| 0.5 * (v[(n - 1) / 2] + v[n / 2]))
}

/// Medians of wall and CPU steps/s; the path of the first round.
fn median_speed(v: &[Speed]) -> Speed {
    let cpu: Vec<f64> = v.iter().filter_map(|s| s.cpu).collect();
    Speed {
        wall: median(&v.iter().map(|s| s.wall).collect::<Vec<_>>()).unwrap_or(f64::NAN),
        cpu: median(&cpu),
        path: v.first().and_then(|s| s.path.clone()),
    }
}

struct Row {
    config: String,
    device: String,
    loss: &'static str,
    threads: usize,
    ours: Speed,
    ours_no_replay: Option<f64>,
    ours_chunked: Option<f64>,
    ours_unsharded: Option<f64>,
    baseline: Option<Speed>,
    /// Per round (more than one with `--rounds`): ours / baseline, ours, baseline steps/s.
    ratio_rounds: Vec<f64>,
    ours_rounds: Vec<f64>,
    baseline_rounds: Vec<f64>,
}

fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{x:.prec$}"))
}

impl Row {
    /// Wall-clock ratio ours / baseline: the median of the per-round ratios.
    fn ratio(&self) -> Option<f64> {
        median(&self.ratio_rounds)
    }
    /// CPU-time ratio ours / baseline (steps per CPU-second).
    fn cpu_ratio(&self) -> Option<f64> {
        let b = self.baseline.as_ref()?.cpu?;
        Some(self.ours.cpu? / b)
    }
}

fn to_json(rows: &[Row]) -> String {
    let num = |v: Option<f64>| v.map_or_else(|| "null".into(), |x| format!("{x:.6}"));
    let mut s = String::from("[\n");
    for (i, r) in rows.iter().enumerate() {
        let _ = write!(
            s,
            "  {{\"config\": \"{}\", \"loss\": \"{}\", \"threads\": {}, \"device\": \"{}\", \
             \"ours_steps_per_s\": {}, \
             \"baseline_steps_per_s\": {}, \"ratio\": {}, \"ours_cpu_steps_per_s\": {}, \
             \"baseline_cpu_steps_per_s\": {}, \"cpu_ratio\": {}",
            r.config,
            r.loss,
            r.threads,
            r.device,
            num(Some(r.ours.wall)),
            num(r.baseline.as_ref().map(|b| b.wall)),
            num(r.ratio()),
            num(r.ours.cpu),
            num(r.baseline.as_ref().and_then(|b| b.cpu)),
            num(r.cpu_ratio()),
        );
        if let Some(p) = &r.ours.path {
            let _ = write!(s, ", \"ours_path\": \"{p}\"");
        }
        if r.ratio_rounds.len() > 1 {
            let list = |v: &[f64]| {
                v.iter()
                    .map(|x| format!("{x:.4}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = write!(
                s,
                ", \"rounds\": {}, \"ratio_rounds\": [{}], \"ours_rounds\": [{}], \
                 \"baseline_rounds\": [{}]",
                r.ratio_rounds.len(),
                list(&r.ratio_rounds),
                list(&r.ours_rounds),
                list(&r.baseline_rounds)
            );
        }
        if let Some(un) = r.ours_unsharded {
            let _ = write!(s, ", \"ours_unsharded_steps_per_s\": {}", num(Some(un)));
        }
        if let Some(nr) = r.ours_no_replay {
            let _ = write!(s, ", \"ours_no_replay_steps_per_s\": {}", num(Some(nr)));
        }
        if let Some(ch) = r.ours_chunked {
            let _ = write!(
                s,
                ", \"ours_chunked_replay_steps_per_s\": {}",
                num(Some(ch))
            );
        }
        s.push('}');
        s.push_str(if i + 1 < rows.len() { ",\n" } else { "\n" });
    }
    s.push_str("]\n");
    s
}

fn write_json(out: &Path, rows: &[Row]) -> Result<()> {
    std::fs::write(out, to_json(rows)).with_context(|| format!("writing {}", out.display()))
}

/// `cargo xtask bench`.
pub fn run(root: &Path, args: &BenchArgs) -> Result<()> {
    let python = args.python.clone().unwrap_or_else(|| default_python(root));
    if args.compare && !python.exists() {
        bail!(
            "no python for the baseline at {} (run `cargo xtask setup` or pass --python)",
            python.display()
        );
    }
    // Build once up front (`cargo build --release -p lv-bench --bin lv`), then copy the
    // binary aside: every row of the table is measured with the same build.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .current_dir(root)
        .args(["build", "--release", "-p", "lv-bench", "--bin", "lv"])
        .status()
        .context("building lv (release)")?;
    if !status.success() {
        bail!("`cargo build --release -p lv-bench --bin lv` failed ({status})");
    }
    // Same folder depth as target/release/lv, so its $ORIGIN-relative rpath to .libtorch holds.
    let lv = root.join("target/lv-bench/lv");
    std::fs::create_dir_all(root.join("target/lv-bench"))?;
    std::fs::copy(root.join("target/release/lv"), &lv)
        .with_context(|| format!("copying the lv binary to {}", lv.display()))?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| root.join("target/lv-bench/compare.json"));
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut rows = Vec::new();
    let all = configs(args.quick);
    let selected: Vec<&Config> = all
        .iter()
        .filter(|c| args.filter.as_ref().is_none_or(|f| c.label().contains(f)))
        .collect();
    for &threads in &args.threads {
        let run = Run {
            threads,
            device: &args.device,
        };
        for cfg in &selected {
            let lv_row = cfg.loss == "lv";
            let mut m = Measured::default();
            for _ in 0..args.rounds.max(1) {
                m.ours.push(ours(root, &lv, &run, cfg, &[])?);
                if args.no_replay_too && lv_row {
                    let a = ["--no-replay".into()];
                    m.no_replay.push(ours(root, &lv, &run, cfg, &a)?.wall);
                }
                if args.replay_chunk > 0 && lv_row {
                    let a = ["--replay-rows".into(), args.replay_chunk.to_string()];
                    m.chunked.push(ours(root, &lv, &run, cfg, &a)?.wall);
                }
                if args.unsharded_too && threads != 1 {
                    let a = ["--shards".into(), "1".into()];
                    m.unsharded.push(ours(root, &lv, &run, cfg, &a)?.wall);
                }
                if args.compare {
                    m.baseline.push(baseline(root, &python, &run, cfg)?);
                }
            }
            let row = Row {
                config: cfg.label(),
                device: args.device.clone(),
                loss: cfg.loss,
                threads,
                ours: median_speed(&m.ours),
                ours_no_replay: median(&m.no_replay),
                ours_chunked: median(&m.chunked),
                ours_unsharded: median(&m.unsharded),
                baseline: (!m.baseline.is_empty()).then(|| median_speed(&m.baseline)),
                ratio_rounds: m
                    .ours
                    .iter()
                    .zip(&m.baseline)
                    .map(|(o, b)| o.wall / b.wall)
                    .collect(),
                ours_rounds: m.ours.iter().map(|o| o.wall).collect(),
                baseline_rounds: m.baseline.iter().map(|b| b.wall).collect(),
            };
            eprintln!(
                "{:<28} threads {threads}: ours {:.3} steps/s ({}){}{}{}{}",
                row.config,
                row.ours.wall,
                row.ours.path.as_deref().unwrap_or("?"),
                row.ours_no_replay
                    .map_or(String::new(), |x| format!(" (no replay {x:.3})")),
                row.ours_chunked
                    .map_or(String::new(), |x| format!(" (chunked replay {x:.3})")),
                row.ours_unsharded
                    .map_or(String::new(), |x| format!(" (unsharded {x:.3})")),
                row.baseline.as_ref().map_or(String::new(), |x| format!(
                    ", baseline {:.3}, ratio {}, cpu ratio {}",
                    x.wall,
                    fmt_opt(row.ratio(), 2),
                    fmt_opt(row.cpu_ratio(), 2)
                )),
            );
            rows.push(row);
            // Written after every row, so an interrupted run keeps what it measured.
            write_json(&out, &rows)?;
        }
    }
    println!(
        "\n{:<28} {:>7} {:>11} {:>10} {:>10} {:>10} {:>11} {:>6} {:>9}",
        "config",
        "threads",
        "ours st/s",
        "no-replay",
        "chunked",
        "unsharded",
        "baseline",
        "ratio",
        "cpu ratio"
    );
    for r in &rows {
        println!(
            "{:<28} {:>7} {:>11.3} {:>10} {:>10} {:>10} {:>11} {:>6} {:>9}",
            r.config,
            r.threads,
            r.ours.wall,
            fmt_opt(r.ours_no_replay, 3),
            fmt_opt(r.ours_chunked, 3),
            fmt_opt(r.ours_unsharded, 3),
            fmt_opt(r.baseline.as_ref().map(|b| b.wall), 3),
            fmt_opt(r.ratio(), 2),
            fmt_opt(r.cpu_ratio(), 2),
        );
    }
    eprintln!("wrote {}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_steps_per_s() {
        let l = r#"{"config": "x", "loss": "lv", "threads": 1, "steps_per_s": 12.5e-1, "y": 3}"#;
        assert_eq!(json_number(l, "steps_per_s"), Some(1.25));
        assert_eq!(json_number(l, "threads"), Some(1.0));
        assert_eq!(json_number(l, "nope"), None);
        assert_eq!(json_string(l, "config").as_deref(), Some("x"));
        assert_eq!(json_string(l, "threads"), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn eight_configs() {
        assert_eq!(configs(false).len(), 8);
        assert_eq!(configs(true).len(), 4);
        assert_eq!(configs(false)[1].label(), "pis-lv-gmm9-b2048-n200");
    }
}
