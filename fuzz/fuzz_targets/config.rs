//! The TOML configuration path: `RunConfig::parse` followed by `validate`, as `lv train`
//! runs it. Input: UTF-8 text; everything after the first NUL byte is taken as `--set`
//! overrides, one `key=value` per line (so the override code is fuzzed too). `Ok` or
//! `Err`, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lv_bench::config::RunConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (toml, overrides) = match text.split_once('\0') {
        Some((t, o)) => (t, o.lines().map(str::to_string).collect::<Vec<_>>()),
        None => (text, Vec::new()),
    };
    if let Ok(cfg) = RunConfig::parse(toml, &overrides) {
        let _ = cfg.validate();
    }
});
