//! The tape: recorded trunk evaluations of one simulation ([`TrunkTape`]), the additive head
//! of the Langevin-preconditioned controls ([`Head`]) and the trunk's backward over all
//! recorded steps (see the [module docs](super)).

use super::kernels::{bias_gelu, bias_gelu_value, mul_colsum};
use super::views::{host, host_mut_contig, to_vec, view, view_mut};
use tch::Tensor;

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
    /// With a [`Head`]: what its backward needs.
    head: Option<HeadRecord>,
}

/// The head of one taped step: the clipped input z_c = clamp(z, ±c_s) (`[n, d_out]`), where
/// the clamp passes the gradient (|z| ≤ c_s, false for NaN), and the coefficients of z.
struct HeadRecord {
    z_c: Vec<f32>,
    pass: Vec<bool>,
    x_coef: Option<f32>,
    /// None: no score term; Some(None): the score as it is; Some(Some(β)): β·score.
    score_coef: Option<Option<f32>>,
}

/// The input cotangents of one taped evaluation ([`TrunkTape::pop_backward`]): ∂L/∂x
/// (`[n, d]`, through the trunk and the head's x term) and ∂L/∂score (`[n, d_out]`, the
/// head's score term), for a cotangent δ = ∂L/∂u of the leaf.
pub(crate) struct InputGrads {
    pub x: Tensor,
    pub score: Option<Vec<f32>>,
}

/// Parameter-gradient sums over the backward steps: per layer ∂W (`[out, in]`) and ∂b
/// (float64 across steps), the embeddings' `[K, C]` and the head values' `[K, out]`.
struct GradAcc {
    gw: Vec<Tensor>,
    gb: Vec<Vec<f64>>,
    gemb: Vec<f32>,
    ghead: Vec<f64>,
    /// Scratch `[n, C]` buffers of the backward (reused across steps).
    da: Vec<f32>,
    dh: Vec<f32>,
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

/// Rows per block of [`TrunkTape::infer`]: two `[1024, 64]` float32 activation buffers
/// (512 KiB) and the GEMMs' packed operands fit a core's L2 cache.
const INFER_ROWS: usize = 1024;

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
    /// Gradient sums of the steps already backpropagated ([`TrunkTape::pop_backward`]).
    acc: Option<GradAcc>,
    /// Buffers of the popped steps (given back by [`TrunkTape::backward`]).
    spent: Vec<Vec<f32>>,
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
            acc: None,
            spent: Vec::new(),
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
        let (n, c) = (x.size()[0] as usize, self.width);
        let nl = self.layers.len() - 1; // GELU layers
        let x = x.detach().contiguous();
        buf.resize(2 * nl * n * c, 0.0);
        let (acts, gs) = buf.split_at_mut(nl * n * c);
        let (out, mask, head_rec) =
            tch::no_grad(|| self.run(k, &x, acts, Some(gs), clip, head.as_ref()));
        let out = out.set_requires_grad(true);
        self.steps.push(TapeStep {
            k,
            x,
            out: out.shallow_clone(),
            buf,
            mask: clip.map(|_| mask),
            head: head_rec,
        });
        out
    }

    /// The value of [`TrunkTape::forward`] without recording anything (inference without
    /// gradients): the same computation, without GELU', in blocks of [`INFER_ROWS`] rows
    /// whose activations (two `[rows, C]` buffers in `scratch`, resized here, taking turns)
    /// stay in the core's cache. Up to [`INFER_ROWS`] rows it is the tape's value bit for
    /// bit; on larger batches the GEMMs run on blocks of rows, which BLAS may round
    /// differently.
    pub fn infer(
        &self,
        k: usize,
        x: &Tensor,
        scratch: &mut Vec<f32>,
        clip: Option<f32>,
        head: Option<Head<'_>>,
    ) -> Tensor {
        let (n, c) = (x.size()[0] as usize, self.width);
        let x = x.detach().contiguous();
        scratch.resize(2 * n.min(INFER_ROWS) * c, 0.0);
        tch::no_grad(|| {
            if n <= INFER_ROWS {
                return self.run(k, &x, scratch, None, clip, head.as_ref()).0;
            }
            let d_out = self.layers.last().map_or(0, |l| l.b.len());
            let out = Tensor::empty([n as i64, d_out as i64], (x.kind(), x.device()));
            let dst = host_mut_contig(&out);
            for r0 in (0..n).step_by(INFER_ROWS) {
                let rows = INFER_ROWS.min(n - r0);
                let xb = x.narrow(0, r0 as i64, rows as i64);
                let hb = head.as_ref().map(|hd| Head {
                    score: hd
                        .score
                        .map(|(sc, b)| (&sc[r0 * d_out..(r0 + rows) * d_out], b)),
                    ..*hd
                });
                let (ob, _, _) = self.run(k, &xb, scratch, None, clip, hb.as_ref());
                dst[r0 * d_out..(r0 + rows) * d_out].copy_from_slice(host(&ob));
            }
            out
        })
    }

    /// The trunk at time index `k` on the contiguous `x`, then the output bias, the clamp and
    /// the head. With `gs` (recording) `acts` holds a_0 … a_{L−1} and `gs` GELU'(h_0) …; without,
    /// `acts` holds two `[n, C]` buffers used in turn. Returns the value, the clamp's gradient
    /// mask (empty without a clip) and the head's record.
    fn run(
        &self,
        k: usize,
        x: &Tensor,
        acts: &mut [f32],
        mut gs: Option<&mut [f32]>,
        clip: Option<f32>,
        head: Option<&Head<'_>>,
    ) -> (Tensor, Vec<bool>, Option<HeadRecord>) {
        let c = self.width;
        let n = x.size()[0] as usize;
        let nc = n * c;
        let nl = self.layers.len() - 1; // GELU layers
        let (_, emb) = self
            .emb
            .as_ref()
            .expect("embeddings captured before forward");
        let e = &emb[k * c..(k + 1) * c];
        let bias0: Vec<f32> = self.layers[0].b.iter().zip(e).map(|(b, e)| b + e).collect();
        // Where layer l's activation lives in `acts`.
        let keep = gs.is_some();
        let slot = move |l: usize| if keep { l } else { l % 2 };
        for l in 0..nl {
            let s = slot(l) * nc;
            let (lo, hi) = acts.split_at_mut(s);
            let (h, above) = hi.split_at_mut(nc);
            let input = if l == 0 {
                x.shallow_clone()
            } else {
                // The previous layer's slot: below this one, or (taking turns) above it.
                let p = slot(l - 1) * nc;
                let prev = if p < s {
                    &lo[p..p + nc]
                } else {
                    &above[p - s - nc..p - s]
                };
                view(prev, n, c)
            };
            let w = &self.layers[l].w;
            let _ = input.mm_out(&view_mut(h, n, c), &w.tr());
            let bias = if l == 0 { &bias0 } else { &self.layers[l].b };
            match gs.as_deref_mut() {
                Some(g) => bias_gelu(h, &mut g[l * nc..(l + 1) * nc], bias),
                None => bias_gelu_value(h, bias),
            }
        }
        let last = &self.layers[nl];
        // GEMM, then the bias (and the clamp) in one host pass: libtorch's addmm broadcasts a
        // d_out-wide bias over the rows in a separate, slow pass.
        let top = slot(nl - 1) * nc;
        let out = view(&acts[top..top + nc], n, c).mm(&last.w.tr());
        let vals = host_mut_contig(&out);
        let d_out = last.b.len();
        for row in vals.chunks_exact_mut(d_out) {
            row.iter_mut().zip(&last.b).for_each(|(v, b)| *v += b);
        }
        let mut mask = Vec::new();
        if let Some(cl) = clip {
            // Keep the gradient mask (when recording), then clamp in place.
            if keep {
                mask.extend(vals.iter().map(|v| v.abs() <= cl)); // false for NaN, as in libtorch
            }
            vals.iter_mut().for_each(|v| *v = v.clamp(-cl, cl));
        }
        let head_rec = head.map(|hd| {
            let (z_c, pass) = self.add_head(k, hd, host(x), vals);
            HeadRecord {
                z_c,
                pass,
                x_coef: hd.x_coef,
                score_coef: hd.score.map(|(_, b)| b),
            }
        });
        (out, mask, head_rec)
    }

    /// vals += clamp(z, ±c_s) ⊙ s_k (see [`Head`]); returns the clipped z and where the clamp
    /// passes the gradient (|z| ≤ c_s; false for NaN, as in libtorch).
    fn add_head(
        &self,
        k: usize,
        hd: &Head<'_>,
        xs: &[f32],
        vals: &mut [f32],
    ) -> (Vec<f32>, Vec<bool>) {
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
        let pass: Vec<bool> = zc.iter().map(|z| z.abs() <= cs).collect();
        for (vr, zr) in vals.chunks_exact_mut(d_out).zip(zc.chunks_exact_mut(d_out)) {
            for ((v, z), s) in vr.iter_mut().zip(zr.iter_mut()).zip(&srow) {
                *z = z.clamp(-cs, cs);
                *v += *z * s;
            }
        }
        (zc, pass)
    }

    /// The trunk's backward for every recorded step not yet popped, from the leaves'
    /// gradients (steps whose leaf got no gradient contribute nothing), added to the sums of
    /// the popped steps ([`TrunkTape::pop_backward`]). Returns the gradients and the step
    /// buffers (for reuse).
    pub fn backward(mut self) -> (TapeGrads, Vec<Vec<f32>>) {
        let mut acc = self.acc.take().unwrap_or_else(|| self.new_acc());
        let mut pool = std::mem::take(&mut self.spent);
        let steps = std::mem::take(&mut self.steps);
        tch::no_grad(|| {
            for st in steps {
                let dout = st.out.grad();
                if dout.defined() {
                    // In place: the leaf and its gradient are dropped after this step.
                    let dout = dout.contiguous();
                    self.step_backward(&mut acc, &st, &dout, false);
                }
                pool.push(st.buf);
            }
        });
        let GradAcc {
            gw,
            gb,
            gemb,
            ghead,
            ..
        } = acc;
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
        let emb = self.emb.take().map(|(ts, _)| (ts, gemb));
        (TapeGrads { layers, emb, head }, pool)
    }

    /// The backward of the most recent step not yet popped, for the cotangent `delta` =
    /// ∂L/∂u of its leaf (`[n, d_out]`): adds its parameter gradients to the tape's sums and
    /// returns the input cotangents (the adjoint of a KL-family simulation, which needs the
    /// steps from the last to the first). `None` when no step is left.
    pub fn pop_backward(&mut self, delta: &Tensor) -> Option<InputGrads> {
        let st = self.steps.pop()?;
        let mut acc = self.acc.take().unwrap_or_else(|| self.new_acc());
        let dout = delta.detach().to_kind(tch::Kind::Float).contiguous().copy();
        let grads = tch::no_grad(|| self.step_backward(&mut acc, &st, &dout, true));
        self.acc = Some(acc);
        self.spent.push(st.buf);
        grads
    }

    fn new_acc(&self) -> GradAcc {
        let kk = self.emb.as_ref().map_or(0, |(ts, _)| ts.len());
        let head_out = self.head.as_ref().map_or(0, |(_, out)| *out);
        GradAcc {
            gw: self.layers.iter().map(|l| l.w.zeros_like()).collect(),
            gb: self.layers.iter().map(|l| vec![0.0; l.b.len()]).collect(),
            gemb: vec![0f32; kk * self.width],
            ghead: vec![0f64; kk * head_out],
            da: Vec::new(),
            dh: Vec::new(),
        }
    }

    /// The backward of one step for the cotangent `dout` (`[n, d_out]`, contiguous, owned:
    /// the clip mask zeroes it in place). With `input_grads`, also ∂L/∂x and ∂L/∂score.
    fn step_backward(
        &self,
        acc: &mut GradAcc,
        st: &TapeStep,
        dout: &Tensor,
        input_grads: bool,
    ) -> Option<InputGrads> {
        let c = self.width;
        let nl = self.layers.len() - 1;
        let d_out = self.layers[nl].b.len();
        let head_out = self.head.as_ref().map_or(0, |(_, out)| *out);
        // The head's input cotangent dz = δ ⊙ s_k where the clamp passes, before the clip
        // mask of NN touches δ.
        let mut dz = None;
        if let Some(hr) = &st.head {
            // ∂L/∂s_k = Σ_rows z_c ⊙ δ (over the columns too when out = 1).
            let g = host(dout);
            // Column sums in float32 per step (as autograd's reduction), then added in
            // float64 across steps.
            let mut cols = vec![0f32; d_out];
            for (zr, gr) in hr.z_c.chunks_exact(d_out).zip(g.chunks_exact(d_out)) {
                for ((s, z), v) in cols.iter_mut().zip(zr).zip(gr) {
                    *s += z * v;
                }
            }
            let gk = &mut acc.ghead[st.k * head_out..(st.k + 1) * head_out];
            if head_out == 1 {
                gk[0] += cols.iter().map(|&v| v as f64).sum::<f64>();
            } else {
                gk.iter_mut().zip(&cols).for_each(|(a, &v)| *a += v as f64);
            }
            if input_grads {
                let (hv, out) = self.head.as_ref().expect("head values of a head step");
                let sk = &hv[st.k * out..(st.k + 1) * out];
                let mut v = vec![0f32; g.len()];
                for ((vr, gr), pr) in v
                    .chunks_exact_mut(d_out)
                    .zip(g.chunks_exact(d_out))
                    .zip(hr.pass.chunks_exact(d_out))
                {
                    for (j, ((o, &gv), &p)) in vr.iter_mut().zip(gr).zip(pr).enumerate() {
                        let s = sk[if *out == 1 { 0 } else { j }];
                        *o = if p { gv * s } else { 0.0 };
                    }
                }
                dz = Some(v);
            }
        }
        if let Some(mask) = &st.mask {
            let g = host_mut_contig(dout);
            g.iter_mut().zip(mask).for_each(|(v, &m)| {
                if !m {
                    *v = 0.0;
                }
            });
        }
        let n = dout.size()[0] as usize;
        let (mut da, mut dh) = (std::mem::take(&mut acc.da), std::mem::take(&mut acc.dh));
        da.resize(n * c, 0.0);
        dh.resize(n * c, 0.0);
        let mut col = vec![0f32; c];
        let (acts, gs) = st.buf.split_at(nl * n * c);
        let last = &self.layers[nl];
        let a_last = view(&acts[(nl - 1) * n * c..], n, c);
        let _ = acc.gw[nl].addmm_(&dout.tr(), &a_last);
        // Output-bias gradient: column sums of δ on the host (float32 per step, float64
        // across steps).
        let mut col_out = vec![0f32; d_out];
        for row in host(dout).chunks_exact(d_out) {
            col_out.iter_mut().zip(row).for_each(|(s, v)| *s += v);
        }
        for (s, v) in acc.gb[nl].iter_mut().zip(col_out) {
            *s += v as f64;
        }
        let _ = dout.mm_out(&view_mut(&mut da, n, c), &last.w);
        let mut dx = None;
        for l in (0..nl).rev() {
            col.iter_mut().for_each(|v| *v = 0.0);
            mul_colsum(&da, &gs[l * n * c..(l + 1) * n * c], &mut dh, &mut col);
            for (s, v) in acc.gb[l].iter_mut().zip(&col) {
                *s += *v as f64;
            }
            let dh_t = view(&dh, n, c);
            if l == 0 {
                let _ = acc.gw[0].addmm_(&dh_t.tr(), &st.x);
                for (s, v) in acc.gemb[st.k * c..(st.k + 1) * c].iter_mut().zip(&col) {
                    *s += v;
                }
                if input_grads {
                    dx = Some(dh_t.mm(&self.layers[0].w));
                }
            } else {
                let _ = acc.gw[l].addmm_(&dh_t.tr(), &view(&acts[(l - 1) * n * c..], n, c));
                let _ = dh_t.mm_out(&view_mut(&mut da, n, c), &self.layers[l].w);
            }
        }
        (acc.da, acc.dh) = (da, dh);
        let dx = dx?;
        // The head's terms: ∂L/∂x += α·dz, ∂L/∂score = β·dz.
        let mut score = None;
        if let (Some(hr), Some(dz)) = (&st.head, dz) {
            if let Some(a) = hr.x_coef {
                let xs = host_mut_contig(&dx);
                xs.iter_mut().zip(&dz).for_each(|(x, z)| *x += a * z);
            }
            score = match hr.score_coef {
                None => None,
                Some(None) => Some(dz),
                Some(Some(b)) => Some(dz.into_iter().map(|z| b * z).collect()),
            };
        }
        Some(InputGrads { x: dx, score })
    }

    /// Gives the step buffers back without a backward.
    pub fn into_buffers(self) -> Vec<Vec<f32>> {
        let mut bufs = self.spent;
        bufs.extend(self.steps.into_iter().map(|s| s.buf));
        bufs
    }
}
