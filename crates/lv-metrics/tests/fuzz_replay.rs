//! Replays the fuzz inputs of the `npy` and `csv` targets (`cargo xtask fuzz`) through the
//! readers, so that CI exercises them without running the fuzzer:
//!
//! - the seeds `fuzz/seeds/{npy,csv}/` are valid files whose name ends in `_<rows>x<cols>`:
//!   each must parse, with that shape and finite values, by bytes and by path;
//! - the regressions `tests/fuzz_regressions/{npy,csv}/` are inputs that once crashed the
//!   fuzzer: each must now return (an `Err`, unless its name starts with `ok-`).

use std::path::{Path, PathBuf};

use lv_metrics::io::{load_samples, parse_csv, parse_npy};

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_none_or(|e| e != "md"))
        .collect();
    v.sort();
    v
}

fn seeds(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/seeds")
        .join(target);
    let v = files(&dir);
    assert!(!v.is_empty(), "no seeds in {}", dir.display());
    v
}

fn regressions(target: &str) -> Vec<PathBuf> {
    files(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fuzz_regressions")
            .join(target),
    )
}

/// `(rows, cols)` from a file name ending in `_<rows>x<cols>.<ext>`.
fn shape_of(p: &Path) -> (usize, usize) {
    let stem = p.file_stem().unwrap().to_str().unwrap();
    let (r, c) = stem.rsplit('_').next().unwrap().split_once('x').unwrap();
    (r.parse().unwrap(), c.parse().unwrap())
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn npy_seeds_parse_with_their_shape() {
    for p in seeds("npy") {
        let bytes = std::fs::read(&p).unwrap();
        let a = parse_npy(&bytes, &name(&p)).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
        assert_eq!(a.dim(), shape_of(&p), "{}", p.display());
        assert!(a.iter().all(|v| v.is_finite()));
        assert_eq!(load_samples(&p).unwrap(), a, "{}", p.display());
    }
}

#[test]
fn csv_seeds_parse_with_their_shape() {
    for p in seeds("csv") {
        let text = std::fs::read_to_string(&p).unwrap();
        let a = parse_csv(&text, &name(&p)).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
        assert_eq!(a.dim(), shape_of(&p), "{}", p.display());
        assert!(a.iter().all(|v| v.is_finite()));
        assert_eq!(load_samples(&p).unwrap(), a, "{}", p.display());
    }
}

#[test]
fn npy_regressions_return() {
    for p in regressions("npy") {
        let bytes = std::fs::read(&p).unwrap();
        let r = parse_npy(&bytes, &name(&p));
        assert_eq!(
            r.is_ok(),
            name(&p).starts_with("ok-"),
            "{}: {r:?}",
            p.display()
        );
    }
}

#[test]
fn csv_regressions_return() {
    for p in regressions("csv") {
        let bytes = std::fs::read(&p).unwrap();
        let Ok(text) = std::str::from_utf8(&bytes) else {
            continue; // the fuzz target skips non-UTF-8 input too
        };
        let r = parse_csv(text, &name(&p));
        assert_eq!(
            r.is_ok(),
            name(&p).starts_with("ok-"),
            "{}: {r:?}",
            p.display()
        );
    }
}
