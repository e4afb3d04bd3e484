//! Replays the inputs of the `config` fuzz target (`cargo xtask fuzz`) through
//! `RunConfig::parse` + `validate`, so that CI exercises them without running the fuzzer.
//! As in the fuzz target, text after the first NUL byte is `--set` overrides, one per line.
//!
//! - the seeds `fuzz/seeds/config/` are valid configurations: each must parse and validate;
//! - the regressions `tests/fuzz_regressions/config/` are inputs that once crashed the
//!   fuzzer: each must now return (an `Err`, unless its name starts with `ok-`).

use std::path::{Path, PathBuf};

use anyhow::Result;
use lv_bench::config::{Resolved, RunConfig};

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_none_or(|e| e != "md"))
        .collect();
    v.sort();
    v
}

/// What the fuzz target runs; `None` for non-UTF-8 input (which the target skips).
fn replay(bytes: &[u8]) -> Option<Result<Resolved>> {
    let text = std::str::from_utf8(bytes).ok()?;
    let (toml, overrides) = match text.split_once('\0') {
        Some((t, o)) => (t, o.lines().map(str::to_string).collect::<Vec<_>>()),
        None => (text, Vec::new()),
    };
    Some(RunConfig::parse(toml, &overrides).and_then(RunConfig::validate))
}

#[test]
fn config_seeds_validate() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/config");
    let seeds = files(&dir);
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    for p in seeds {
        let r = replay(&std::fs::read(&p).unwrap()).expect("seeds are UTF-8");
        let res = r.unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
        assert!(res.cfg.train.steps >= 1 && res.cfg.train.batch >= 2);
    }
}

#[test]
fn config_regressions_return() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions/config");
    for p in files(&dir) {
        let Some(r) = replay(&std::fs::read(&p).unwrap()) else {
            continue;
        };
        let ok = p.file_name().unwrap().to_string_lossy().starts_with("ok-");
        assert_eq!(r.is_ok(), ok, "{}: {:?}", p.display(), r.err());
    }
}
