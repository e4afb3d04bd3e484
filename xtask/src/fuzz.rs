//! `cargo xtask fuzz [--seconds N] [--target NAME]...`: runs the cargo-fuzz targets of
//! `fuzz/` (the `.npy` reader, the CSV reader, the TOML config path, the checkpoint reader)
//! for a bounded time each and reports executions and findings.
//!
//! Toolchain: stable Rust. With `--sanitizer none` (the default: libFuzzer's coverage
//! guidance without AddressSanitizer; panics, aborts and hangs are what is looked for)
//! cargo-fuzz passes only stable compiler flags. `--sanitizer address` needs the nightly-only
//! `-Zsanitizer`, enabled on stable with `RUSTC_BOOTSTRAP=1`, and builds into its own
//! `fuzz/target-address/` (RUSTFLAGS are not part of cargo's artifact hashes, so sharing
//! `fuzz/target/` would rebuild everything on every switch). cargo-fuzz itself is installed
//! with `cargo install cargo-fuzz --locked` when missing.
//!
//! Per target: the working corpus is `fuzz/corpus/<target>/` (git-ignored, grows across
//! runs), read together with the committed seeds `fuzz/seeds/<target>/` and the libFuzzer
//! dictionary `fuzz/dicts/<target>.dict` (format tokens). Finding inputs go to
//! `fuzz/artifacts/<target>/`; crashes (not timeouts) are minimised to `<artifact>.min`. The
//! libFuzzer output is kept in `fuzz/logs/<target>.log`. The fuzz binaries are run directly
//! (not through `cargo fuzz run`) so that their output can be parsed; they find libtorch
//! through an rpath (and `LD_LIBRARY_PATH`). Exits non-zero when any target found something.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The fuzz targets (the `[[bin]]`s of `fuzz/Cargo.toml`).
pub const TARGETS: &[&str] = &["npy", "csv", "config", "checkpoint"];

/// Arguments of `cargo xtask fuzz`.
#[derive(clap::Args, Debug)]
pub struct FuzzArgs {
    /// Fuzzing time per target, in seconds (libFuzzer's `-max_total_time`).
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Only these targets (repeatable): npy, csv, config, checkpoint. Default: all.
    #[arg(long = "target", value_parser = clap::builder::PossibleValuesParser::new(TARGETS))]
    pub targets: Vec<String>,
    /// A single input slower than this many seconds counts as a finding (a hang).
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
    /// libFuzzer's instrumentation only (`none`), or with AddressSanitizer (`address`).
    #[arg(long, default_value = "none", value_parser = ["none", "address"])]
    pub sanitizer: String,
    /// Do not minimise crash inputs.
    #[arg(long)]
    pub no_minimize: bool,
}

/// What one target's run produced.
#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    /// Executed inputs (`stat::number_of_executed_units`, else the last `#N` status line).
    pub execs: Option<u64>,
    /// Corpus entries at the end (the last `corp: N/...` field).
    pub corpus: Option<u64>,
    /// libFuzzer's `SUMMARY:` / `==ERROR:` line of a finding.
    pub error: Option<String>,
    /// The input that reproduces the finding.
    pub artifact: Option<PathBuf>,
}

pub fn run(root: &Path, libtorch: &Path, args: &FuzzArgs) -> Result<()> {
    let fuzz_dir = root.join("fuzz");
    if !fuzz_dir.join("Cargo.toml").exists() {
        bail!("{} has no Cargo.toml", fuzz_dir.display());
    }
    let targets: Vec<&str> = if args.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        args.targets.iter().map(String::as_str).collect()
    };
    ensure_cargo_fuzz()?;
    let triple = host_triple()?;
    // Not canonicalised: the path is part of RUSTFLAGS, and a stable value keeps the build
    // cached across runs.
    let lib = root.join(libtorch).join("lib");

    eprintln!(
        "fuzz: building {} (cargo fuzz build, sanitizer {})",
        targets.join(", "),
        args.sanitizer
    );
    let target_dir = match args.sanitizer.as_str() {
        "none" => fuzz_dir.join("target"),
        s => fuzz_dir.join(format!("target-{s}")),
    };
    // All targets: one `cargo fuzz build` (no name builds every target); else one per target.
    let builds: Vec<Option<&str>> = if targets.len() == TARGETS.len() {
        vec![None]
    } else {
        targets.iter().map(|t| Some(*t)).collect()
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    for t in builds {
        let mut cmd = Command::new(&cargo);
        // cargo-fuzz's default profile: optimised, with debug assertions and overflow checks
        // (an overflow panic is a finding too).
        cmd.args([
            "fuzz",
            "build",
            "--sanitizer",
            &args.sanitizer,
            "--fuzz-dir",
            "fuzz",
        ])
        .args(["--target", &triple])
        .arg("--target-dir")
        .arg(&target_dir)
        .args(t)
        .current_dir(root);
        if args.sanitizer != "none" {
            cmd.env("RUSTC_BOOTSTRAP", "1");
        }
        let st = cmd
            // cargo-fuzz sets RUSTFLAGS (appending ours), which replaces `[build] rustflags`
            // of .cargo/config.toml and its relative rpaths: point straight at libtorch.
            .env(
                "RUSTFLAGS",
                format!("-C link-arg=-Wl,-rpath,{}", lib.display()),
            )
            .status()
            .context("running `cargo fuzz build`")?;
        if !st.success() {
            bail!("`cargo fuzz build {}` failed ({st})", t.unwrap_or(""));
        }
    }

    let bin_dir = target_dir.join(&triple).join("release");
    let mut results = Vec::new();
    for t in &targets {
        let outcome = run_target(&fuzz_dir, &bin_dir, &lib, t, args)?;
        results.push((t.to_string(), outcome));
    }

    println!();
    println!(
        "{:<12} {:>12} {:>8} {:>8}  result",
        "target", "executions", "exec/s", "corpus"
    );
    let mut found = Vec::new();
    for (t, o) in &results {
        let execs = o.execs.map_or("?".into(), |n| n.to_string());
        let rate = o
            .execs
            .map_or("?".into(), |n| format!("{}", n / args.seconds.max(1)));
        let corpus = o.corpus.map_or("?".into(), |n| n.to_string());
        let result = match (&o.error, &o.artifact) {
            (None, None) => "no finding".to_string(),
            (e, a) => {
                found.push(t.clone());
                format!(
                    "FINDING: {} -> {}",
                    e.as_deref().unwrap_or("crash"),
                    a.as_ref().map_or("(no artifact)".into(), |p| rel(root, p))
                )
            }
        };
        println!("{t:<12} {execs:>12} {rate:>8} {corpus:>8}  {result}");
    }
    println!(
        "(libFuzzer logs: fuzz/logs/<target>.log; exec/s over the requested {} s)",
        args.seconds
    );
    if !found.is_empty() {
        bail!(
            "{} target(s) found a crash: {}. Reproduce with the fuzz binary and the artifact, \
             fix, and copy the (minimised) input into the owning crate's \
             tests/fuzz_regressions/<target>/ folder",
            found.len(),
            found.join(", ")
        );
    }
    Ok(())
}

fn run_target(
    fuzz_dir: &Path,
    bin_dir: &Path,
    lib: &Path,
    target: &str,
    args: &FuzzArgs,
) -> Result<Outcome> {
    let bin = bin_dir.join(target);
    if !bin.exists() {
        bail!("fuzz binary {} missing after the build", bin.display());
    }
    let corpus = fuzz_dir.join("corpus").join(target);
    let seeds = fuzz_dir.join("seeds").join(target);
    let artifacts = fuzz_dir.join("artifacts").join(target);
    let logs = fuzz_dir.join("logs");
    for d in [&corpus, &artifacts, &logs] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let log = logs.join(format!("{target}.log"));
    eprintln!(
        "fuzz: {target} for {} s (log {})",
        args.seconds,
        log.display()
    );
    let mut cmd = Command::new(&bin);
    cmd.arg(format!("-max_total_time={}", args.seconds))
        .arg(format!("-timeout={}", args.timeout))
        .arg("-print_final_stats=1")
        // libtorch keeps allocations alive until exit; leaks are not what is looked for.
        .arg("-detect_leaks=0")
        .arg(format!("-artifact_prefix={}/", artifacts.display()));
    let dict = fuzz_dir.join("dicts").join(format!("{target}.dict"));
    if dict.exists() {
        cmd.arg(format!("-dict={}", dict.display()));
    }
    cmd.arg(&corpus);
    if seeds.is_dir() {
        cmd.arg(&seeds);
    }
    let out = with_lib_path(&mut cmd, lib)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&log, &text).with_context(|| format!("writing {}", log.display()))?;
    let mut outcome = parse_output(&text);
    if outcome.error.is_none() && outcome.artifact.is_none() && !out.status.success() {
        outcome.error = Some(format!("fuzzer exited with {}", out.status));
    }
    // Crashes minimise quickly; timeouts (each try costs `--timeout`) and OOMs are kept as is.
    let is_crash = outcome.artifact.as_ref().is_some_and(|a| {
        a.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("crash-"))
    });
    if let (Some(a), true, false) = (&outcome.artifact, is_crash, args.no_minimize) {
        let min = PathBuf::from(format!("{}.min", a.display()));
        eprintln!("fuzz: minimising {} -> {}", a.display(), min.display());
        let mut m = Command::new(&bin);
        m.arg("-minimize_crash=1")
            .arg(format!("-max_total_time={}", args.seconds.clamp(5, 60)))
            .arg(format!("-timeout={}", args.timeout))
            .arg(format!("-exact_artifact_path={}", min.display()))
            .arg(a);
        let mout = with_lib_path(&mut m, lib)
            .stdin(Stdio::null())
            .output()
            .context("minimising the crash input")?;
        let mlog = logs.join(format!("{target}.minimize.log"));
        let _ = std::fs::write(
            &mlog,
            [mout.stdout.as_slice(), mout.stderr.as_slice()].concat(),
        );
        if min.exists() {
            outcome.artifact = Some(min);
        }
    }
    Ok(outcome)
}

/// Adds libtorch's `lib` folder to `LD_LIBRARY_PATH` (besides the rpath of the build).
fn with_lib_path<'a>(cmd: &'a mut Command, lib: &Path) -> &'a mut Command {
    let mut paths = vec![lib.to_path_buf()];
    if let Some(old) = std::env::var_os("LD_LIBRARY_PATH") {
        paths.extend(std::env::split_paths(&old));
    }
    match std::env::join_paths(paths) {
        Ok(p) => cmd.env("LD_LIBRARY_PATH", p),
        Err(_) => cmd,
    }
}

/// Parses libFuzzer's output: executions, corpus size and any finding.
pub fn parse_output(text: &str) -> Outcome {
    let mut o = Outcome::default();
    let mut last_status: Option<u64> = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(v) = line.strip_prefix("stat::number_of_executed_units:") {
            o.execs = v.trim().parse().ok();
        } else if let Some(rest) = line.strip_prefix('#') {
            // `#1234\tNEW    cov: 56 ft: 78 corp: 9/100b ...` and `#1234\tDONE ...`
            let n = rest
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap_or("");
            if let Ok(n) = n.parse() {
                last_status = Some(n);
            }
            if let Some(c) = line.split("corp: ").nth(1) {
                if let Ok(c) = c.split('/').next().unwrap_or("").parse() {
                    o.corpus = Some(c);
                }
            }
        } else if line.starts_with("==") && line.contains("ERROR: libFuzzer:") {
            o.error
                .get_or_insert_with(|| line.split("ERROR: ").nth(1).unwrap_or(line).to_string());
        } else if let Some(s) = line.strip_prefix("SUMMARY: ") {
            o.error = Some(s.to_string());
        } else if let Some(p) = line.split("Test unit written to ").nth(1) {
            o.artifact = Some(PathBuf::from(p.trim()));
        }
    }
    if o.execs.is_none() {
        o.execs = last_status;
    }
    o
}

/// Installs cargo-fuzz unless `cargo fuzz --version` already works.
fn ensure_cargo_fuzz() -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let have = Command::new(&cargo)
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if have {
        return Ok(());
    }
    eprintln!("fuzz: cargo-fuzz not found; running `cargo install cargo-fuzz --locked`");
    let st = Command::new(&cargo)
        .args(["install", "cargo-fuzz", "--locked"])
        .status()
        .context("running `cargo install cargo-fuzz --locked`")?;
    if !st.success() {
        bail!(
            "could not install cargo-fuzz ({st}); install it yourself with \
             `cargo install cargo-fuzz --locked` (needs crates.io) and rerun `cargo xtask fuzz`"
        );
    }
    Ok(())
}

/// The host target triple (`rustc -vV`), where the fuzz binaries are built.
fn host_triple() -> Result<String> {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .context("running `rustc -vV`")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_string)
        .context("no `host:` line in `rustc -vV`")
}

fn rel(root: &Path, p: &Path) -> String {
    p.strip_prefix(root).unwrap_or(p).display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_match_the_fuzz_manifest() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let manifest = std::fs::read_to_string(root.join("fuzz/Cargo.toml")).unwrap();
        let bins: Vec<&str> = manifest
            .lines()
            .filter_map(|l| l.strip_prefix("name = \""))
            .filter_map(|l| l.strip_suffix('"'))
            .filter(|n| *n != "lv-fuzz")
            .collect();
        assert_eq!(bins, TARGETS);
        for t in TARGETS {
            assert!(root
                .join("fuzz/fuzz_targets")
                .join(format!("{t}.rs"))
                .exists());
            assert!(root.join("fuzz/seeds").join(t).is_dir(), "no seeds for {t}");
        }
    }

    #[test]
    fn parses_a_clean_run() {
        let text = "INFO: Seed: 1\n#2\tINITED cov: 10 ft: 11 corp: 3/300b exec/s: 0 rss: 30Mb\n\
                    #4096\tpulse  cov: 50 ft: 60 corp: 12/1Kb lim: 40 exec/s: 2048 rss: 31Mb\n\
                    #120000\tDONE   cov: 55 ft: 70 corp: 14/1Kb lim: 400 exec/s: 1967 rss: 40Mb\n\
                    Done 120000 runs in 61 second(s)\n\
                    stat::number_of_executed_units: 120001\nstat::average_exec_per_sec:     1967\n";
        let o = parse_output(text);
        assert_eq!(o.execs, Some(120001));
        assert_eq!(o.corpus, Some(14));
        assert_eq!(o.error, None);
        assert_eq!(o.artifact, None);
    }

    #[test]
    fn parses_a_crash() {
        let text = "#1500\tNEW    cov: 50 ft: 60 corp: 9/900b lim: 40 exec/s: 0 rss: 31Mb L: 5/9\n\
                    ==123== ERROR: libFuzzer: deadly signal\n\
                    SUMMARY: libFuzzer: deadly signal\n\
                    MS: 1 ChangeByte-; base unit: 0\n\
                    artifact_prefix='fuzz/artifacts/npy/'; Test unit written to fuzz/artifacts/npy/crash-abc\n\
                    Base64: AAAA\nstat::number_of_executed_units: 1503\n";
        let o = parse_output(text);
        assert_eq!(o.execs, Some(1503));
        assert_eq!(o.corpus, Some(9));
        assert_eq!(o.error.as_deref(), Some("libFuzzer: deadly signal"));
        assert_eq!(
            o.artifact.as_deref(),
            Some(Path::new("fuzz/artifacts/npy/crash-abc"))
        );
        // Without the final stats, the last status line counts.
        let o = parse_output("#77\tNEW cov: 1 ft: 1 corp: 2/2b\n");
        assert_eq!(o.execs, Some(77));
    }
}
