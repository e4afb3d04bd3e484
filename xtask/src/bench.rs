//! `cargo xtask bench [--compare]`: steps/s of `lv bench-step` on a set of configurations,
//! and with `--compare` of the baselines on the same configurations in the same run, with
//! their ratios: the PyTorch baseline `benches/baselines/pytorch_step.py` (eager, the way
//! sde_sampler computes a step) and with `--baseline pytorch,jax` also the JAX baseline
//! `benches/baselines/jax_step.py` (jit, `lax.scan`, optax: the stack of RSMC, SCLD and
//! Beyond-ELBOs).
//!
//! Configurations (`--workloads`): `standard` = {pis-gmm9, dis-funnel10} × {lv, kl} ×
//! {b256-n100, b2048-n200} (ours runs KL on the adjoint path, `bench-step --kl-adjoint`); `benchmark` = rows of the `cpu` preset at B = 2000 (PIS-LV and
//! RSMC's ou_dds + lv_biased on manywell64, gmm40_50d, mos50, robot4 at N = 128; the
//! gradient-free RSMC rows funnel10_clip30 and manywell32 at N = 64), each resolved once by
//! `lv config show` into `target/lv-bench/rows/<label>.toml`, the file both `lv bench-step
//! --config` and the baselines' `--config` read; `all` = both. Each runs for every thread
//! count of `--threads` (default 1 and 2).
//!
//! Results go to a table on stdout and to `target/lv-bench/compare.json`: a list of objects
//! with `config`, `loss`, `threads`, `device`, `ours_steps_per_s`, `ours_cpu_steps_per_s`,
//! `rounds`, `ours_rounds`, `ours_path`, and per baseline B (`pytorch`, `jax`)
//! `B_steps_per_s`, `B_ratio` (ours / B, the median of the per-round ratios), `B_cpu_steps_per_s`,
//! `B_cpu_ratio`, `B_ratio_rounds`, `B_rounds`; plus `ours_no_replay_steps_per_s`,
//! `ours_chunked_replay_steps_per_s` and `ours_unsharded_steps_per_s` with their flags.
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
    /// Which configurations: the standard ones, the later benchmark rows, or all.
    #[arg(long, value_enum, default_value = "standard")]
    pub workloads: Workloads,
    /// With `--compare`: the baselines to run, comma separated (jax needs jax and optax in
    /// the baseline's python; it runs on the CPU).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = vec![Baseline::Pytorch])]
    pub baseline: Vec<Baseline>,
    /// Standard workloads: only the small setting (batch 256, 100 steps).
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

/// What one benchmark configuration trains.
enum Workload {
    /// `lv bench-step --method --loss --target --batch --steps-grid`, and the same flags of
    /// the baselines (their standard PIS/gmm9 and DIS/funnel10 configurations).
    Flags {
        method: &'static str,
        target: &'static str,
    },
    /// A row of the `cpu` preset at batch B and N steps: resolved once by
    /// `lv config show --preset cpu ROW --set train.batch=B --set sde.steps=N` into a run
    /// config file that `lv bench-step --config` and the baselines' `--config` both read.
    Row { row: &'static str },
}

/// One benchmark configuration.
struct Config {
    work: Workload,
    loss: &'static str,
    batch: usize,
    steps: usize,
    iters: usize,
    warmup: usize,
}

impl Config {
    fn label(&self) -> String {
        match &self.work {
            Workload::Flags { method, target } => format!(
                "{method}-{}-{target}-b{}-n{}",
                self.loss, self.batch, self.steps
            ),
            Workload::Row { row } => format!("{row}-b{}-n{}", self.batch, self.steps),
        }
    }
    /// The workload's arguments, shared by `lv bench-step` and the baselines; `resolved` is
    /// the run config file of a [`Workload::Row`].
    fn args(&self, resolved: Option<&Path>) -> Vec<String> {
        let mut v: Vec<String> = match (&self.work, resolved) {
            (Workload::Flags { method, target }, _) => vec![
                "--method".into(),
                (*method).into(),
                "--loss".into(),
                self.loss.into(),
                "--target".into(),
                (*target).into(),
                "--batch".into(),
                self.batch.to_string(),
                "--steps-grid".into(),
                self.steps.to_string(),
            ],
            (Workload::Row { .. }, Some(file)) => {
                vec!["--config".into(), file.display().to_string()]
            }
            (Workload::Row { row }, None) => unreachable!("row {row} used unresolved"),
        };
        v.extend([
            "--iters".into(),
            self.iters.to_string(),
            "--warmup".into(),
            self.warmup.to_string(),
            "--json".into(),
        ]);
        v
    }
}

/// Which configurations `cargo xtask bench` measures.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum Workloads {
    /// PIS/gmm9 and DIS/funnel10, LV and KL, at B = 256 × 100 and B = 2048 × 200.
    Standard,
    /// The later benchmark rows (cpu preset rows at B = 2000): PIS-LV and RSMC's LV variant
    /// (ou_dds + lv_biased) on manywell64, gmm40_50d, mos50 and robot4 at N = 128, and the
    /// gradient-free RSMC rows funnel10_clip30 and manywell32 at N = 64.
    Benchmark,
    /// Both.
    All,
}

/// The baseline implementations of `--compare`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum Baseline {
    /// benches/baselines/pytorch_step.py (eager PyTorch, one network call per time step).
    Pytorch,
    /// benches/baselines/jax_step.py (jit-compiled, `lax.scan` over the time steps, optax).
    Jax,
}

impl Baseline {
    fn name(self) -> &'static str {
        match self {
            Baseline::Pytorch => "pytorch",
            Baseline::Jax => "jax",
        }
    }
    fn script(self) -> &'static str {
        match self {
            Baseline::Pytorch => "benches/baselines/pytorch_step.py",
            Baseline::Jax => "benches/baselines/jax_step.py",
        }
    }
}

fn standard_configs(quick: bool) -> Vec<Config> {
    let mut v = Vec::new();
    for (method, target) in [("pis", "gmm9"), ("dis", "funnel10")] {
        for loss in ["lv", "kl"] {
            let work = || Workload::Flags { method, target };
            v.push(Config {
                work: work(),
                loss,
                batch: 256,
                steps: 100,
                iters: 10,
                warmup: 2,
            });
            if !quick {
                // The paper's setting takes seconds per step (KL more): few iterations.
                v.push(Config {
                    work: work(),
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

/// The benchmark-scale rows (see [`Workloads::Benchmark`]).
fn benchmark_configs() -> Vec<Config> {
    let row = |row, loss, steps| Config {
        work: Workload::Row { row },
        loss,
        batch: 2000,
        steps,
        iters: 3,
        warmup: 1,
    };
    let mut v = Vec::new();
    for (pis, rsmc) in [
        ("pis-lv-manywell64", "ou_dds-lv_biased-manywell64"),
        ("pis-lv-gmm40_50d", "ou_dds-lv_biased-gmm40_50d"),
        ("pis-lv-mos50", "ou_dds-lv_biased-mos50"),
        ("pis-lv-robot4", "ou_dds-lv_biased-robot4"),
    ] {
        v.push(row(pis, "lv", 128));
        v.push(row(rsmc, "lv_biased", 128));
    }
    v.push(row("ou_dds-lv_biased-funnel10_clip30", "lv_biased", 64));
    v.push(row("ou_dds-lv_biased-manywell32", "lv_biased", 64));
    v
}

fn configs(workloads: Workloads, quick: bool) -> Vec<Config> {
    match workloads {
        Workloads::Standard => standard_configs(quick),
        Workloads::Benchmark => benchmark_configs(),
        Workloads::All => {
            let mut v = standard_configs(quick);
            v.extend(benchmark_configs());
            v
        }
    }
}

/// Writes the run config of a [`Workload::Row`] to `dir/<label>.toml` (from
/// `lv config show`), or returns `None` for flag workloads.
fn resolve(root: &Path, lv: &Path, dir: &Path, cfg: &Config) -> Result<Option<PathBuf>> {
    let Workload::Row { row } = &cfg.work else {
        return Ok(None);
    };
    let out = Command::new(lv)
        .current_dir(root)
        .args(["config", "show", "--preset", "cpu", row])
        .args(["--set", &format!("train.batch={}", cfg.batch)])
        .args(["--set", &format!("sde.steps={}", cfg.steps)])
        .output()
        .with_context(|| format!("running lv config show {row}"))?;
    if !out.status.success() {
        bail!(
            "lv config show --preset cpu {row} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let file = dir.join(format!("{}.toml", cfg.label()));
    std::fs::write(&file, &out.stdout).with_context(|| format!("writing {}", file.display()))?;
    Ok(Some(file))
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
fn ours(
    root: &Path,
    lv: &Path,
    run: &Run,
    cfg: &Config,
    resolved: Option<&Path>,
    extra: &[String],
) -> Result<Speed> {
    let mut cmd = Command::new(lv);
    cmd.current_dir(root).args([
        "--threads",
        &run.threads.to_string(),
        "--device",
        run.device,
        "bench-step",
    ]);
    cmd.args(cfg.args(resolved)).args(extra);
    steps_per_s(&mut cmd, &format!("lv bench-step {}", cfg.label()))
}

fn baseline(
    root: &Path,
    python: &Path,
    which: Baseline,
    run: &Run,
    cfg: &Config,
    resolved: Option<&Path>,
) -> Result<Speed> {
    let mut cmd = Command::new(python);
    cmd.current_dir(root)
        .arg(root.join(which.script()))
        .args(cfg.args(resolved))
        .args(["--threads", &run.threads.to_string()]);
    if which == Baseline::Pytorch {
        cmd.args(["--device", run.device]);
    }
    steps_per_s(&mut cmd, &format!("{} {}", which.script(), cfg.label()))
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
    /// Per baseline of `--baseline`, in that order.
    baselines: Vec<Vec<Speed>>,
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

/// One baseline's figures on one row.
struct Versus {
    which: Baseline,
    /// Medians.
    speed: Speed,
    /// Per round: ours / baseline, and the baseline's steps/s.
    ratio_rounds: Vec<f64>,
    rounds: Vec<f64>,
}

impl Versus {
    /// Wall-clock ratio ours / baseline: the median of the per-round ratios.
    fn ratio(&self) -> Option<f64> {
        median(&self.ratio_rounds)
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
    versus: Vec<Versus>,
    /// Ours per round.
    ours_rounds: Vec<f64>,
}

fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{x:.prec$}"))
}

impl Row {
    /// CPU-time ratio ours / baseline (steps per CPU-second).
    fn cpu_ratio(&self, v: &Versus) -> Option<f64> {
        Some(self.ours.cpu? / v.speed.cpu?)
    }
    fn versus(&self, which: Baseline) -> Option<&Versus> {
        self.versus.iter().find(|v| v.which == which)
    }
}

fn to_json(rows: &[Row]) -> String {
    let num = |v: Option<f64>| v.map_or_else(|| "null".into(), |x| format!("{x:.6}"));
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.4}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut s = String::from("[\n");
    for (i, r) in rows.iter().enumerate() {
        let _ = write!(
            s,
            "  {{\"config\": \"{}\", \"loss\": \"{}\", \"threads\": {}, \"device\": \"{}\", \
             \"ours_steps_per_s\": {}, \"ours_cpu_steps_per_s\": {}, \"rounds\": {}, \
             \"ours_rounds\": [{}]",
            r.config,
            r.loss,
            r.threads,
            r.device,
            num(Some(r.ours.wall)),
            num(r.ours.cpu),
            r.ours_rounds.len(),
            list(&r.ours_rounds),
        );
        for v in &r.versus {
            let b = v.which.name();
            let _ = write!(
                s,
                ", \"{b}_steps_per_s\": {}, \"{b}_ratio\": {}, \"{b}_cpu_steps_per_s\": {}, \
                 \"{b}_cpu_ratio\": {}, \"{b}_ratio_rounds\": [{}], \"{b}_rounds\": [{}]",
                num(Some(v.speed.wall)),
                num(v.ratio()),
                num(v.speed.cpu),
                num(r.cpu_ratio(v)),
                list(&v.ratio_rounds),
                list(&v.rounds),
            );
        }
        if let Some(p) = &r.ours.path {
            let _ = write!(s, ", \"ours_path\": \"{p}\"");
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
    let baselines: Vec<Baseline> = if args.compare {
        args.baseline.clone()
    } else {
        Vec::new()
    };
    if baselines.contains(&Baseline::Jax) {
        check_jax(&python)?;
        if args.device != "cpu" {
            bail!("--baseline jax runs on the CPU only; drop it or use --device cpu");
        }
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
    let rows_dir = root.join("target/lv-bench/rows");
    std::fs::create_dir_all(&rows_dir)?;
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
    let all = configs(args.workloads, args.quick);
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
            let resolved = resolve(root, &lv, &rows_dir, cfg)?;
            let resolved = resolved.as_deref();
            let lv_row = cfg.loss == "lv";
            let mut m = Measured {
                baselines: vec![Vec::new(); baselines.len()],
                ..Default::default()
            };
            // KL rows: ours on the adjoint path (native trunk, no graph of the trajectory).
            let ours_extra: Vec<String> = if cfg.loss.starts_with("kl") {
                vec!["--kl-adjoint".into()]
            } else {
                Vec::new()
            };
            for _ in 0..args.rounds.max(1) {
                m.ours
                    .push(ours(root, &lv, &run, cfg, resolved, &ours_extra)?);
                if args.no_replay_too && lv_row {
                    let a = ["--no-replay".into()];
                    m.no_replay
                        .push(ours(root, &lv, &run, cfg, resolved, &a)?.wall);
                }
                if args.replay_chunk > 0 && lv_row {
                    let a = ["--replay-rows".into(), args.replay_chunk.to_string()];
                    m.chunked
                        .push(ours(root, &lv, &run, cfg, resolved, &a)?.wall);
                }
                if args.unsharded_too && threads != 1 {
                    let a = ["--shards".into(), "1".into()];
                    m.unsharded
                        .push(ours(root, &lv, &run, cfg, resolved, &a)?.wall);
                }
                for (i, &b) in baselines.iter().enumerate() {
                    m.baselines[i].push(baseline(root, &python, b, &run, cfg, resolved)?);
                }
            }
            let versus = baselines
                .iter()
                .zip(&m.baselines)
                .map(|(&which, speeds)| Versus {
                    which,
                    speed: median_speed(speeds),
                    ratio_rounds: m
                        .ours
                        .iter()
                        .zip(speeds)
                        .map(|(o, b)| o.wall / b.wall)
                        .collect(),
                    rounds: speeds.iter().map(|b| b.wall).collect(),
                })
                .collect();
            let row = Row {
                config: cfg.label(),
                device: args.device.clone(),
                loss: cfg.loss,
                threads,
                ours: median_speed(&m.ours),
                ours_no_replay: median(&m.no_replay),
                ours_chunked: median(&m.chunked),
                ours_unsharded: median(&m.unsharded),
                versus,
                ours_rounds: m.ours.iter().map(|o| o.wall).collect(),
            };
            let mut line = format!(
                "{:<40} threads {threads}: ours {:.3} steps/s ({}){}{}{}",
                row.config,
                row.ours.wall,
                row.ours.path.as_deref().unwrap_or("?"),
                row.ours_no_replay
                    .map_or(String::new(), |x| format!(" (no replay {x:.3})")),
                row.ours_chunked
                    .map_or(String::new(), |x| format!(" (chunked replay {x:.3})")),
                row.ours_unsharded
                    .map_or(String::new(), |x| format!(" (unsharded {x:.3})")),
            );
            for v in &row.versus {
                let _ = write!(
                    line,
                    ", {} {:.3} (ratio {}, cpu ratio {})",
                    v.which.name(),
                    v.speed.wall,
                    fmt_opt(v.ratio(), 2),
                    fmt_opt(row.cpu_ratio(v), 2)
                );
            }
            eprintln!("{line}");
            rows.push(row);
            // Written after every row, so an interrupted run keeps what it measured.
            write_json(&out, &rows)?;
        }
    }
    let cell = |r: &Row, b: Baseline, speed: bool| {
        r.versus(b).map_or("-".to_string(), |v| {
            if speed {
                format!("{:.3}", v.speed.wall)
            } else {
                fmt_opt(v.ratio(), 2)
            }
        })
    };
    println!(
        "\n{:<40} {:>7} {:>11} {:>10} {:>10} {:>10} {:>9} {:>6} {:>9} {:>6}",
        "config",
        "threads",
        "ours st/s",
        "no-replay",
        "chunked",
        "unsharded",
        "pytorch",
        "ratio",
        "jax",
        "ratio"
    );
    for r in &rows {
        println!(
            "{:<40} {:>7} {:>11.3} {:>10} {:>10} {:>10} {:>9} {:>6} {:>9} {:>6}",
            r.config,
            r.threads,
            r.ours.wall,
            fmt_opt(r.ours_no_replay, 3),
            fmt_opt(r.ours_chunked, 3),
            fmt_opt(r.ours_unsharded, 3),
            cell(r, Baseline::Pytorch, true),
            cell(r, Baseline::Pytorch, false),
            cell(r, Baseline::Jax, true),
            cell(r, Baseline::Jax, false),
        );
    }
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// Fails with the install command when the python of the baselines lacks jax or optax.
fn check_jax(python: &Path) -> Result<()> {
    let ok = Command::new(python)
        .args(["-c", "import jax, optax"])
        .output()
        .with_context(|| format!("running {}", python.display()))?
        .status
        .success();
    if !ok {
        bail!(
            "--baseline jax: {} cannot import jax and optax (install them: {} -m pip install jax optax)",
            python.display(),
            python.display()
        );
    }
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
    fn workloads() {
        assert_eq!(configs(Workloads::Standard, false).len(), 8);
        assert_eq!(configs(Workloads::Standard, true).len(), 4);
        assert_eq!(configs(Workloads::Benchmark, false).len(), 10);
        assert_eq!(configs(Workloads::All, true).len(), 14);
        let std = configs(Workloads::Standard, false);
        assert_eq!(std[1].label(), "pis-lv-gmm9-b2048-n200");
        assert_eq!(std[1].args(None)[..2], ["--method", "pis"]);
        let bench = benchmark_configs();
        assert_eq!(bench[1].label(), "ou_dds-lv_biased-manywell64-b2000-n128");
        let file = Path::new("rows/x.toml");
        assert_eq!(bench[1].args(Some(file))[..2], ["--config", "rows/x.toml"]);
        assert_eq!(bench[9].label(), "ou_dds-lv_biased-manywell32-b2000-n64");
    }
}
