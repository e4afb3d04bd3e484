//! The numeric kernels of the native trunk on host slices: exp and the fused GELU pair, the
//! bias + GELU pass of the forward and the product + column-sum pass of the backward, their
//! AVX-512 / AVX2+FMA variants (chosen at run time) and their row-parallel split over
//! libtorch's OpenMP team.

use lv_core::par;

/// `exp(x)` in f32, branch-free (vectorisable): x = k ln2 + r, |r| ≤ ln2/2, degree-7 Taylor
/// polynomial (truncation < 2e-8 relative), 2^k from the exponent bits. 0 below −87
/// (true value < 1.7e-38), saturates at e^88; NaN propagates.
#[inline(always)]
fn expf(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23
    let xc = x.clamp(-87.0, 88.0);
    let t = xc.mul_add(std::f32::consts::LOG2_E, MAGIC);
    let k = t - MAGIC;
    let r = (-k).mul_add(1.428_606_8e-6, (-k).mul_add(0.693_145_75, xc));
    let mut p = 1.0f32 / 5_040.0;
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = p.mul_add(r, c);
    }
    // The low mantissa bits of t hold k; (k + 127) << 23 is 2^k.
    let scale = f32::from_bits(t.to_bits().wrapping_add(127) << 23);
    let v = p * scale;
    if x < -87.0 {
        0.0
    } else {
        v
    }
}

/// (GELU(h), GELU'(h)) for the exact GELU h·Φ(h): GELU' = Φ(h) + h·φ(h).
///
/// With z = |h|/√2, Φ(−|h|) = ½ erfc(z) = ½ e^{−z²} erfcx(z), and erfcx(z) = t·Q(t) with
/// t = 1/(1 + z/2) and Q a degree-9 polynomial fitted here for minimax *relative* error on
/// z ∈ [0, 10] (2.0e-8 in exact arithmetic, about 3e-7 evaluated in float32; beyond z = 10
/// e^{−z²} underflows anyway). So Φ is relatively accurate in the left tail too, and one
/// exp serves both Φ and φ(h) = e^{−z²}/√(2π).
#[inline(always)]
pub(super) fn gelu_pair(h: f32) -> (f32, f32) {
    let z = h.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / z.mul_add(0.5, 1.0);
    let mut q = 0.012_272_669f32;
    for c in [
        -0.123_203_59,
        0.428_830_74,
        -0.669_921_34,
        0.421_213_24,
        -0.098_296_486,
        0.225_538_21,
        0.238_644_91,
        0.282_857_1,
        0.282_064_5,
    ] {
        q = q.mul_add(t, c);
    }
    let ez = expf(-z * z); // e^{-h²/2}
    let tail = 0.5 * ez * t * q; // Φ(−|h|)
    let cdf = if h < 0.0 { tail } else { 1.0 - tail };
    (h * cdf, h.mul_add(ez * 0.398_942_3, cdf))
}

const LANES: usize = 16;

/// In place over rows of width `bias.len()`: h ← GELU(h + bias), g ← GELU'(h + bias).
#[inline(always)]
fn bias_gelu_impl(h: &mut [f32], g: &mut [f32], bias: &[f32]) {
    let c = bias.len();
    if !c.is_multiple_of(LANES) {
        for (hr, gr) in h.chunks_exact_mut(c).zip(g.chunks_exact_mut(c)) {
            for ((hv, gv), b) in hr.iter_mut().zip(gr.iter_mut()).zip(bias) {
                let (a, d) = gelu_pair(*hv + b);
                *hv = a;
                *gv = d;
            }
        }
        return;
    }
    for (hr, gr) in h.chunks_exact_mut(c).zip(g.chunks_exact_mut(c)) {
        for ((hc, gc), bc) in hr
            .chunks_exact_mut(LANES)
            .zip(gr.chunks_exact_mut(LANES))
            .zip(bias.chunks_exact(LANES))
        {
            let hc: &mut [f32; LANES] = hc.try_into().expect("lane chunk");
            let gc: &mut [f32; LANES] = gc.try_into().expect("lane chunk");
            let bc: &[f32; LANES] = bc.try_into().expect("lane chunk");
            for j in 0..LANES {
                let (a, d) = gelu_pair(hc[j] + bc[j]);
                hc[j] = a;
                gc[j] = d;
            }
        }
    }
}

/// In place over rows of width `bias.len()`: h ← GELU(h + bias) (the value of
/// [`bias_gelu_impl`], bit for bit, without GELU').
#[inline(always)]
fn bias_gelu_value_impl(h: &mut [f32], bias: &[f32]) {
    let c = bias.len();
    if !c.is_multiple_of(LANES) {
        for hr in h.chunks_exact_mut(c) {
            for (hv, b) in hr.iter_mut().zip(bias) {
                *hv = gelu_pair(*hv + b).0;
            }
        }
        return;
    }
    for hr in h.chunks_exact_mut(c) {
        for (hc, bc) in hr.chunks_exact_mut(LANES).zip(bias.chunks_exact(LANES)) {
            let hc: &mut [f32; LANES] = hc.try_into().expect("lane chunk");
            let bc: &[f32; LANES] = bc.try_into().expect("lane chunk");
            for j in 0..LANES {
                hc[j] = gelu_pair(hc[j] + bc[j]).0;
            }
        }
    }
}

/// dh = da ⊙ g over rows of width `colsum.len()`, and colsum += Σ_rows dh.
#[inline(always)]
fn mul_colsum_impl(da: &[f32], g: &[f32], dh: &mut [f32], colsum: &mut [f32]) {
    let c = colsum.len();
    for ((ar, gr), hr) in da
        .chunks_exact(c)
        .zip(g.chunks_exact(c))
        .zip(dh.chunks_exact_mut(c))
    {
        for (((a, gv), h), s) in ar.iter().zip(gr).zip(hr.iter_mut()).zip(colsum.iter_mut()) {
            let v = a * gv;
            *h = v;
            *s += v;
        }
    }
}

macro_rules! simd_variant {
    ($modname:ident, $feat:literal) => {
        #[cfg(target_arch = "x86_64")]
        mod $modname {
            #[target_feature(enable = $feat)]
            pub unsafe fn bias_gelu(h: &mut [f32], g: &mut [f32], bias: &[f32]) {
                super::bias_gelu_impl(h, g, bias)
            }
            #[target_feature(enable = $feat)]
            pub unsafe fn bias_gelu_value(h: &mut [f32], bias: &[f32]) {
                super::bias_gelu_value_impl(h, bias)
            }
            #[target_feature(enable = $feat)]
            pub unsafe fn mul_colsum(da: &[f32], g: &[f32], dh: &mut [f32], colsum: &mut [f32]) {
                super::mul_colsum_impl(da, g, dh, colsum)
            }
        }
    };
}

simd_variant!(avx512, "avx512f,avx2,fma");
simd_variant!(avx2, "avx2,fma");

#[derive(Clone, Copy, PartialEq, Eq)]
enum Isa {
    Avx512,
    Avx2,
    Generic,
}

fn isa() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
            {
                return Isa::Avx512;
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Generic
    })
}

/// Fewest elements per part of a parallel host pass (libtorch's own grain size).
const GRAIN: usize = 32_768;

/// [`bias_gelu_serial`] split by rows over libtorch's OpenMP team ([`lv_core::par`]).
pub(super) fn bias_gelu(h: &mut [f32], g: &mut [f32], bias: &[f32]) {
    bias_gelu_on(par::threads(), h, g, bias)
}

fn bias_gelu_on(threads: usize, h: &mut [f32], g: &mut [f32], bias: &[f32]) {
    assert_eq!(h.len(), g.len());
    let c = bias.len().max(1);
    let parts = par::split_rows(h.len() / c, GRAIN.div_ceil(c), threads);
    if parts.len() == 1 {
        return bias_gelu_serial(h, g, bias);
    }
    let (hv, gv) = (par::SharedMut::new(h), par::SharedMut::new(g));
    par::run_parts(&parts, &|_, rows| {
        let els = rows.start * c..rows.end * c;
        // SAFETY: the parts' rows are disjoint.
        let (hp, gp) = unsafe { (hv.slice(els.clone()), gv.slice(els)) };
        bias_gelu_serial(hp, gp, bias);
    });
}

fn bias_gelu_serial(h: &mut [f32], g: &mut [f32], bias: &[f32]) {
    match isa() {
        // SAFETY: the features were detected at run time.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { avx512::bias_gelu(h, g, bias) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::bias_gelu(h, g, bias) },
        _ => bias_gelu_impl(h, g, bias),
    }
}

/// [`bias_gelu`] without GELU' (inference): h ← GELU(h + bias), split by rows over
/// libtorch's OpenMP team.
pub(super) fn bias_gelu_value(h: &mut [f32], bias: &[f32]) {
    bias_gelu_value_on(par::threads(), h, bias)
}

fn bias_gelu_value_on(threads: usize, h: &mut [f32], bias: &[f32]) {
    let c = bias.len().max(1);
    let parts = par::split_rows(h.len() / c, GRAIN.div_ceil(c), threads);
    if parts.len() == 1 {
        return bias_gelu_value_serial(h, bias);
    }
    let hv = par::SharedMut::new(h);
    par::run_parts(&parts, &|_, rows| {
        // SAFETY: the parts' rows are disjoint.
        let hp = unsafe { hv.slice(rows.start * c..rows.end * c) };
        bias_gelu_value_serial(hp, bias);
    });
}

fn bias_gelu_value_serial(h: &mut [f32], bias: &[f32]) {
    match isa() {
        // SAFETY: the features were detected at run time.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { avx512::bias_gelu_value(h, bias) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::bias_gelu_value(h, bias) },
        _ => bias_gelu_value_impl(h, bias),
    }
}

/// [`mul_colsum_serial`] split by rows over libtorch's OpenMP team; the parts' column sums
/// are added in part order (the result depends on the thread count only through rounding).
pub(super) fn mul_colsum(da: &[f32], g: &[f32], dh: &mut [f32], colsum: &mut [f32]) {
    mul_colsum_on(par::threads(), da, g, dh, colsum)
}

fn mul_colsum_on(threads: usize, da: &[f32], g: &[f32], dh: &mut [f32], colsum: &mut [f32]) {
    assert!(da.len() == g.len() && g.len() == dh.len());
    let c = colsum.len().max(1);
    let parts = par::split_rows(dh.len() / c, GRAIN.div_ceil(c), threads);
    if parts.len() == 1 {
        return mul_colsum_serial(da, g, dh, colsum);
    }
    let mut partial = vec![0f32; parts.len() * c];
    let (hv, pv) = (par::SharedMut::new(dh), par::SharedMut::new(&mut partial));
    par::run_parts(&parts, &|p, rows| {
        let els = rows.start * c..rows.end * c;
        // SAFETY: the parts' rows, and their partial sums, are disjoint.
        let (hp, sp) = unsafe { (hv.slice(els.clone()), pv.slice(p * c..(p + 1) * c)) };
        mul_colsum_serial(&da[els.clone()], &g[els], hp, sp);
    });
    for part in partial.chunks_exact(c) {
        colsum.iter_mut().zip(part).for_each(|(s, v)| *s += v);
    }
}

fn mul_colsum_serial(da: &[f32], g: &[f32], dh: &mut [f32], colsum: &mut [f32]) {
    match isa() {
        // SAFETY: the features were detected at run time.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { avx512::mul_colsum(da, g, dh, colsum) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::mul_colsum(da, g, dh, colsum) },
        _ => mul_colsum_impl(da, g, dh, colsum),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    /// The fused GELU and its derivative match libtorch's exact GELU in float64 (relative
    /// accuracy, also in the left tail where float32 libtorch flushes to 0).
    #[test]
    fn gelu_pair_matches_libtorch_f64() {
        let xs: Vec<f32> = (-2000..=2000).map(|i| i as f32 * 0.006).collect();
        let t = Tensor::from_slice(&xs).to_kind(Kind::Double);
        let want = Vec::<f64>::try_from(t.gelu("none")).unwrap();
        let tg = t.set_requires_grad(true);
        tg.gelu("none").sum(Kind::Double).backward();
        let want_d = Vec::<f64>::try_from(tg.grad()).unwrap();
        let mut h = xs.clone();
        let mut g = vec![0f32; xs.len()];
        bias_gelu(&mut h, &mut g, &[0.0]);
        for i in 0..xs.len() {
            let (x, v, d) = (xs[i] as f64, h[i] as f64, g[i] as f64);
            if x < -5.0 {
                // float64 1 + erf loses the tail there; use the Mills-ratio bounds
                // φ(x)|x|/(x² + 1) ≤ Φ(x) ≤ φ(x)/|x| instead.
                let phi = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
                let cdf = v / x;
                assert!(
                    cdf >= phi * x.abs() / (x * x + 1.0) * (1.0 - 1e-5)
                        && cdf <= phi / x.abs() * (1.0 + 1e-5),
                    "Φ({x}) = {cdf} outside the Mills bounds"
                );
                continue;
            }
            assert!(
                (v - want[i]).abs() <= 1.5e-6 * want[i].abs() + 1e-25,
                "GELU({}) = {v} vs {}",
                xs[i],
                want[i]
            );
            assert!(
                (d - want_d[i]).abs() <= 1e-6 * want_d[i].abs() + 2e-7,
                "GELU'({}) = {d} vs {}",
                xs[i],
                want_d[i]
            );
        }
        // Lane path (width a multiple of 16) equals the scalar path, with the bias added.
        let bias: Vec<f32> = (0..32).map(|j| j as f32 * 0.1 - 1.6).collect();
        let rows: Vec<f32> = (0..64).map(|i| i as f32 * 0.05 - 1.5).collect();
        let (mut a, mut ga) = (rows.clone(), vec![0f32; 64]);
        bias_gelu(&mut a, &mut ga, &bias);
        for i in 0..64 {
            let (v, d) = gelu_pair(rows[i] + bias[i % 32]);
            assert_eq!((a[i], ga[i]), (v, d));
        }
        // Tails and NaN.
        assert_eq!(gelu_pair(-100.0).0, 0.0);
        assert_eq!(gelu_pair(100.0), (100.0, 1.0));
        assert!(gelu_pair(f32::NAN).0.is_nan() && gelu_pair(f32::NAN).1.is_nan());
        assert!(gelu_pair(f32::INFINITY).0.is_infinite() || gelu_pair(f32::INFINITY).0.is_nan());
    }

    #[test]
    fn parallel_passes_equal_serial_ones() {
        // 2048 × 64 is the paper's batch and width: split in two parts of 1024 rows.
        let (n, c) = (2048, 64);
        let vals = |seed: u32| -> Vec<f32> {
            (0..n * c)
                .map(|i| ((i as u32).wrapping_mul(2_654_435_761) ^ seed) as f32 / 4.3e9 * 8.0 - 4.0)
                .collect()
        };
        let bias: Vec<f32> = (0..c).map(|j| j as f32 * 0.01 - 0.3).collect();
        let (mut h1, mut g1) = (vals(1), vec![0f32; n * c]);
        let (mut h2, mut g2) = (h1.clone(), vec![0f32; n * c]);
        bias_gelu_on(1, &mut h1, &mut g1, &bias);
        bias_gelu_on(2, &mut h2, &mut g2, &bias);
        assert_eq!(par::split_rows(n, GRAIN.div_ceil(c), 2).len(), 2);
        assert!(
            h1 == h2 && g1 == g2,
            "elementwise pass differs between 1 and 2 threads"
        );
        assert_ne!(h1, vals(1), "the pass wrote nothing");
        // The value-only pass (inference) writes the same values, serial or split.
        for threads in [1, 2] {
            let mut hv = vals(1);
            bias_gelu_value_on(threads, &mut hv, &bias);
            assert!(hv == h1, "value-only pass differs ({threads} threads)");
        }

        let da = vals(7);
        let (mut d1, mut s1) = (vec![0f32; n * c], vec![0.5f32; c]);
        let (mut d2, mut s2) = (vec![0f32; n * c], vec![0.5f32; c]);
        mul_colsum_on(1, &da, &g1, &mut d1, &mut s1);
        mul_colsum_on(2, &da, &g1, &mut d2, &mut s2);
        assert_eq!(d1, d2);
        for j in 0..c {
            let exact: f64 = 0.5
                + (0..n)
                    .map(|i| (da[i * c + j] * g1[i * c + j]) as f64)
                    .sum::<f64>();
            assert!(
                (s1[j] as f64 - exact).abs() < 1e-3 * (1.0 + exact.abs()),
                "serial colsum {j}"
            );
            assert!(
                (s2[j] as f64 - exact).abs() < 1e-3 * (1.0 + exact.abs()),
                "parallel colsum {j}"
            );
        }
    }

    #[test]
    fn expf_is_accurate() {
        for i in -8700..=8800 {
            let x = i as f32 * 0.01;
            let want = (x as f64).exp();
            let got = expf(x) as f64;
            assert!(
                ((got - want) / want).abs() < 4e-7,
                "exp({x}) = {got} vs {want}"
            );
        }
        assert!(expf(f32::NAN).is_nan());
    }
}
