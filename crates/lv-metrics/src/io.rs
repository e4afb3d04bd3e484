//! Loading sample sets (`[n, d]` arrays) from `.npy` and CSV files.
//!
//! Every error names the file and the problem (missing file, malformed row
//! with its line number, ragged rows, non-finite values with row and column,
//! empty file, wrong number of dimensions).

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use ndarray::{Array2, ArrayView2};
use ndarray_npy::{ReadDataError, ReadNpyError, ReadNpyExt, ReadableElement};
use py_literal::Value as PyValue;

/// Loads samples from `path`: `.npy` files (detected by the NumPy magic
/// bytes or the extension) via [`load_npy`], anything else as CSV via
/// [`load_csv`].
pub fn load_samples(path: impl AsRef<Path>) -> Result<Array2<f64>> {
    let path = path.as_ref();
    let bytes = read_file(path)?;
    let is_npy = bytes.starts_with(b"\x93NUMPY")
        || path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("npy"));
    if is_npy {
        parse_npy(&bytes, &path.display().to_string())
    } else {
        let text = String::from_utf8(bytes)
            .map_err(|e| anyhow!("{}: not a UTF-8 text (CSV) file: {e}", path.display()))?;
        parse_csv(&text, &path.display().to_string())
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    if !path.exists() {
        bail!("{}: file not found", path.display());
    }
    std::fs::read(path).with_context(|| format!("{}: cannot read file", path.display()))
}

/// Loads a 2-D `[n, d]` `.npy` array of `float64` or `float32` (converted to
/// f64; little- or big-endian; C or Fortran order).
pub fn load_npy(path: impl AsRef<Path>) -> Result<Array2<f64>> {
    let path = path.as_ref();
    let bytes = read_file(path)?;
    parse_npy(&bytes, &path.display().to_string())
}

fn npy_error(name: &str, e: ReadNpyError) -> anyhow::Error {
    match e {
        ReadNpyError::WrongNdim(Some(want), got) => anyhow!(
            "{name}: expected a {want}-D array [n, d] of samples, file has {got} dimension(s)"
        ),
        ReadNpyError::WrongDescriptor(d) => {
            anyhow!("{name}: unsupported dtype {d} (expected float64 '<f8' or float32 '<f4')")
        }
        other => anyhow!("{name}: invalid .npy file: {other}"),
    }
}

/// Parses the bytes of a `.npy` file (see [`load_npy`]); `name` is used in error messages.
pub fn parse_npy(bytes: &[u8], name: &str) -> Result<Array2<f64>> {
    if bytes.is_empty() {
        bail!("{name}: empty file");
    }
    check_npy_header(bytes, name)?;
    let arr = Array2::<Sample>::read_npy(bytes)
        .map_err(|e| npy_error(name, e))?
        .mapv(|s| s.0);
    validate(arr.view(), name)?;
    Ok(arr.as_standard_layout().into_owned())
}

/// Deepest bracket nesting accepted in a `.npy` header. The header is a Python literal
/// parsed by `py_literal`, whose parser backtracks exponentially in the nesting depth
/// (20 nested `[` took 27 s, found by `cargo xtask fuzz`); a float array's header nests 2.
const NPY_MAX_HEADER_DEPTH: usize = 4;

/// Cheap checks of the `.npy` prefix before `ndarray-npy` parses it: the declared header
/// length must fit in the file (it is allocated up front, up to 4 GiB) and the header must
/// not nest brackets deeper than [`NPY_MAX_HEADER_DEPTH`]. Anything else is left to
/// `ndarray-npy`, which reports it.
fn check_npy_header(bytes: &[u8], name: &str) -> Result<()> {
    let (prefix, header_len): (usize, usize) = match bytes {
        [0x93, b'N', b'U', b'M', b'P', b'Y', 1, _, a, b, ..] => {
            (10, usize::from(u16::from_le_bytes([*a, *b])))
        }
        [0x93, b'N', b'U', b'M', b'P', b'Y', 2 | 3, _, a, b, c, d, ..] => {
            (12, u32::from_le_bytes([*a, *b, *c, *d]) as usize)
        }
        _ => return Ok(()),
    };
    let Some(header) = bytes.get(prefix..prefix.saturating_add(header_len)) else {
        bail!(
            "{name}: invalid .npy file: header length {header_len} exceeds the file size ({} bytes)",
            bytes.len()
        );
    };
    let mut depth = 0usize;
    for &c in header {
        match c {
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > NPY_MAX_HEADER_DEPTH {
                    bail!(
                        "{name}: invalid .npy file: header nests brackets deeper than \
                         {NPY_MAX_HEADER_DEPTH} levels"
                    );
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    // ndarray-npy unwraps `from_shape_vec`, which rejects a shape whose non-zero lengths
    // multiply past isize::MAX even when a zero length makes it empty: `(0, 2**63)`
    // panicked (found by `cargo xtask fuzz`). Every `'shape'` entry is checked (the parser's
    // own header rules are left to it).
    let Ok(text) = std::str::from_utf8(header) else {
        return Ok(());
    };
    let Ok(PyValue::Dict(entries)) = text.strip_suffix('\n').unwrap_or(text).parse() else {
        return Ok(());
    };
    for (key, value) in &entries {
        let (PyValue::String(k), Some(dims)) = (key, value.as_tuple()) else {
            continue;
        };
        if k != "shape" {
            continue;
        }
        let mut n: usize = 1;
        for d in dims {
            let Some(d) = d
                .as_integer()
                .and_then(|i| i.to_string().parse::<usize>().ok())
            else {
                continue; // not a valid length: ndarray-npy reports it
            };
            if d != 0 {
                n = n
                    .checked_mul(d)
                    .filter(|&n| n <= isize::MAX as usize)
                    .with_context(|| {
                        format!("{name}: invalid .npy file: shape {value} is too large")
                    })?;
            }
        }
    }
    Ok(())
}

/// A sample value read from `<f8`, `>f8`, `<f4` or `>f4` data. The data length is checked
/// against the header's shape before anything is allocated: `ndarray-npy`'s own f64/f32
/// readers allocate the declared number of elements first, so an 86-byte file declaring
/// 10^16 elements aborted the process (found by `cargo xtask fuzz`).
#[derive(Clone, Copy)]
struct Sample(f64);

impl ReadableElement for Sample {
    fn read_to_end_exact_vec<R: std::io::Read>(
        mut reader: R,
        type_desc: &PyValue,
        len: usize,
    ) -> std::result::Result<Vec<Self>, ReadDataError> {
        let (size, big_endian) = match type_desc {
            PyValue::String(s) if s == "<f8" => (8, false),
            PyValue::String(s) if s == ">f8" => (8, true),
            PyValue::String(s) if s == "<f4" => (4, false),
            PyValue::String(s) if s == ">f4" => (4, true),
            other => return Err(ReadDataError::WrongDescriptor(other.clone())),
        };
        let mut data = Vec::new();
        reader.read_to_end(&mut data)?;
        let want = len.checked_mul(size).ok_or(ReadDataError::MissingData)?;
        if data.len() < want {
            return Err(ReadDataError::MissingData);
        }
        if data.len() > want {
            return Err(ReadDataError::ExtraBytes(data.len() - want));
        }
        Ok(data
            .chunks_exact(size)
            .map(|c| {
                Sample(match (size, big_endian) {
                    (8, false) => f64::from_le_bytes(c.try_into().expect("8 bytes")),
                    (8, true) => f64::from_be_bytes(c.try_into().expect("8 bytes")),
                    (_, false) => f64::from(f32::from_le_bytes(c.try_into().expect("4 bytes"))),
                    (_, true) => f64::from(f32::from_be_bytes(c.try_into().expect("4 bytes"))),
                })
            })
            .collect())
    }
}

fn validate(a: ArrayView2<f64>, name: &str) -> Result<()> {
    if a.nrows() == 0 {
        bail!("{name}: empty file (no samples)");
    }
    if a.ncols() == 0 {
        bail!("{name}: samples have dimension 0");
    }
    if let Some(((i, j), v)) = a.indexed_iter().find(|(_, v)| !v.is_finite()) {
        bail!("{name}: non-finite value {v} at row {i}, column {j} (0-based)");
    }
    Ok(())
}

/// Loads a CSV file: comma-separated numbers, one sample per line. If the
/// first non-blank line does not parse as numbers it is a header and is
/// skipped. Blank lines are ignored.
pub fn load_csv(path: impl AsRef<Path>) -> Result<Array2<f64>> {
    let path = path.as_ref();
    let bytes = read_file(path)?;
    let text = String::from_utf8(bytes)
        .map_err(|e| anyhow!("{}: not a UTF-8 text (CSV) file: {e}", path.display()))?;
    parse_csv(&text, &path.display().to_string())
}

fn parse_fields(line: &str) -> std::result::Result<Vec<f64>, (usize, String)> {
    line.split(',')
        .enumerate()
        .map(|(k, f)| {
            let f = f.trim();
            f.parse::<f64>().map_err(|_| (k, f.to_string()))
        })
        .collect()
}

/// Parses CSV text (see [`load_csv`]); `name` is used in error messages.
/// Rows are 0-based sample indices, lines are 1-based file lines.
pub fn parse_csv(text: &str, name: &str) -> Result<Array2<f64>> {
    let mut data: Vec<f64> = Vec::new();
    let mut ncols: Option<usize> = None;
    let mut nrows = 0usize;
    let mut first = true;
    for (li, raw) in text.lines().enumerate() {
        let line_no = li + 1;
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        let parsed = parse_fields(line);
        if first {
            first = false;
            if parsed.is_err() {
                continue; // header
            }
        }
        let vals = parsed.map_err(|(k, f)| {
            anyhow!(
                "{name}: malformed row at line {line_no}: field {} ('{f}') is not a number",
                k + 1
            )
        })?;
        match ncols {
            None => ncols = Some(vals.len()),
            Some(c) if c != vals.len() => bail!(
                "{name}: ragged rows: line {line_no} has {} fields, expected {c}",
                vals.len()
            ),
            _ => {}
        }
        if let Some(j) = vals.iter().position(|v| !v.is_finite()) {
            bail!(
                "{name}: non-finite value {} at row {nrows}, column {j} (0-based; line {line_no})",
                vals[j]
            );
        }
        data.extend_from_slice(&vals);
        nrows += 1;
    }
    let Some(d) = ncols else {
        bail!("{name}: empty file (no data rows)");
    };
    Array2::from_shape_vec((nrows, d), data).map_err(|e| anyhow!("{name}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;
    use ndarray_npy::WriteNpyExt;
    use std::path::PathBuf;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lv-metrics-io-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    #[test]
    fn npy_round_trip_f64_and_f32() {
        let a = array![[1.0, 2.5, -3.0], [4.0, 5.0, 6.25]];
        let p = tmp("a64.npy");
        a.write_npy(std::fs::File::create(&p).unwrap()).unwrap();
        assert_eq!(load_samples(&p).unwrap(), a);
        let b = a.mapv(|v| v as f32);
        let p = tmp("a32.npy");
        b.write_npy(std::fs::File::create(&p).unwrap()).unwrap();
        assert_eq!(load_npy(&p).unwrap(), a);
    }

    #[test]
    fn npy_errors() {
        let p = tmp("one_d.npy");
        ndarray::arr1(&[1.0f64, 2.0])
            .write_npy(std::fs::File::create(&p).unwrap())
            .unwrap();
        let e = load_samples(&p).unwrap_err().to_string();
        assert!(e.contains("one_d.npy") && e.contains("dimension"), "{e}");
        let p = tmp("nan.npy");
        array![[1.0, 2.0], [3.0, f64::NAN]]
            .write_npy(std::fs::File::create(&p).unwrap())
            .unwrap();
        let e = load_samples(&p).unwrap_err().to_string();
        assert!(
            e.contains("nan.npy") && e.contains("row 1, column 1"),
            "{e}"
        );
        let p = tmp("ints.npy");
        array![[1i64, 2]]
            .write_npy(std::fs::File::create(&p).unwrap())
            .unwrap();
        let e = load_samples(&p).unwrap_err().to_string();
        assert!(e.contains("dtype"), "{e}");
    }

    #[test]
    fn missing_file() {
        let e = load_samples(tmp("does_not_exist.csv"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("does_not_exist.csv") && e.contains("not found"),
            "{e}"
        );
    }

    #[test]
    fn csv_with_and_without_header() {
        let want = array![[1.0, 2.0], [3.0, -4.5e-1]];
        let p = tmp("h.csv");
        std::fs::write(&p, "x,y\n1,2\n3, -4.5e-1\n").unwrap();
        assert_eq!(load_samples(&p).unwrap(), want);
        let p = tmp("noh.csv");
        std::fs::write(&p, "1,2\n\n3,-0.45\n\n").unwrap();
        assert_eq!(load_csv(&p).unwrap(), want);
    }

    #[test]
    fn csv_errors() {
        let e = parse_csv("a,b\n1,2\n3,nan\n", "f.csv")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("f.csv") && e.contains("row 1") && e.contains("column 1"),
            "{e}"
        );
        let e = parse_csv("1,2\n3,4,5\n", "g.csv").unwrap_err().to_string();
        assert!(
            e.contains("g.csv") && e.contains("ragged") && e.contains("line 2"),
            "{e}"
        );
        let e = parse_csv("1,2\n3,abc\n", "m.csv").unwrap_err().to_string();
        assert!(
            e.contains("malformed") && !e.contains("line 3") && e.contains("line 2"),
            "{e}"
        );
        let e = parse_csv("", "e.csv").unwrap_err().to_string();
        assert!(e.contains("e.csv") && e.contains("empty"), "{e}");
        let e = parse_csv("x,y\n", "h.csv").unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        let p = tmp("empty.csv");
        std::fs::write(&p, "").unwrap();
        let e = load_samples(&p).unwrap_err().to_string();
        assert!(e.contains("empty.csv") && e.contains("empty"), "{e}");
        let e = parse_csv("1,inf\n", "i.csv").unwrap_err().to_string();
        assert!(e.contains("row 0, column 1"), "{e}");
    }
}
