//! `lv_metrics::io::parse_csv` on arbitrary UTF-8 text: `Ok` or `Err`, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(a) = lv_metrics::io::parse_csv(text, "fuzz.csv") {
        assert!(a.nrows() > 0 && a.ncols() > 0);
        assert!(a.iter().all(|v| v.is_finite()));
    }
});
