//! Shared helpers: cached constant tensors, embedded-data parsing, rejection sampling and
//! one-dimensional quadrature.

use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use tch::{Device, Kind, Tensor};

/// ½·log(2π).
pub(crate) const HALF_LOG_2PI: f64 = 0.918_938_533_204_672_8;

/// A constant tensor (means, Cholesky factors, bin counts, …) held as float64 on the CPU, with
/// copies converted to each requested `(device, kind)` cached on first use.
///
/// `tch::Tensor` is `Send` but not `Sync`; the mutex makes the targets `Sync` as the
/// [`lv_core::Target`] trait requires. The cached tensors never require grad.
pub(crate) struct Constant {
    cache: Mutex<Vec<(Device, Kind, Tensor)>>,
}

impl Constant {
    /// A constant from row-major float64 data of the given shape.
    pub(crate) fn from_slice(data: &[f64], shape: &[i64]) -> Self {
        Self::from_tensor(Tensor::from_slice(data).reshape(shape))
    }

    /// A constant from a tensor (copied to float64 on the CPU, detached).
    pub(crate) fn from_tensor(t: Tensor) -> Self {
        let master = t.detach().to_kind(Kind::Double).to_device(Device::Cpu);
        Constant {
            cache: Mutex::new(vec![(Device::Cpu, Kind::Double, master)]),
        }
    }

    /// The constant in `kind` on `device` (a shallow clone of the cached copy).
    pub(crate) fn get(&self, device: Device, kind: Kind) -> Tensor {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, _, t)) = cache.iter().find(|(d, k, _)| *d == device && *k == kind) {
            return t.shallow_clone();
        }
        let t = cache[0].2.to_kind(kind).to_device(device);
        cache.push((device, kind, t.shallow_clone()));
        t
    }

    /// The constant like `x` (same device and kind).
    pub(crate) fn like(&self, x: &Tensor) -> Tensor {
        self.get(x.device(), x.kind())
    }
}

/// Parses a headerless numeric CSV (one row per line, `,`-separated) into rows.
/// Every row must have `cols` entries.
pub(crate) fn parse_csv(text: &str, cols: usize, what: &str) -> Result<Vec<Vec<f64>>> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let row: Vec<f64> = line
            .split(',')
            .map(|s| s.trim().parse::<f64>())
            .collect::<std::result::Result<_, _>>()
            .with_context(|| format!("{what}: line {} is not numeric", i + 1))?;
        if row.len() != cols {
            bail!(
                "{what}: line {} has {} columns, expected {cols}",
                i + 1,
                row.len()
            );
        }
        rows.push(row);
    }
    Ok(rows)
}

/// Parses a headerless CSV with exactly `rows × cols` entries into a flat row-major vector.
pub(crate) fn parse_table(text: &str, rows: usize, cols: usize, what: &str) -> Result<Vec<f64>> {
    let table = parse_csv(text, cols, what)?;
    if table.len() != rows {
        bail!("{what}: {} rows, expected {rows}", table.len());
    }
    Ok(table.into_iter().flatten().collect())
}

/// Rejection sampling in batches: `draw(m)` returns `m` candidates `[m, …]` and a boolean
/// acceptance mask `[m]`; candidates are drawn until `n` are accepted, and the first `n`
/// accepted ones are returned (so the result is `n` independent draws of the accepted law).
/// `accept_rate` is only a hint for the batch size.
pub(crate) fn rejection_sample(
    n: usize,
    accept_rate: f64,
    mut draw: impl FnMut(i64) -> (Tensor, Tensor),
) -> Tensor {
    let mut parts: Vec<Tensor> = Vec::new();
    let mut have = 0usize;
    loop {
        let missing = n.saturating_sub(have);
        let m = ((missing as f64 / accept_rate.max(1e-3)) * 1.1).ceil() as i64 + 16;
        let (cand, mask) = draw(m);
        let idx = mask.nonzero().squeeze_dim(-1);
        let acc = cand.index_select(0, &idx);
        have += acc.size()[0] as usize;
        parts.push(acc);
        if have >= n {
            break;
        }
    }
    Tensor::cat(&parts, 0).narrow(0, 0, n as i64)
}

/// Composite Simpson rule for ∫_a^b f with `intervals` (rounded up to even) sub-intervals.
pub(crate) fn simpson(f: impl Fn(f64) -> f64, a: f64, b: f64, intervals: usize) -> f64 {
    let n = intervals + intervals % 2;
    let h = (b - a) / n as f64;
    let mut s = f(a) + f(b);
    for i in 1..n {
        let w = if i % 2 == 1 { 4.0 } else { 2.0 };
        s += w * f(a + h * i as f64);
    }
    s * h / 3.0
}

/// Binary log-sum-exp, log(e^a + e^b), stable.
pub(crate) fn log_add_exp(a: f64, b: f64) -> f64 {
    let m = a.max(b);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + ((a - m).exp() + (b - m).exp()).ln()
}

/// `[n, k]` matrix of Σ_j f(x_ij − c_kj) for the rows of `x: [n, d]` and centres `c: [k, d]`,
/// with `f` elementwise. Broadcasts `[n, k, d]` for moderate sizes and loops over the `k`
/// centres for large batches (bounded memory).
pub(crate) fn component_sums(x: &Tensor, c: &Tensor, f: impl Fn(Tensor) -> Tensor) -> Tensor {
    let (n, d) = (x.size()[0], x.size()[1]);
    let k = c.size()[0];
    if n * k * d <= 1 << 24 {
        return f(x.unsqueeze(1) - c.unsqueeze(0)).sum_dim_intlist(-1, false, None::<Kind>);
    }
    let cols: Vec<Tensor> = (0..k)
        .map(|j| f(x - c.get(j).unsqueeze(0)).sum_dim_intlist(-1, false, None::<Kind>))
        .collect();
    Tensor::stack(&cols, 1)
}

/// Squared Euclidean distances `[n, k]` between the rows of `x: [n, d]` and `c: [k, d]`,
/// computed as Σ(x − c)² (no cancellation from the ‖x‖² − 2x·c + ‖c‖² expansion).
pub(crate) fn sq_dists(x: &Tensor, c: &Tensor) -> Tensor {
    component_sums(x, c, |u| u.square())
}

/// e^z, or exactly 0 without computing it where it underflows (z < −745.2; e^z is 0 in f64
/// below −745.13): the same value, without the cost of the exps of far mixture components.
pub(crate) fn exp_or_zero(z: f64) -> f64 {
    if z < -745.2 {
        0.0
    } else {
        z.exp()
    }
}

/// A zeroed f64 scratch slice of length `n` for a host row loop: in `stack` up to 64 entries,
/// else in `heap`.
pub(crate) fn scratch<'a>(
    stack: &'a mut [f64; 64],
    heap: &'a mut Vec<f64>,
    n: usize,
) -> &'a mut [f64] {
    if n <= 64 {
        let s = &mut stack[..n];
        s.fill(0.0);
        s
    } else {
        heap.clear();
        heap.resize(n, 0.0);
        heap
    }
}

/// Row-wise native evaluation on the host for CPU float32 batches that need no graph.
///
/// For `x: [n, d]` on the CPU, of kind float32 and not requiring grad, applies
/// `f(row, out_row)` to every row (in f64 inside `f` where it matters) and returns the `[n, d]`
/// float32 result; otherwise `None` (CUDA, other kinds, or a graph to keep), and the caller
/// uses its tensor path. One fused pass over a `[n, d]` batch replaces the ~10 tensor ops
/// (each a pass over `[n, K]` or `[n, d]` plus allocation) of the tensor expression, which
/// dominated the per-step cost of small targets at B = 2048 (docs/performance.md).
pub(crate) fn native_rows(x: &Tensor, f: impl Fn(&[f32], &mut [f32])) -> Option<Tensor> {
    native_row_blocks::<1>(x, f)
}

/// [`native_rows`] over blocks of `R` rows: `f(x_block, out_block)` gets `R·d` inputs and
/// outputs at a time (so that a loop over the block's rows can run in SIMD lanes). A last,
/// partial block is padded with zero rows, whose outputs are dropped. `f` may keep scratch
/// between blocks.
pub(crate) fn native_row_blocks<const R: usize>(
    x: &Tensor,
    mut f: impl FnMut(&[f32], &mut [f32]),
) -> Option<Tensor> {
    let (n, d) = host_batch_shape(x)?;
    let padded = n.div_ceil(R) * R;
    let mut xs = host_copy(x, n * d);
    xs.resize(padded * d, 0.0);
    let mut out = vec![0f32; padded * d];
    if d > 0 {
        for (xb, ob) in xs.chunks_exact(R * d).zip(out.chunks_exact_mut(R * d)) {
            f(xb, ob);
        }
    }
    out.truncate(n * d);
    Some(Tensor::from_slice(&out).view([n as i64, d as i64]))
}

/// Runs `f` in a function compiled for AVX-512 (or AVX2 + FMA) when the CPU has it, so that
/// loops over lane arrays inlined into `f` vectorise to the widest registers. The arithmetic
/// is the same either way (Rust never fuses a multiply and an add on its own).
pub(crate) fn simd<T>(f: impl FnOnce() -> T) -> T {
    #[cfg(target_arch = "x86_64")]
    {
        static ISA: std::sync::OnceLock<u8> = std::sync::OnceLock::new();
        let isa = *ISA.get_or_init(|| {
            let avx2 =
                std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
            if avx2 && std::is_x86_feature_detected!("avx512f") {
                2
            } else {
                u8::from(avx2)
            }
        });
        // SAFETY: the features were detected at run time.
        match isa {
            2 => return unsafe { simd_avx512(f) },
            1 => return unsafe { simd_avx2(f) },
            _ => {}
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn simd_avx512<T>(f: impl FnOnce() -> T) -> T {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn simd_avx2<T>(f: impl FnOnce() -> T) -> T {
    f()
}

/// [`native_rows`] for a function of two batches of the same shape: `f(x_row, v_row, out_row)`
/// (a Hessian–vector product, say); `None` unless both are CPU float32 `[n, d]` batches
/// without a graph.
pub(crate) fn native_row_pairs(
    x: &Tensor,
    v: &Tensor,
    f: impl Fn(&[f32], &[f32], &mut [f32]),
) -> Option<Tensor> {
    let (n, d) = host_batch_shape(x)?;
    if host_batch_shape(v)? != (n, d) {
        return None;
    }
    let xs = host_copy(x, n * d);
    let vs = host_copy(v, n * d);
    let mut out = vec![0f32; n * d];
    if d > 0 {
        for ((xr, vr), or) in xs
            .chunks_exact(d)
            .zip(vs.chunks_exact(d))
            .zip(out.chunks_exact_mut(d))
        {
            f(xr, vr, or);
        }
    }
    Some(Tensor::from_slice(&out).view([n as i64, d as i64]))
}

/// `(n, d)` of a CPU float32 `[n, d]` batch that needs no graph; `None` otherwise.
fn host_batch_shape(x: &Tensor) -> Option<(usize, usize)> {
    if x.device() != Device::Cpu || x.kind() != Kind::Float || x.requires_grad() {
        return None;
    }
    match x.size()[..] {
        [n, d] => Some((n as usize, d as usize)),
        _ => None,
    }
}

fn host_copy(x: &Tensor, len: usize) -> Vec<f32> {
    let mut xs = vec![0f32; len];
    x.contiguous().view([-1]).copy_data(&mut xs, len);
    xs
}
