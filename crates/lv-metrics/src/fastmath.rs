//! Vectorisable numerical kernels: a branch-free `exp`, log-sum-exp over a
//! row, and pairwise distances from a transposed point set.
//!
//! The kernels are written as plain loops over fixed-width lane arrays so
//! that LLVM auto-vectorises them. On x86-64 they are compiled a second time
//! with AVX2+FMA and with AVX-512F enabled, and the best variant is selected
//! at run time (set `LV_METRICS_NO_AVX512` to skip AVX-512), so the crate
//! needs no `-C target-cpu` flag.

/// `exp(x)` accurate to about 2 ulp for `x` in `[-708, 709]`; returns exactly
/// 0 for `x < -708` (where the true value is below 3.3e-308), `+inf` above 709;
/// NaN in, NaN out.
///
/// Range reduction `x = k ln2 + r`, `|r| <= ln2/2`, with `k` obtained by the
/// 1.5·2^52 rounding trick, then a degree-12 Taylor polynomial for `exp(r)`
/// (truncation error < 2e-16 relative) evaluated by Estrin's scheme and a scale by `2^k` built from bits.
#[inline(always)]
pub fn exp(x: f64) -> f64 {
    const LOG2E: f64 = std::f64::consts::LOG2_E;
    const LN2_HI: f64 = 6.931_471_803_691_238e-1;
    const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
    const MAGIC: f64 = 6_755_399_441_055_744.0; // 1.5 * 2^52
                                                // Branch-free (selects only) so that loops over it auto-vectorise.
    let lo = if x < -708.0 { -708.0 } else { x };
    let xc = if lo > 709.0 { 709.0 } else { lo };
    let t = xc * LOG2E + MAGIC;
    let k = t - MAGIC;
    let r = (xc - k * LN2_HI) - k * LN2_LO;
    // Degree-12 Taylor polynomial (1/n! coefficients) by Estrin's scheme
    // (short dependency chains).
    let r2 = r * r;
    let r4 = r2 * r2;
    let r8 = r4 * r4;
    let q0 = 1.0 + r;
    let q1 = 0.5 + r * (1.0 / 6.0);
    let q2 = 1.0 / 24.0 + r * (1.0 / 120.0);
    let q3 = 1.0 / 720.0 + r * (1.0 / 5_040.0);
    let q4 = 1.0 / 40_320.0 + r * (1.0 / 362_880.0);
    let q5 = 1.0 / 3_628_800.0 + r * (1.0 / 39_916_800.0);
    let q6 = 1.0 / 479_001_600.0;
    let s0 = q0 + q1 * r2;
    let s1 = q2 + q3 * r2;
    let s2 = q4 + q5 * r2;
    let t0 = s0 + s1 * r4;
    let t1 = s2 + q6 * r4;
    let p = t0 + t1 * r8;
    // The low 12 bits of t's representation hold k (mod 4096), because
    // MAGIC's low 12 mantissa bits are zero; `(k + 1023) << 52` is 2^k.
    let scale = f64::from_bits(t.to_bits().wrapping_add(1023) << 52);
    let v = p * scale;
    let v = if x < -708.0 { 0.0 } else { v };
    if x > 709.0 {
        f64::INFINITY
    } else {
        v
    }
}

const LANES: usize = 16;

#[inline(always)]
fn max_impl(v: &[f64]) -> f64 {
    let mut acc = [f64::NEG_INFINITY; LANES];
    let chunks = v.chunks_exact(LANES);
    let rem = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
        }
    }
    let mut m = f64::NEG_INFINITY;
    for &a in acc.iter().chain(rem) {
        if a > m {
            m = a;
        }
    }
    m
}

/// `(max_j v_j, min_j v_j)` (`(-inf, +inf)` for an empty slice).
#[inline(always)]
fn minmax_impl(v: &[f64]) -> (f64, f64) {
    let mut hi = [f64::NEG_INFINITY; LANES];
    let mut lo = [f64::INFINITY; LANES];
    let chunks = v.chunks_exact(LANES);
    let rem = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            hi[l] = if c[l] > hi[l] { c[l] } else { hi[l] };
            lo[l] = if c[l] < lo[l] { c[l] } else { lo[l] };
        }
    }
    let (mut m, mut n) = (f64::NEG_INFINITY, f64::INFINITY);
    for (&a, &b) in hi.iter().zip(&lo) {
        m = if a > m { a } else { m };
        n = if b < n { b } else { n };
    }
    for &a in rem {
        m = if a > m { a } else { m };
        n = if a < n { a } else { n };
    }
    (m, n)
}

/// `out_j <- g_j - c_j * inv_eps`, then returns `LSE_j out_j`.
#[inline(always)]
fn lse_shift_impl(g: &[f64], c: &[f64], out: &mut [f64], inv_eps: f64) -> f64 {
    debug_assert!(g.len() == out.len() && c.len() == out.len());
    for ((o, &gj), &cj) in out.iter_mut().zip(g).zip(c) {
        *o = gj - cj * inv_eps;
    }
    let (m, lo) = minmax_impl(out);
    if !m.is_finite() {
        return m;
    }
    let mut acc = [0.0f64; LANES];
    if m - lo < LSE_SKIP {
        // No term can be dropped: plain vectorised sum.
        let chunks = out.chunks_exact(LANES);
        let rem = chunks.remainder();
        for ch in chunks {
            for l in 0..LANES {
                acc[l] += exp(ch[l] - m);
            }
        }
        let mut s: f64 = acc.iter().sum();
        for &r in rem {
            s += exp(r - m);
        }
        return m + s.ln();
    }
    // Blocks whose every term is below `m − LSE_SKIP` are skipped: each such
    // term is < e^-50 ≈ 2e-22 of the largest one, so even 10^5 of them change
    // the sum (≥ 1) by < 2e-17, below f64 rounding. With a small ε (the
    // sde_sampler default 1e-3) most blocks of a row are skipped.
    let thr = m - LSE_SKIP;
    const BLOCK: usize = 4 * LANES;
    let blocks = out.chunks_exact(BLOCK);
    let rem = blocks.remainder();
    for b in blocks {
        // Vertical max over the block's four lane groups, then one
        // horizontal reduction per block.
        let mut cm = [f64::NEG_INFINITY; LANES];
        for ch in b.chunks_exact(LANES) {
            for l in 0..LANES {
                cm[l] = if ch[l] > cm[l] { ch[l] } else { cm[l] };
            }
        }
        let mut top = f64::NEG_INFINITY;
        for c in cm {
            top = if c > top { c } else { top };
        }
        if top < thr {
            continue;
        }
        for ch in b.chunks_exact(LANES) {
            for l in 0..LANES {
                acc[l] += exp(ch[l] - m);
            }
        }
    }
    let mut s: f64 = acc.iter().sum();
    for &r in rem {
        s += exp(r - m);
    }
    m + s.ln()
}

/// Terms more than this many nats below a row's maximum are dropped from a
/// log-sum-exp in whole blocks (see `lse_shift_impl`).
pub const LSE_SKIP: f64 = 50.0;

/// `Σ_j exp(s_j + g_j - c_j * inv_eps) * c_j` and `Σ_j exp(...)` for one row.
#[inline(always)]
fn plan_row_impl(s: f64, g: &[f64], c: &[f64], inv_eps: f64) -> (f64, f64) {
    let mut acc_pc = [0.0f64; LANES];
    let mut acc_p = [0.0f64; LANES];
    let gc = g.chunks_exact(LANES);
    let cc = c.chunks_exact(LANES);
    let (gr, cr) = (gc.remainder(), cc.remainder());
    for (gch, cch) in gc.zip(cc) {
        for l in 0..LANES {
            let p = exp(s + gch[l] - cch[l] * inv_eps);
            acc_p[l] += p;
            acc_pc[l] += p * cch[l];
        }
    }
    let mut pc: f64 = acc_pc.iter().sum();
    let mut p: f64 = acc_p.iter().sum();
    for (&gj, &cj) in gr.iter().zip(cr) {
        let e = exp(s + gj - cj * inv_eps);
        p += e;
        pc += e * cj;
    }
    (pc, p)
}

/// Dijkstra relaxation of one row for the assignment solver:
/// `h_j = base + c_j − vs_j`; where `h_j < dist_j`, set `dist_j = h_j` and
/// `pred_j = i`. Returns `(min_j dist_j, first j attaining it)` after the
/// update (`(+∞, 0)` if every `dist_j` is `+∞`).
#[inline(always)]
fn relax_impl(
    c: &[f64],
    vs: &[f64],
    dist: &mut [f64],
    pred: &mut [u32],
    base: f64,
    i: u32,
) -> (f64, usize) {
    let n = dist.len();
    let (c, vs, pred) = (&c[..n], &vs[..n], &mut pred[..n]);
    let mut acc = [f64::INFINITY; LANES];
    let mut arg = [0u64; LANES];
    let dc = dist.chunks_exact_mut(LANES);
    let pc = pred.chunks_exact_mut(LANES);
    let cc = c.chunks_exact(LANES);
    let vc = vs.chunks_exact(LANES);
    let rest = n - n % LANES;
    let mut base_j = 0u64;
    for (((d, p), c), v) in dc.zip(pc).zip(cc).zip(vc) {
        for l in 0..LANES {
            let h = base + c[l] - v[l];
            let better = h < d[l];
            d[l] = if better { h } else { d[l] };
            p[l] = if better { i } else { p[l] };
            let lower = d[l] < acc[l];
            acc[l] = if lower { d[l] } else { acc[l] };
            arg[l] = if lower { base_j + l as u64 } else { arg[l] };
        }
        base_j += LANES as u64;
    }
    // Minimum over lanes; among equal minima the smallest index.
    let (mut m, mut a) = (f64::INFINITY, usize::MAX);
    for l in 0..LANES {
        if acc[l] < m || (acc[l] == m && (arg[l] as usize) < a) {
            m = acc[l];
            a = arg[l] as usize;
        }
    }
    for j in rest..n {
        let h = base + c[j] - vs[j];
        if h < dist[j] {
            dist[j] = h;
            pred[j] = i;
        }
        if dist[j] < m {
            m = dist[j];
            a = j;
        }
    }
    if m == f64::INFINITY {
        a = 0;
    }
    (m, a)
}

/// `buf_j = Σ_k (x_k - yt[k*m + j])^2` (optionally square-rooted), for a
/// point `x` against `m` points stored transposed (`d × m`, row-major).
#[inline(always)]
fn dist_row_impl(x: &[f64], yt: &[f64], m: usize, buf: &mut [f64], sqrt: bool) {
    buf[..m].fill(0.0);
    for (k, &xk) in x.iter().enumerate() {
        let col = &yt[k * m..(k + 1) * m];
        for (b, &y) in buf[..m].iter_mut().zip(col) {
            let d = xk - y;
            *b += d * d;
        }
    }
    if sqrt {
        for b in buf[..m].iter_mut() {
            *b = b.sqrt();
        }
    }
}

macro_rules! simd_variant {
    ($modname:ident, $feat:literal) => {
        #[cfg(target_arch = "x86_64")]
        mod $modname {
            #[target_feature(enable = $feat)]
            pub unsafe fn lse_shift(g: &[f64], c: &[f64], out: &mut [f64], inv_eps: f64) -> f64 {
                super::lse_shift_impl(g, c, out, inv_eps)
            }
            #[target_feature(enable = $feat)]
            pub unsafe fn plan_row(s: f64, g: &[f64], c: &[f64], inv_eps: f64) -> (f64, f64) {
                super::plan_row_impl(s, g, c, inv_eps)
            }
            #[target_feature(enable = $feat)]
            pub unsafe fn relax(
                c: &[f64],
                vs: &[f64],
                dist: &mut [f64],
                pred: &mut [u32],
                base: f64,
                i: u32,
            ) -> (f64, usize) {
                super::relax_impl(c, vs, dist, pred, base, i)
            }
            #[target_feature(enable = $feat)]
            pub unsafe fn max(v: &[f64]) -> f64 {
                super::max_impl(v)
            }
            #[target_feature(enable = $feat)]
            pub unsafe fn dist_row(x: &[f64], yt: &[f64], m: usize, buf: &mut [f64], sqrt: bool) {
                super::dist_row_impl(x, yt, m, buf, sqrt)
            }
        }
    };
}
simd_variant!(avx2, "avx2,fma");

mod generic {
    pub fn lse_shift(g: &[f64], c: &[f64], out: &mut [f64], inv_eps: f64) -> f64 {
        super::lse_shift_impl(g, c, out, inv_eps)
    }
    pub fn plan_row(s: f64, g: &[f64], c: &[f64], inv_eps: f64) -> (f64, f64) {
        super::plan_row_impl(s, g, c, inv_eps)
    }
    pub fn dist_row(x: &[f64], yt: &[f64], m: usize, buf: &mut [f64], sqrt: bool) {
        super::dist_row_impl(x, yt, m, buf, sqrt)
    }
    pub fn max(v: &[f64]) -> f64 {
        super::max_impl(v)
    }
    pub fn relax(
        c: &[f64],
        vs: &[f64],
        dist: &mut [f64],
        pred: &mut [u32],
        base: f64,
        i: u32,
    ) -> (f64, usize) {
        super::relax_impl(c, vs, dist, pred, base, i)
    }
}
simd_variant!(avx512, "avx512f,avx2,fma");

/// Instruction sets available at run time (detected once).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Isa {
    Generic,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

fn isa() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 =
                std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
            if avx2
                && std::is_x86_feature_detected!("avx512f")
                && std::env::var_os("LV_METRICS_NO_AVX512").is_none()
            {
                return Isa::Avx512;
            }
            if avx2 {
                return Isa::Avx2;
            }
        }
        Isa::Generic
    })
}

macro_rules! dispatch {
    ($f:ident($($arg:expr),*)) => {
        match isa() {
            // SAFETY: the CPU supports the enabled features (checked at run time).
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { avx512::$f($($arg),*) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { avx2::$f($($arg),*) },
            Isa::Generic => generic::$f($($arg),*),
        }
    };
}

/// Writes `out_j = g_j − c_j / ε` (with `inv_eps = 1/ε`) and returns
/// `log Σ_j exp(out_j)` with the max trick (`-inf` for an empty row).
pub fn lse_shift(g: &[f64], c: &[f64], out: &mut [f64], inv_eps: f64) -> f64 {
    assert!(g.len() == out.len() && c.len() == out.len());
    dispatch!(lse_shift(g, c, out, inv_eps))
}

/// For one row of an entropic plan `P_ij = exp(s + g_j - c_j/ε)`, returns
/// `(Σ_j P_ij c_j, Σ_j P_ij)`.
pub fn plan_row(s: f64, g: &[f64], c: &[f64], inv_eps: f64) -> (f64, f64) {
    assert_eq!(g.len(), c.len());
    dispatch!(plan_row(s, g, c, inv_eps))
}

/// Squared (or, with `sqrt`, plain) Euclidean distances from the point `x`
/// (length d) to `m` points stored transposed in `yt` (`d × m`, row-major),
/// written to `buf[..m]`. Computed as `Σ_k (x_k − y_k)²` (no norm expansion,
/// so identical points give exactly 0).
pub fn dist_row(x: &[f64], yt: &[f64], m: usize, buf: &mut [f64], sqrt: bool) {
    assert!(yt.len() == x.len() * m && buf.len() >= m);
    dispatch!(dist_row(x, yt, m, buf, sqrt))
}

/// `max_j v_j` (`-inf` for an empty slice; NaNs are ignored unless all are NaN).
pub fn max(v: &[f64]) -> f64 {
    dispatch!(max(v))
}

/// One Dijkstra relaxation sweep of the assignment solver ([`crate::lap`]):
/// for every `j`, `h = base + c_j − vs_j`; if `h < dist_j` then
/// `dist_j = h`, `pred_j = i`. Returns `(min_j dist_j, first argmin)` after
/// the sweep. Columns with `vs_j = −∞` are never updated (`h = +∞`).
pub fn relax(
    c: &[f64],
    vs: &[f64],
    dist: &mut [f64],
    pred: &mut [u32],
    base: f64,
    i: u32,
) -> (f64, usize) {
    assert!(c.len() == dist.len() && vs.len() == dist.len() && pred.len() == dist.len());
    dispatch!(relax(c, vs, dist, pred, base, i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std() {
        let mut worst: f64 = 0.0;
        let mut x = -707.9;
        while x < 709.0 {
            let rel = (exp(x) - x.exp()).abs() / x.exp();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 1e-15, "worst relative error {worst}");
        assert_eq!(exp(-800.0), 0.0);
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f64::NEG_INFINITY), 0.0);
        assert!(exp(1000.0).is_infinite());
    }

    #[test]
    fn lse_matches_naive() {
        let g: Vec<f64> = (0..37).map(|i| (i as f64 * 0.37).sin() * 5.0).collect();
        let c: Vec<f64> = (0..37).map(|i| (i as f64 * 0.11).cos().abs()).collect();
        let mut buf = vec![0.0; c.len()];
        let inv_eps = 10.0;
        let got = lse_shift(&g, &c, &mut buf, inv_eps);
        let t: Vec<f64> = g.iter().zip(&c).map(|(g, c)| g - c * inv_eps).collect();
        let m = t.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let want = m + t.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        assert!((got - want).abs() < 1e-13);
    }
}
