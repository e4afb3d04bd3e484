//! FourierMLP (spec §6.2), the base network NN(t, x) of every control, with its tape mode
//! (the trunk run natively, module `native`).

use super::{
    const_linear, fork_linear, gelu, grad_mode_enabled, linear_params, times_tensor, torch_linear,
    FourierEmbedding, MlpConfig, TimeCache,
};
use crate::native::{Head, TapeLayer, TrunkTape};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

/// The prepared times and head values `[K, out]` of a control, if prepared.
type HeadValues<'a> = &'a dyn Fn() -> Option<(Vec<f64>, Tensor)>;

/// Recomputes a control's head values `[K, out]` at the given times, with their graph.
type HeadAt<'a> = &'a dyn Fn(&[f64]) -> Tensor;

/// The head of a control evaluated by [`FourierMlp::taped_control`]:
/// z = α·x + β·score (each term optional), clipped at ±`clip_s`.
pub(crate) struct HeadArgs<'a> {
    /// α (None: no x term).
    pub x_coef: Option<f32>,
    /// The score term (None: none).
    pub score: Option<&'a Tensor>,
    /// β (None: the score as it is).
    pub score_coef: Option<f32>,
    /// c_s.
    pub clip_s: f64,
}

/// The state of native inference of one network.
#[derive(Debug, Default)]
struct Inference {
    on: bool,
    captured: Option<TrunkTape>,
    scratch: Vec<f32>,
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// FourierMLP (spec §6.2), the base network NN(t, x) of every control:
///
/// - time branch e_t = Lin_{C→C}(GELU(Lin_{2F→C}(features(t)))), no activation at the end;
/// - trunk h_0 = Lin_{d→C}(x) + e_t, h_{i+1} = Lin_{C→C}(GELU(h_i)),
///   out = Lin_{C→d_out}(GELU(h_last));
/// - GELU is the exact (erf) one; `out` starts with zero weights and bias (output 0 at
///   initialisation); the other layers use PyTorch's default U(±1/√fan_in).
///
/// With the defaults and d = d_out = 2 it has 21 122 trainable parameters.
#[derive(Debug)]
pub struct FourierMlp {
    cache: TimeCache,
    /// Native trunk recording in tape mode ([`FourierMlp::start_tape`]).
    tape: std::sync::Mutex<Option<TrunkTape>>,
    /// Native inference ([`FourierMlp::start_inference`]): on or off, and the parameters,
    /// embeddings and head values captured at the first evaluation after the times were
    /// prepared (dropped with them), with the activation scratch.
    infer: std::sync::Mutex<Inference>,
    /// Step buffers of finished tapes, reused by the next one (shared with forks).
    pool: std::sync::Arc<std::sync::Mutex<Vec<Vec<f32>>>>,
    emb: FourierEmbedding,
    time1: nn::Linear,
    time2: nn::Linear,
    input: nn::Linear,
    hidden: Vec<nn::Linear>,
    out: nn::Linear,
    dim: i64,
    out_dim: i64,
}

impl FourierMlp {
    /// Builds the network for inputs `x: [n, dim]` and outputs `[n, out_dim]` under `p`
    /// (sub-paths `emb`, `time1`, `time2`, `input`, `hidden{i}`, `out`).
    pub fn new(p: &nn::Path, dim: i64, out_dim: i64, cfg: &MlpConfig) -> anyhow::Result<Self> {
        cfg.check("")?;
        lv_core::check::count("input dimension", dim.max(0) as usize, 1, 1 << 20)?;
        lv_core::check::count("output dimension", out_dim.max(0) as usize, 1, 1 << 20)?;
        let c = cfg.width;
        let emb = FourierEmbedding::new(&(p / "emb"), cfg);
        let time1 = torch_linear(p / "time1", emb.out_dim(), c);
        let time2 = torch_linear(p / "time2", c, c);
        let input = torch_linear(p / "input", dim, c);
        let hidden = (0..cfg.num_layers - 2)
            .map(|i| torch_linear(p / format!("hidden{i}"), c, c))
            .collect();
        let out = const_linear(p / "out", c, out_dim, 0.0);
        Ok(Self {
            cache: TimeCache::default(),
            tape: Default::default(),
            infer: Default::default(),
            pool: Default::default(),
            emb,
            time1,
            time2,
            input,
            hidden,
            out,
            dim,
            out_dim,
        })
    }

    /// A copy for another thread with parameters forked as fresh autograd leaves (same values,
    /// separate gradients, same [`FourierMlp::parameters`] order) and its own time cache
    /// and tape.
    pub fn fork(&self) -> Self {
        Self {
            cache: TimeCache::default(),
            tape: Default::default(),
            infer: Default::default(),
            pool: self.pool.clone(),
            emb: self.emb.fork(),
            time1: fork_linear(&self.time1),
            time2: fork_linear(&self.time2),
            input: fork_linear(&self.input),
            hidden: self.hidden.iter().map(fork_linear).collect(),
            out: fork_linear(&self.out),
            dim: self.dim,
            out_dim: self.out_dim,
        }
    }

    /// Input dimension d.
    pub fn dim(&self) -> i64 {
        self.dim
    }

    /// Output dimension.
    pub fn out_dim(&self) -> i64 {
        self.out_dim
    }

    /// The device the parameters live on.
    pub fn device(&self) -> Device {
        self.emb.device()
    }

    /// Time embedding e_t of times `t: [K]`: `[K, C]`.
    pub fn time_embedding(&self, t: &Tensor) -> Tensor {
        self.time2
            .forward(&gelu(&self.time1.forward(&self.emb.forward(t))))
    }

    fn trunk(&self, x: &Tensor, e: &Tensor) -> Tensor {
        self.trunk_from(self.input.forward(x) + e)
    }

    /// The trunk after h_0 = Lin(x) + e_t.
    fn trunk_from(&self, h0: Tensor) -> Tensor {
        let mut h = h0;
        for l in &self.hidden {
            h = l.forward(&gelu(&h));
        }
        self.out.forward(&gelu(&h))
    }

    /// NN(t, x) at one raw time `t` for `x: [n, d]`: `[n, d_out]`. Uses the embedding of
    /// `t` from [`FourierMlp::prepare_times`] when there is one.
    ///
    /// In tape mode ([`FourierMlp::start_tape`]), with autograd recording, a CPU float32 `x`
    /// that does not require grad and a prepared `t`, the trunk runs natively and the value
    /// is a leaf whose parameter gradients [`FourierMlp::finish_tape`] adds later.
    pub fn forward_t(&self, t: f64, x: &Tensor) -> Tensor {
        if let Some(y) = self.taped_forward(t, x) {
            return y;
        }
        self.untaped_forward_t(t, x)
    }

    /// [`FourierMlp::forward_t`] through autograd (no tape).
    fn untaped_forward_t(&self, t: f64, x: &Tensor) -> Tensor {
        let e = self
            .cache
            .lookup(t)
            .unwrap_or_else(|| self.time_embedding(&times_tensor(&[t], self.device())));
        self.trunk(x, &e)
    }

    /// clamp(NN(t, x), −c, c), the clipped output every control uses. In tape mode the clamp
    /// is part of the native trunk (its gradient mask applied in the trunk's backward: one
    /// autograd node fewer in each direction per step); otherwise a plain clamp.
    pub fn forward_t_clipped(&self, t: f64, x: &Tensor, c: f64) -> Tensor {
        if let Some(y) = self.taped_forward_clipped(t, x, Some(c as f32)) {
            return y;
        }
        self.untaped_forward_t(t, x).clamp(-c, c)
    }

    /// Computes the time embeddings e_t of all `ts` in one call (in the current autograd
    /// mode) for later [`FourierMlp::forward_t`] calls at those times.
    pub fn prepare_times(&self, ts: &[f64]) {
        let e = self.time_embedding(&times_tensor(ts, self.device()));
        self.cache.set(ts, e);
        lock(&self.infer).captured = None;
    }

    /// Drops the prepared embeddings.
    pub fn clear_times(&self) {
        self.cache.clear();
        lock(&self.infer).captured = None;
    }

    /// Starts native inference ([`lv_core::Control::start_inference`]): until
    /// [`FourierMlp::end_inference`], eligible evaluations without autograd recording (CPU
    /// float32 `x` at a prepared time, no tape open) run the trunk natively, as in tape mode
    /// but without recording. Only on CPU; returns whether it is on.
    pub fn start_inference(&self) -> bool {
        let on = self.tape_supported();
        let mut inf = lock(&self.infer);
        inf.on = on;
        inf.captured = None;
        on
    }

    /// Ends native inference.
    pub fn end_inference(&self) {
        *lock(&self.infer) = Inference::default();
    }

    /// The trunk's layers as the native code sees them (weights shared, biases copied).
    fn native_layers(&self) -> Vec<TapeLayer> {
        self.linears()
            .into_iter()
            .map(|l| TapeLayer {
                w: l.ws.detach(),
                b: match &l.bs {
                    Some(b) => {
                        Vec::<f32>::try_from(b.detach().to_kind(Kind::Float)).expect("float32 bias")
                    }
                    None => vec![0.0; l.ws.size()[0] as usize],
                },
            })
            .collect()
    }

    fn linears(&self) -> Vec<&nn::Linear> {
        let mut ls = vec![&self.input];
        ls.extend(self.hidden.iter());
        ls.push(&self.out);
        ls
    }

    /// Starts tape mode (see [`lv_core::Control::start_tape`]): until
    /// [`FourierMlp::finish_tape`] or [`FourierMlp::drop_tape`], eligible
    /// [`FourierMlp::forward_t`] calls run the trunk natively (module `native`) and return
    /// leaves. Only on CPU; returns whether tape mode is on. The parameters must not change
    /// while a tape is open.
    pub fn start_tape(&self) -> bool {
        if !self.tape_supported() {
            return false;
        }
        let layers = self.native_layers();
        *lock(&self.tape) = Some(TrunkTape::new(layers, self.width()));
        true
    }

    /// Whether [`FourierMlp::start_tape`] works here: parameters on the CPU.
    pub fn tape_supported(&self) -> bool {
        self.device() == Device::Cpu
    }

    /// Ends tape mode after the backward pass through the returned leaves: runs the
    /// trunk's backward for every taped step and accumulates the parameter gradients
    /// (trunk weights and biases, and through the time embeddings the time branch) into the
    /// parameters' `.grad`. No-op when no tape is open.
    pub fn finish_tape(&self) {
        self.finish_tape_with_head(None)
    }

    /// [`FourierMlp::finish_tape`] for a control whose taped evaluations included a head
    /// ([`FourierMlp::taped_control`]): `head(ts)` recomputes the head values `[K, out]` at
    /// the prepared times with their graph, and their gradient joins the same backward.
    /// Panics if head gradients were recorded and `head` is `None` (they would be lost).
    pub(crate) fn finish_tape_with_head(&self, head: Option<HeadAt<'_>>) {
        let Some(tape) = lock(&self.tape).take() else {
            return;
        };
        let (grads, bufs) = tape.backward();
        lock(&self.pool).extend(bufs);
        let dev = self.device();
        tch::with_grad(|| {
            let mut terms = Vec::new();
            for (l, (gw, gb)) in self.linears().into_iter().zip(&grads.layers) {
                let gw = Tensor::from_slice(gw).view_(l.ws.size()).to_device(dev);
                terms.push((&l.ws * gw).sum(Kind::Float));
                if let Some(b) = &l.bs {
                    terms.push((b * Tensor::from_slice(gb).to_device(dev)).sum(Kind::Float));
                }
            }
            if let Some((ts, ge)) = &grads.emb {
                let e = self.time_embedding(&times_tensor(ts, dev));
                let ge = Tensor::from_slice(ge).view_(e.size()).to_device(dev);
                terms.push((e * ge).sum(Kind::Float));
            }
            if let Some((ts, gh)) = &grads.head {
                let head = head.expect("taped head evaluations need finish_tape_with_head");
                let s = head(ts);
                let gh = Tensor::from_slice(gh).view_(s.size()).to_device(dev);
                terms.push((s * gh).sum(Kind::Float));
            }
            Tensor::stack(&terms, 0).sum(Kind::Float).backward();
        });
    }

    /// The backward of the most recent taped evaluation not popped yet, for the cotangent
    /// `delta` = ∂L/∂(leaf) (`[n, d_out]`): its parameter gradients join those that
    /// [`FourierMlp::finish_tape`] applies, and the input cotangents ∂L/∂x (trunk and head x
    /// term) and ∂L/∂score (head score term) are returned ([`lv_core::Control::tape_vjp`]).
    /// `None` without a tape or a step left.
    pub fn tape_vjp(&self, delta: &Tensor) -> Option<lv_core::control::TapeVjp> {
        let mut guard = lock(&self.tape);
        let g = guard.as_mut()?.pop_backward(delta)?;
        let n = delta.size()[0];
        Some(lv_core::control::TapeVjp {
            x: g.x,
            score: g.score.map(|v| Tensor::from_slice(&v).view([n, -1])),
        })
    }

    /// Ends tape mode without a backward (e.g. after an error).
    pub fn drop_tape(&self) {
        if let Some(tape) = lock(&self.tape).take() {
            lock(&self.pool).extend(tape.into_buffers());
        }
    }

    fn taped_forward(&self, t: f64, x: &Tensor) -> Option<Tensor> {
        self.taped_forward_clipped(t, x, None)
    }

    fn taped_forward_clipped(&self, t: f64, x: &Tensor, clip: Option<f32>) -> Option<Tensor> {
        self.taped(t, x, clip, None)
    }

    /// A whole Langevin-preconditioned control value in tape mode, one leaf (see
    /// [`Head`]): clamp(NN(t, x), ±c_m) + clamp(α·x + β·score, ±c_s) ⊙ s(t), with the head
    /// values s(t_k) `[K, out]` at the prepared times given by `values` (called once per
    /// tape; `None` or other times: no tape). `None` when the tape does not apply (then
    /// evaluate through autograd). The control must end the tape with
    /// [`FourierMlp::finish_tape_with_head`].
    pub(crate) fn taped_control(
        &self,
        t: f64,
        x: &Tensor,
        clip_m: f64,
        head: HeadArgs<'_>,
        values: HeadValues<'_>,
    ) -> Option<Tensor> {
        if self.out_dim != self.dim || (lock(&self.tape).is_none() && !lock(&self.infer).on) {
            return None;
        }
        let score = match head.score {
            Some(sc) => {
                if sc.device() != Device::Cpu
                    || sc.kind() != Kind::Float
                    || sc.size() != x.size()
                    || sc.requires_grad()
                {
                    return None;
                }
                Some((sc.contiguous(), head.score_coef))
            }
            None => None,
        };
        let hd = Head {
            x_coef: head.x_coef,
            score: score.as_ref().map(|(sc, b)| (crate::native::host(sc), *b)),
            clip_s: head.clip_s as f32,
        };
        self.taped(t, x, Some(clip_m as f32), Some((hd, values)))
    }

    /// The native trunk: recorded on the open tape with autograd recording, or (native
    /// inference on, no tape, no recording) evaluated without recording. `None` where
    /// neither applies (then the caller evaluates through libtorch).
    fn taped(
        &self,
        t: f64,
        x: &Tensor,
        clip: Option<f32>,
        head: Option<(Head<'_>, HeadValues<'_>)>,
    ) -> Option<Tensor> {
        if x.device() != Device::Cpu
            || x.kind() != Kind::Float
            || x.dim() != 2
            || x.size()[1] != self.dim
            || x.requires_grad()
        {
            return None;
        }
        let mut guard = lock(&self.tape);
        if let Some(tape) = guard.as_mut() {
            if !grad_mode_enabled() {
                return None;
            }
            let (k, head) = self.capture(tape, t, head)?;
            // Take one buffer and release the pool (shared with forks on other threads).
            let buf = lock(&self.pool).pop().unwrap_or_default();
            return Some(tape.forward(k, x, buf, clip, head));
        }
        drop(guard);
        let mut inf = lock(&self.infer);
        if !inf.on || grad_mode_enabled() {
            return None;
        }
        let Inference {
            captured, scratch, ..
        } = &mut *inf;
        let tape =
            captured.get_or_insert_with(|| TrunkTape::new(self.native_layers(), self.width()));
        let (k, head) = self.capture(tape, t, head)?;
        Some(tape.infer(k, x, scratch, clip, head))
    }

    /// The trunk width C.
    fn width(&self) -> usize {
        self.input.ws.size()[0] as usize
    }

    /// Captures the prepared embeddings (and head values) into `tape` at its first step and
    /// returns the index of `t` among the prepared times, with the head to apply; `None`
    /// when `t` or the head values are not prepared.
    fn capture<'h>(
        &self,
        tape: &mut TrunkTape,
        t: f64,
        head: Option<(Head<'h>, HeadValues<'_>)>,
    ) -> Option<(usize, Option<Head<'h>>)> {
        if !tape.has_embeddings() {
            let cache = lock(&self.cache.0);
            let (ts, e) = cache.as_ref()?;
            tape.set_embeddings(ts, e);
        }
        let k = tape.time_index(t)?;
        let head = match head {
            Some((hd, values)) => {
                if !tape.has_head() {
                    let (ts, s) = values()?;
                    let ok = tape.times() == Some(&ts[..])
                        && s.dim() == 2
                        && s.size()[0] == ts.len() as i64
                        && (s.size()[1] == 1 || s.size()[1] == self.out_dim);
                    if !ok {
                        return None;
                    }
                    tape.set_head(&s);
                }
                Some(hd)
            }
            None => None,
        };
        Some((k, head))
    }

    /// NN at many times with one trunk call: rows `k·n .. (k+1)·n` of `x: [K·n, d]` are
    /// evaluated at `ts[k]`. The time embedding is computed once per entry of `ts` (a
    /// `[K, C]` matrix) and broadcast over the `n` rows of each block (a `[K, n, C]` view of
    /// h_0), so no `[K·n, C]` copy of it is materialised, and its gradient is a plain sum
    /// over the rows instead of the `index_add` of a `repeat_interleave` backward.
    pub fn forward_many(&self, ts: &[f64], x: &Tensor, n: i64) -> Tensor {
        let k = ts.len() as i64;
        assert_eq!(
            x.size()[0],
            k * n,
            "FourierMlp::forward_many: x has {} rows, expected {} times x {} rows",
            x.size()[0],
            k,
            n
        );
        let e = self.time_embedding(&times_tensor(ts, self.device()));
        let h = self.input.forward(x);
        let c = h.size()[1];
        let h0 = (h.view([k, n, c]) + e.unsqueeze(1)).view([k * n, c]);
        self.trunk_from(h0)
    }

    /// NN with one time per row: `t: [n]` (or `[n, 1]`), `x: [n, d]`.
    pub fn forward_rows(&self, t: &Tensor, x: &Tensor) -> Tensor {
        let e = self.time_embedding(t);
        self.trunk(x, &e)
    }

    /// Trainable parameters (phases and all linear weights and biases).
    pub fn parameters(&self) -> Vec<Tensor> {
        let mut ps = self.emb.parameters();
        for l in [&self.time1, &self.time2, &self.input] {
            linear_params(l, &mut ps);
        }
        for l in &self.hidden {
            linear_params(l, &mut ps);
        }
        linear_params(&self.out, &mut ps);
        ps
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fourier::tests::{max_abs_diff, randomize};
    use crate::fourier::TimeNet;
    use tch::nn::VarStore;

    #[test]
    fn parameter_count_matches_spec() {
        let vs = VarStore::new(Device::Cpu);
        let net = FourierMlp::new(&vs.root(), 2, 2, &MlpConfig::default()).unwrap();
        let n: i64 = vs
            .trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum();
        assert_eq!(n, 21_122);
        let n2: i64 = net.parameters().iter().map(|t| t.numel() as i64).sum();
        assert_eq!(n2, 21_122);
        // The frequencies are stored but not trainable.
        let vars = vs.variables();
        let freqs = &vars["emb.freqs"];
        assert!(!freqs.requires_grad());
        let expect = Tensor::linspace(0.1, 100.0, 64, (Kind::Float, Device::Cpu));
        assert!(max_abs_diff(freqs, &expect) < 1e-6);
        assert_eq!(vars.len(), 2 + 2 * 6);
    }

    #[test]
    fn initialisation() {
        let _rng = lv_core::testing::rng_lock();
        tch::manual_seed(0);
        let vs = VarStore::new(Device::Cpu);
        let net = FourierMlp::new(&vs.root(), 3, 3, &MlpConfig::default()).unwrap();
        let x = Tensor::randn([5, 3], (Kind::Float, Device::Cpu));
        let y = net.forward_t(0.3, &x);
        assert_eq!(y.size(), vec![5, 3]);
        assert_eq!(y.abs().max().double_value(&[]), 0.0);
        // PyTorch default bounds 1/sqrt(fan_in) for weights and biases.
        let vars = vs.variables();
        for (name, fan_in) in [("time1", 128.0), ("time2", 64.0), ("hidden0", 64.0)] {
            let b = 1.0 / f64::sqrt(fan_in);
            for what in ["weight", "bias"] {
                let m = vars[&format!("{name}.{what}")]
                    .abs()
                    .max()
                    .double_value(&[]);
                assert!(m <= b && m > 0.8 * b, "{name}.{what}: max {m}, bound {b}");
            }
        }
        let ph = &vars["emb.phases"];
        let sd = ph.std(true).double_value(&[]);
        assert!(sd > 0.6 && sd < 1.4, "phase std {sd}");
    }

    /// Prepared time embeddings / s(t) give the same values and parameter gradients as the
    /// per-call computation; unprepared times still work; clearing drops the cache.
    #[test]
    fn prepared_times_match_per_call() {
        let _rng = lv_core::testing::rng_lock();
        tch::manual_seed(2);
        let vs = VarStore::new(Device::Cpu);
        let net = FourierMlp::new(&vs.root(), 2, 2, &MlpConfig::default()).unwrap();
        let s = TimeNet::new(&(vs.root() / "s"), 2, 0.5, &MlpConfig::default()).unwrap();
        randomize(&vs);
        let ts = [0.0, 0.37, 1.0, 4.9];
        let x = Tensor::randn([5, 2], (Kind::Float, Device::Cpu));
        let params = vs.trainable_variables();
        let grads = |prepare: bool| -> (Tensor, Vec<Tensor>) {
            for p in &params {
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.zero_();
                }
            }
            if prepare {
                net.prepare_times(&ts);
                s.prepare_times(&ts);
            }
            // 0.5 is not prepared: computed per call either way.
            let out = Tensor::cat(
                &[1usize, 3, 1]
                    .iter()
                    .map(|&k| net.forward_t(ts[k], &x) * s.forward_t(ts[k]))
                    .chain(std::iter::once(net.forward_t(0.5, &x)))
                    .collect::<Vec<_>>(),
                0,
            );
            out.square().sum(Kind::Float).backward();
            net.clear_times();
            s.clear_times();
            (
                out.detach(),
                params.iter().map(|p| p.grad().copy()).collect(),
            )
        };
        let (a, ga) = grads(false);
        let (b, gb) = grads(true);
        assert!(max_abs_diff(&a, &b) < 1e-5, "values differ");
        for (x, y) in ga.iter().zip(&gb) {
            let scale = x.abs().max().double_value(&[]).max(1e-6);
            assert!(max_abs_diff(x, y) < 1e-4 * scale, "gradients differ");
        }
        assert!(net.cache.lookup(ts[1]).is_none() && s.cache.lookup(ts[1]).is_none());
    }

    #[test]
    fn forward_many_equals_loop() {
        let _rng = lv_core::testing::rng_lock();
        tch::manual_seed(1);
        let vs = VarStore::new(Device::Cpu);
        let net = FourierMlp::new(&vs.root(), 2, 2, &MlpConfig::default()).unwrap();
        randomize(&vs);
        let ts = [0.0, 0.37, 1.0, 4.9];
        let n = 3;
        let x = Tensor::randn([4 * n, 2], (Kind::Float, Device::Cpu));
        let many = net.forward_many(&ts, &x, n);
        let looped = Tensor::cat(
            &ts.iter()
                .enumerate()
                .map(|(k, &t)| net.forward_t(t, &x.narrow(0, k as i64 * n, n)))
                .collect::<Vec<_>>(),
            0,
        );
        let scale = looped.abs().max().double_value(&[]);
        assert!(scale > 1e-2);
        assert!(max_abs_diff(&many, &looped) < 2e-6 * (1.0 + scale));
        // Per-row times agree as well.
        let rows = times_tensor(&ts, Device::Cpu).repeat_interleave_self_int(n, 0, 4 * n);
        let rows_out = net.forward_rows(&rows, &x);
        assert!(max_abs_diff(&rows_out, &looped) < 2e-6 * (1.0 + scale));
    }

    #[test]
    fn non_default_config_and_serde() {
        let cfg: MlpConfig = serde_json::from_str(r#"{"width": 32, "num_layers": 3}"#).unwrap();
        assert_eq!(cfg.width, 32);
        assert_eq!(cfg.num_freqs, 64);
        let vs = VarStore::new(Device::Cpu);
        let net = FourierMlp::new(&vs.root(), 2, 1, &cfg).unwrap();
        let y = net.forward_t(1.0, &Tensor::zeros([4, 2], (Kind::Float, Device::Cpu)));
        assert_eq!(y.size(), vec![4, 1]);
        assert_eq!(net.hidden.len(), 1);
        assert!(serde_json::from_str::<MlpConfig>(r#"{"widht": 3}"#).is_err());
    }
}
