//! `lv_metrics::io::parse_npy` (the byte-level core of `load_npy` / `load_samples`): it must
//! return `Ok` or `Err` for any input, never panic, abort or hang.
//!
//! Each input is used twice: as raw file bytes, and structure-aware, as the recipe of a
//! well-formed `.npy` file (dtype, order, shape, structured-dtype nesting, then data), so
//! that the fuzzer reaches shapes and headers that byte mutations of the seeds rarely hit.
#![no_main]

use libfuzzer_sys::fuzz_target;

fn check(bytes: &[u8]) {
    if let Ok(a) = lv_metrics::io::parse_npy(bytes, "fuzz.npy") {
        // The documented guarantees of an `Ok`: a non-empty [n, d] array of finite values.
        assert!(a.nrows() > 0 && a.ncols() > 0);
        assert!(a.iter().all(|v| v.is_finite()));
    }
}

/// A `.npy` file built from `data`: byte 0 picks the dtype, the order and the number of
/// dimensions; byte 1 the nesting of a structured dtype around it; then two bytes per
/// dimension (a set high bit makes the dimension huge); the rest is the array data.
fn structured(data: &[u8]) -> Option<Vec<u8>> {
    let (&sel, rest) = data.split_first()?;
    let (&nest, mut rest) = rest.split_first()?;
    let dtypes = ["<f8", ">f8", "<f4", ">f4", "|u1", "<i8", "<f2", "|b1"];
    let mut descr = format!("'{}'", dtypes[usize::from(sel & 7)]);
    for _ in 0..nest % 32 {
        descr = format!("[('f', {descr})]");
    }
    let fortran = if sel & 8 != 0 { "True" } else { "False" };
    let ndim = usize::from(sel >> 4) % 4;
    let mut dims = Vec::with_capacity(ndim);
    for _ in 0..ndim {
        let (d, r) = rest.split_first_chunk::<2>()?;
        rest = r;
        let d = u64::from(u16::from_le_bytes(*d));
        dims.push(if d & 0x8000 != 0 {
            (d & 0x7fff) << 40
        } else {
            d
        });
    }
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!(
            "({})",
            dims.iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header =
        format!("{{'descr': {descr}, 'fortran_order': {fortran}, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&u16::try_from(header.len()).ok()?.to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(rest);
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if let Some(file) = structured(data) {
        check(&file);
    }
});
