//! Native CPU forward and backward of the [`FourierMlp`](crate::FourierMlp) trunk, used for
//! the direct LV gradient ("tape" mode, see [`lv_core::Control::start_tape`]).
//!
//! In tape mode each trunk evaluation NN(t_k, x_k) runs outside autograd: the GEMMs are
//! libtorch's (`mm_out`/`addmm_` on views of our buffers, so the thread setting and the
//! BLAS kernel are the same as in the autograd path), while bias, GELU and the GELU
//! derivative are one fused, vectorised pass that stores a_l = GELU(h_l) and GELU'(h_l) for
//! the backward. The value is returned as a fresh leaf that requires grad. After the caller's
//! backward pass has filled the leaves' gradients δ_k = ∂L/∂NN_k, [`TrunkTape::backward`] runs
//! the trunk's backward for every step:
//!
//! - ∂L/∂W_out += δ_kᵀ a_last, ∂L/∂b_out += Σ_rows δ_k, and dh_last = (δ_k W_out) ⊙ GELU'(h_last);
//! - for the hidden layers l (from the top): ∂L/∂W_l += dh_lᵀ a_{l−1}, ∂L/∂b_l += Σ_rows dh_l,
//!   dh_{l−1} = (dh_l W_l) ⊙ GELU'(h_{l−1});
//! - input layer: ∂L/∂W_in += dh_0ᵀ x_k, ∂L/∂b_in += Σ_rows dh_0, and the time embedding row
//!   e_{t_k} (added to h_0) receives Σ_rows dh_0.
//!
//! GELU is the exact (erf) one, Φ from a relatively accurate erfc ([`gelu_pair`]); exp is a
//! range-reduced degree-7 polynomial (relative error < 2e-7). Both are float32-accurate and
//! vectorise (AVX-512 or AVX2+FMA chosen at run time).

use lv_core::par;
use tch::{Device, Kind, Tensor};

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
pub(crate) fn gelu_pair(h: f32) -> (f32, f32) {
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
fn bias_gelu(h: &mut [f32], g: &mut [f32], bias: &[f32]) {
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

/// [`mul_colsum_serial`] split by rows over libtorch's OpenMP team; the parts' column sums
/// are added in part order (the result depends on the thread count only through rounding).
fn mul_colsum(da: &[f32], g: &[f32], dh: &mut [f32], colsum: &mut [f32]) {
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

/// A `[rows, cols]` row-major CPU float32 tensor over `len ≥ rows·cols` floats at `ptr`.
fn blob(ptr: *const f32, len: usize, rows: usize, cols: usize) -> Tensor {
    assert!(len >= rows * cols);
    // SAFETY: the memory covers rows·cols floats; every caller passes a live slice that
    // outlives the tensor (each use is a GEMM operand that dies within the statement).
    unsafe {
        Tensor::from_blob(
            ptr as *const u8,
            &[rows as i64, cols as i64],
            &[cols as i64, 1],
            Kind::Float,
            Device::Cpu,
        )
    }
}

/// A `[rows, cols]` tensor viewing `data` (read-only use).
fn view(data: &[f32], rows: usize, cols: usize) -> Tensor {
    blob(data.as_ptr(), data.len(), rows, cols)
}

/// A `[rows, cols]` tensor viewing `data`, for a GEMM output written through the view.
fn view_mut(data: &mut [f32], rows: usize, cols: usize) -> Tensor {
    blob(data.as_mut_ptr(), data.len(), rows, cols)
}

/// The elements of a contiguous CPU float32 tensor (read-only).
pub(crate) fn host(t: &Tensor) -> &[f32] {
    assert!(
        t.is_contiguous() && t.kind() == Kind::Float && t.device() == Device::Cpu,
        "host: contiguous CPU float32 tensor expected"
    );
    // SAFETY: the tensor owns numel contiguous floats, alive while `t` is.
    unsafe { std::slice::from_raw_parts(t.data_ptr() as *const f32, t.numel()) }
}

/// The elements of a contiguous CPU float32 tensor, writable in place.
#[allow(clippy::mut_from_ref)]
fn host_mut_contig(t: &Tensor) -> &mut [f32] {
    assert!(
        t.is_contiguous() && t.kind() == Kind::Float && t.device() == Device::Cpu,
        "host_mut_contig: contiguous CPU float32 tensor expected"
    );
    let n = t.numel();
    // SAFETY: the tensor owns n contiguous floats; callers hold the only reference to it
    // (a fresh GEMM output or a fresh copy) while the slice lives.
    unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, n) }
}

/// Host copy of a float32 tensor (any shape), in row-major order.
fn to_vec(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.detach().to_kind(Kind::Float).contiguous().flatten(0, -1))
        .expect("float32 tensor to host vector")
}

/// One linear layer's parameters as seen by the tape: the weight `[out, in]` (detached,
/// shares storage with the parameter) and the bias values.
pub(crate) struct TapeLayer {
    pub w: Tensor,
    pub b: Vec<f32>,
}

struct TapeStep {
    /// Index into the prepared times.
    k: usize,
    /// The input `[n, d]` (detached, contiguous).
    x: Tensor,
    /// The returned leaf `[n, d_out]`.
    out: Tensor,
    /// a_0 … a_{L−1} then GELU'(h_0) … GELU'(h_{L−1}), each `[n, C]`.
    buf: Vec<f32>,
    /// For a clipped output: where the clamp passes the gradient (`[n, d_out]`).
    mask: Option<Vec<bool>>,
    /// With a [`Head`]: the clipped head input z_c = clamp(z, ±c_s), `[n, d_out]`.
    head_z: Option<Vec<f32>>,
}

/// The additive head of the Langevin-preconditioned controls, evaluated inside the tape's
/// forward pass so that the whole control value u is one leaf:
///
/// u = clamp(NN, −c_m, c_m) + clamp(z, −c_s, c_s) ⊙ s_k,  z = α·x + β·score,
///
/// where each of the two terms of z is present or not (`x_coef`, `score`), s_k is row k of
/// the prepared head values `[K, out]` (out = 1, broadcast over the columns, or d_out), and
/// the products and the sum are rounded in float32 in the order of the tensor code
/// (x·α, score·β, their sum, the clamp, the product with s_k, the sum with the clamped NN),
/// so the head adds exactly what the autograd path adds. The backward adds
/// ∂L/∂s_k = Σ_rows z_c ⊙ δ_k (summed over the columns when out = 1) to
/// [`TapeGrads::head`]; the caller carries it to the parameters of s through autograd.
pub(crate) struct Head<'a> {
    /// α, the coefficient of x (None: no x term).
    pub x_coef: Option<f32>,
    /// The score `[n, d_out]` (CPU float32, contiguous) and its coefficient β (None: the
    /// score as it is, no multiplication).
    pub score: Option<(&'a [f32], Option<f32>)>,
    /// c_s.
    pub clip_s: f32,
}

/// Recorded trunk evaluations of one simulation (see the module docs).
pub(crate) struct TrunkTape {
    /// input, hidden…, out.
    layers: Vec<TapeLayer>,
    width: usize,
    /// Prepared times and their embeddings `[K, C]` (values), captured at the first step.
    emb: Option<(Vec<f64>, Vec<f32>)>,
    steps: Vec<TapeStep>,
    /// Head values `[K, out]` (captured at the first step with a [`Head`]) and `out`.
    head: Option<(Vec<f32>, usize)>,
}

impl std::fmt::Debug for TrunkTape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrunkTape")
            .field("layers", &self.layers.len())
            .field("width", &self.width)
            .field("steps", &self.steps.len())
            .finish()
    }
}

/// Parameter gradients from [`TrunkTape::backward`]: per layer (∂W `[out, in]`, ∂b), and the
/// gradient of the prepared embeddings `[K, C]` with their times.
pub(crate) struct TapeGrads {
    pub layers: Vec<(Vec<f32>, Vec<f32>)>,
    pub emb: Option<(Vec<f64>, Vec<f32>)>,
    /// ∂L/∂(head values) `[K, out]` with the prepared times, when a [`Head`] was used.
    pub head: Option<(Vec<f64>, Vec<f32>)>,
}

impl TrunkTape {
    pub fn new(layers: Vec<TapeLayer>, width: usize) -> Self {
        Self {
            layers,
            width,
            emb: None,
            steps: Vec::new(),
            head: None,
        }
    }

    /// Whether head values have been captured.
    pub fn has_head(&self) -> bool {
        self.head.is_some()
    }

    /// Captures the prepared head values (values) `s: [K, out]`, rows at the prepared
    /// times of the embeddings.
    pub fn set_head(&mut self, s: &Tensor) {
        let out = s.size()[1] as usize;
        self.head = Some((to_vec(s), out));
    }

    /// Whether embeddings have been captured.
    pub fn has_embeddings(&self) -> bool {
        self.emb.is_some()
    }

    /// Captures the prepared embeddings (values) `e: [K, C]` at times `ts`.
    pub fn set_embeddings(&mut self, ts: &[f64], e: &Tensor) {
        self.emb = Some((ts.to_vec(), to_vec(e)));
    }

    /// The captured times.
    pub fn times(&self) -> Option<&[f64]> {
        self.emb.as_ref().map(|(ts, _)| &ts[..])
    }

    /// Index of `t` among the captured times.
    pub fn time_index(&self, t: f64) -> Option<usize> {
        self.emb.as_ref()?.0.iter().position(|&s| s == t)
    }

    /// NN(t_k, x) for `x: [n, d]` (CPU float32, no grad) as a leaf that requires grad;
    /// records what the backward needs in `buf` (a reused buffer, resized here). With
    /// `clip = Some(c)` the leaf is clamp(NN, −c, c) and the backward passes the gradient
    /// only where −c ≤ NN ≤ c (libtorch's clamp convention, bounds included). With a
    /// `head` (captured head values needed, [`TrunkTape::set_head`]) the leaf is the whole
    /// control value of [`Head`].
    pub fn forward(
        &mut self,
        k: usize,
        x: &Tensor,
        mut buf: Vec<f32>,
        clip: Option<f32>,
        head: Option<Head<'_>>,
    ) -> Tensor {
        let c = self.width;
        let n = x.size()[0] as usize;
        let nl = self.layers.len() - 1; // GELU layers
        let x = x.detach().contiguous();
        buf.resize(2 * nl * n * c, 0.0);
        let (acts, gs) = buf.split_at_mut(nl * n * c);
        let (_, emb) = self
            .emb
            .as_ref()
            .expect("embeddings captured before forward");
        let e = &emb[k * c..(k + 1) * c];
        let bias0: Vec<f32> = self.layers[0].b.iter().zip(e).map(|(b, e)| b + e).collect();
        let mut mask = Vec::new();
        let mut head_z = None;
        let out = tch::no_grad(|| {
            for l in 0..nl {
                let (prev, cur) = acts.split_at_mut(l * n * c);
                let h = &mut cur[..n * c];
                let w = &self.layers[l].w;
                let input = if l == 0 {
                    x.shallow_clone()
                } else {
                    view(&prev[(l - 1) * n * c..], n, c)
                };
                let _ = input.mm_out(&view_mut(h, n, c), &w.tr());
                let bias = if l == 0 { &bias0 } else { &self.layers[l].b };
                bias_gelu(h, &mut gs[l * n * c..(l + 1) * n * c], bias);
            }
            let last = &self.layers[nl];
            // GEMM, then the bias (and the clamp) in one host pass: libtorch's addmm
            // broadcasts a d_out-wide bias over the rows in a separate, slow pass.
            let out = view(&acts[(nl - 1) * n * c..], n, c).mm(&last.w.tr());
            let vals = host_mut_contig(&out);
            let d_out = last.b.len();
            for row in vals.chunks_exact_mut(d_out) {
                row.iter_mut().zip(&last.b).for_each(|(v, b)| *v += b);
            }
            if let Some(cl) = clip {
                // Keep the gradient mask, then clamp in place.
                mask.clear();
                mask.extend(vals.iter().map(|v| v.abs() <= cl)); // false for NaN, as in libtorch
                vals.iter_mut().for_each(|v| *v = v.clamp(-cl, cl));
            }
            if let Some(hd) = &head {
                head_z = Some(self.add_head(k, hd, host(&x), vals));
            }
            out.set_requires_grad(true)
        });
        self.steps.push(TapeStep {
            k,
            x,
            out: out.shallow_clone(),
            buf,
            mask: clip.map(|_| mask),
            head_z,
        });
        out
    }

    /// vals += clamp(z, ±c_s) ⊙ s_k (see [`Head`]); returns the clipped z.
    fn add_head(&self, k: usize, hd: &Head<'_>, xs: &[f32], vals: &mut [f32]) -> Vec<f32> {
        let (hv, out) = self
            .head
            .as_ref()
            .expect("head values captured before forward");
        let d_out = self.layers.last().map_or(0, |l| l.b.len());
        assert_eq!(
            xs.len(),
            vals.len(),
            "head: x and the output differ in shape"
        );
        if let Some((sc, _)) = hd.score {
            assert_eq!(
                sc.len(),
                vals.len(),
                "head: score and output differ in shape"
            );
        }
        let sk = &hv[k * out..(k + 1) * out];
        // s_k broadcast to one row of width d_out.
        let srow: Vec<f32> = (0..d_out)
            .map(|j| sk[if *out == 1 { 0 } else { j }])
            .collect();
        let cs = hd.clip_s;
        let mut zc = vec![0f32; vals.len()];
        // z = α·x + β·score with the terms present, each product rounded as in the tensor code.
        match (hd.x_coef, hd.score) {
            (Some(a), Some((sc, Some(b)))) => zc
                .iter_mut()
                .zip(xs.iter().zip(sc))
                .for_each(|(z, (x, s))| *z = x * a + s * b),
            (Some(a), Some((sc, None))) => zc
                .iter_mut()
                .zip(xs.iter().zip(sc))
                .for_each(|(z, (x, s))| *z = x * a + s),
            (Some(a), None) => zc.iter_mut().zip(xs).for_each(|(z, x)| *z = x * a),
            (None, Some((sc, Some(b)))) => zc.iter_mut().zip(sc).for_each(|(z, s)| *z = s * b),
            (None, Some((sc, None))) => zc.copy_from_slice(sc),
            (None, None) => {}
        }
        for (vr, zr) in vals.chunks_exact_mut(d_out).zip(zc.chunks_exact_mut(d_out)) {
            for ((v, z), s) in vr.iter_mut().zip(zr.iter_mut()).zip(&srow) {
                *z = z.clamp(-cs, cs);
                *v += *z * s;
            }
        }
        zc
    }

    /// The trunk's backward for every recorded step from the leaves' gradients (steps whose
    /// leaf got no gradient contribute nothing). Returns the gradients and the step buffers
    /// (for reuse).
    pub fn backward(self) -> (TapeGrads, Vec<Vec<f32>>) {
        let c = self.width;
        let nl = self.layers.len() - 1;
        let kk = self.emb.as_ref().map_or(0, |(ts, _)| ts.len());
        let mut gw: Vec<Tensor> = self.layers.iter().map(|l| l.w.zeros_like()).collect();
        let mut gb: Vec<Vec<f64>> = self.layers.iter().map(|l| vec![0.0; l.b.len()]).collect();
        let mut gemb = vec![0f32; kk * c];
        let head_out = self.head.as_ref().map_or(0, |(_, out)| *out);
        let mut ghead = vec![0f64; kk * head_out];
        let mut pool = Vec::with_capacity(self.steps.len());
        let mut da = Vec::new();
        let mut dh = Vec::new();
        let mut col = vec![0f32; c];
        tch::no_grad(|| {
            for st in self.steps {
                let dout = st.out.grad();
                if dout.defined() {
                    let dout = dout.contiguous();
                    if let Some(zc) = &st.head_z {
                        // ∂L/∂s_k = Σ_rows z_c ⊙ δ (over the columns too when out = 1).
                        let g = host_mut_contig(&dout);
                        let d_out = self.layers[nl].b.len();
                        // Column sums in float32 per step (as autograd's reduction), then
                        // added in float64 across steps.
                        let mut cols = vec![0f32; d_out];
                        for (zr, gr) in zc.chunks_exact(d_out).zip(g.chunks_exact(d_out)) {
                            for ((s, z), v) in cols.iter_mut().zip(zr).zip(gr) {
                                *s += z * v;
                            }
                        }
                        let gk = &mut ghead[st.k * head_out..(st.k + 1) * head_out];
                        if head_out == 1 {
                            gk[0] += cols.iter().map(|&v| v as f64).sum::<f64>();
                        } else {
                            gk.iter_mut().zip(&cols).for_each(|(a, &v)| *a += v as f64);
                        }
                    }
                    if let Some(mask) = &st.mask {
                        // In place: the leaf and its gradient are dropped after this step.
                        let g = host_mut_contig(&dout);
                        g.iter_mut().zip(mask).for_each(|(v, &m)| {
                            if !m {
                                *v = 0.0;
                            }
                        });
                    }
                    let n = dout.size()[0] as usize;
                    da.resize(n * c, 0.0);
                    dh.resize(n * c, 0.0);
                    let (acts, gs) = st.buf.split_at(nl * n * c);
                    let last = &self.layers[nl];
                    let a_last = view(&acts[(nl - 1) * n * c..], n, c);
                    let _ = gw[nl].addmm_(&dout.tr(), &a_last);
                    // Output-bias gradient: column sums of δ on the host (float32 per step,
                    // float64 across steps, as before).
                    let mut col_out = vec![0f32; gb[nl].len()];
                    for row in host_mut_contig(&dout).chunks_exact(col_out.len()) {
                        col_out.iter_mut().zip(row).for_each(|(s, v)| *s += v);
                    }
                    for (s, v) in gb[nl].iter_mut().zip(col_out) {
                        *s += v as f64;
                    }
                    let _ = dout.mm_out(&view_mut(&mut da, n, c), &last.w);
                    for l in (0..nl).rev() {
                        col.iter_mut().for_each(|v| *v = 0.0);
                        mul_colsum(&da, &gs[l * n * c..(l + 1) * n * c], &mut dh, &mut col);
                        for (s, v) in gb[l].iter_mut().zip(&col) {
                            *s += *v as f64;
                        }
                        let dh_t = view(&dh, n, c);
                        if l == 0 {
                            let _ = gw[0].addmm_(&dh_t.tr(), &st.x);
                            for (s, v) in gemb[st.k * c..(st.k + 1) * c].iter_mut().zip(&col) {
                                *s += v;
                            }
                        } else {
                            let _ = gw[l].addmm_(&dh_t.tr(), &view(&acts[(l - 1) * n * c..], n, c));
                            let _ = dh_t.mm_out(&view_mut(&mut da, n, c), &self.layers[l].w);
                        }
                    }
                }
                pool.push(st.buf);
            }
        });
        let layers = gw
            .iter()
            .zip(gb)
            .map(|(w, b)| (to_vec(w), b.into_iter().map(|v| v as f32).collect()))
            .collect();
        let head = match (&self.head, &self.emb) {
            (Some(_), Some((ts, _))) => {
                Some((ts.clone(), ghead.into_iter().map(|v| v as f32).collect()))
            }
            _ => None,
        };
        let emb = self.emb.map(|(ts, _)| (ts, gemb));
        (TapeGrads { layers, emb, head }, pool)
    }

    /// Gives the step buffers back without a backward.
    pub fn into_buffers(self) -> Vec<Vec<f32>> {
        self.steps.into_iter().map(|s| s.buf).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
