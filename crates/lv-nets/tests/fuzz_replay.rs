//! Replays the inputs of the `checkpoint` fuzz target (`cargo xtask fuzz`) through
//! `load_tensors`, so that CI exercises them without running the fuzzer:
//!
//! - the seeds `fuzz/seeds/checkpoint/` are valid safetensors files: each must load with at
//!   least one tensor, and an embedded `meta.json` u8 tensor must hold valid JSON;
//! - the regressions `tests/fuzz_regressions/checkpoint/` are inputs that once crashed the
//!   fuzzer: each must now return (an `Err`, unless its name starts with `ok-`).

use std::path::{Path, PathBuf};

use lv_nets::checkpoint::load_tensors;

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_none_or(|e| e != "md"))
        .collect();
    v.sort();
    v
}

#[test]
fn checkpoint_seeds_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/checkpoint");
    let seeds = files(&dir);
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    for p in seeds {
        let t = load_tensors(&p).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
        assert!(!t.is_empty(), "{}", p.display());
        for (name, t) in &t {
            assert!(t.numel() > 0, "{}: {name} is empty", p.display());
            if name == "meta.json" {
                let bytes = Vec::<u8>::try_from(t).unwrap();
                serde_json::from_slice::<serde_json::Value>(&bytes)
                    .unwrap_or_else(|e| panic!("{}: meta.json: {e}", p.display()));
            }
        }
    }
}

#[test]
fn checkpoint_regressions_return() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions/checkpoint");
    for p in files(&dir) {
        let r = load_tensors(&p);
        let ok = p.file_name().unwrap().to_string_lossy().starts_with("ok-");
        assert_eq!(r.is_ok(), ok, "{}: {:?}", p.display(), r.map(|t| t.len()));
    }
}
