//! The [`Control`] trait: a (possibly learned) drift correction u(t, x).
//!
//! Conventions (spec §1.1): time is *generative* time t ∈ [0, T], running from the prior at
//! t = 0 to the target at t = T; the inference control v of time-reversal methods is also
//! evaluated at generative time. Controls see the raw time t (not divided by T).

use tch::{Kind, Tensor};

/// A control u(t, x) on batches `x: [n, d] -> [n, d]`.
pub trait Control {
    /// u(t, x) at one time `t` for a batch `x: [n, d]`. `score` is ∇ log ρ(x) (`[n, d]`,
    /// detached) when [`Control::needs_target_score`] says so, otherwise `None`.
    fn eval(&self, t: f64, x: &Tensor, score: Option<&Tensor>) -> Tensor;

    /// u at many times at once: rows `k·n .. (k+1)·n` of `x` (and of `score`) are evaluated at
    /// `ts[k]`, where `n = x.size()[0] / ts.len()`. Used by the batched LV replay.
    /// The default loops over [`Control::eval`]; networks override it with one large call.
    fn eval_many(&self, ts: &[f64], x: &Tensor, score: Option<&Tensor>) -> Tensor {
        let n = x.size()[0] / ts.len() as i64;
        let parts: Vec<Tensor> = ts
            .iter()
            .enumerate()
            .map(|(k, &t)| {
                let xs = x.narrow(0, k as i64 * n, n);
                let ss = score.map(|s| s.narrow(0, k as i64 * n, n));
                self.eval(t, &xs, ss.as_ref())
            })
            .collect();
        Tensor::cat(&parts, 0)
    }

    /// Whether [`Control::eval`] needs ∇ log ρ(x) (Langevin-preconditioned controls).
    fn needs_target_score(&self) -> bool {
        false
    }

    /// Trainable parameters (empty for analytic controls).
    fn parameters(&self) -> Vec<Tensor> {
        Vec::new()
    }

    /// Multiplies the elementwise clip values by `factor` relative to their base values
    /// (the ×5 schedule of spec §6.5). No-op for unclipped controls.
    fn set_clip_factor(&self, _factor: f64) {}

    /// Announces the times of the coming [`Control::eval`] calls (a simulation's grid), so
    /// that parts depending on t alone (time embeddings, s(t)) can be computed for all of
    /// them in one batched call, in the current autograd mode, and looked up per step. Calls
    /// at other times still work. The simulation calls [`Control::clear_times`] when done, so
    /// nothing computed with old parameters is reused. Default: no-op.
    fn prepare_times(&self, _ts: &[f64]) {}

    /// Drops what [`Control::prepare_times`] computed.
    fn clear_times(&self) {}

    /// Starts tape mode, an optional fast path for the direct LV gradient: if this returns
    /// `true`, [`Control::eval`] calls made with autograd recording (on inputs that do not
    /// require grad) may return values whose graph stops at a network output (a leaf
    /// computed outside autograd). After the caller's backward pass through those values,
    /// [`Control::finish_tape`] runs the network's own backward from the leaves' gradients
    /// and adds the remaining parameter gradients, so that the sum equals the gradient of the
    /// plain evaluation. [`Control::drop_tape`] discards the tape (e.g. after an error).
    /// Parameters must not change while a tape is open. Default: unsupported (`false`).
    fn start_tape(&self) -> bool {
        false
    }

    /// Whether [`Control::start_tape`] would succeed (no side effects). Default: `false`.
    fn tape_supported(&self) -> bool {
        false
    }

    /// Completes the parameter gradients of the evaluations since [`Control::start_tape`]
    /// (call after the backward pass) and ends tape mode. Default: no-op.
    fn finish_tape(&self) {}

    /// Ends tape mode without adding gradients. Default: no-op.
    fn drop_tape(&self) {}

    /// The adjoint of one taped evaluation, for gradients through the states (the KL family
    /// on the native path, [`crate::sim::AdjointRecord`]): pops the most recent evaluation
    /// since [`Control::start_tape`] that was not popped yet, adds the parameter gradients of
    /// ⟨δ, u⟩ for the cotangent `delta` = ∂L/∂u (`[n, d]`) to what [`Control::finish_tape`]
    /// applies, and returns ∂L/∂x and, for controls that take the target score, ∂L/∂score
    /// (the caller chains it through the score's Jacobian where the score depends on x).
    /// Evaluations are popped from the last to the first. Default: `None` (unsupported).
    fn tape_vjp(&self, _delta: &Tensor) -> Option<TapeVjp> {
        None
    }

    /// Whether [`Control::tape_vjp`] works after [`Control::start_tape`] (no side effects).
    /// Default: `false`.
    fn tape_vjp_supported(&self) -> bool {
        false
    }

    /// Starts native inference: until [`Control::end_inference`], evaluations made without
    /// autograd recording may run the network outside libtorch (the fused host passes of the
    /// tape, without recording). The function is the same; only float32 rounding differs
    /// from libtorch's kernels (GEMMs are libtorch's either way). The final and periodic
    /// evaluations of a run ([`crate::estimate::evaluate`]) turn it on; training simulations
    /// do not, so their numbers do not depend on it. Returns whether the control has such a
    /// path. Default: `false`.
    fn start_inference(&self) -> bool {
        false
    }

    /// Ends native inference ([`Control::start_inference`]). Default: no-op.
    fn end_inference(&self) {}

    /// A copy for another thread (batch-sharded training, [`crate::train`]): the same
    /// function, with parameters that are fresh autograd leaves *sharing storage* with this
    /// control's (so evaluations agree exactly), its own caches and tape, and
    /// [`Control::parameters`] in the same order as this control's. Gradients of the copy's
    /// evaluations accumulate in the copy's parameters, which the trainer then adds to this
    /// control's in a fixed order. Default: `None` (not shardable).
    fn fork(&self) -> Option<Box<dyn Control + Send>> {
        None
    }
}

/// The input cotangents of one taped evaluation u(t, x, score) ([`Control::tape_vjp`]).
pub struct TapeVjp {
    /// ∂L/∂x, `[n, d]` (through the network and any term of u linear in x).
    pub x: Tensor,
    /// ∂L/∂score, `[n, d]`, when u takes the target score.
    pub score: Option<Tensor>,
}

/// A control that is the gradient of a learned scalar Φ(t, x) (potential parametrisation,
/// u = σ(t)∇ₓ clip(Φ)), whose Φ(t, ·) is a learned unnormalised log-density of the generative
/// marginal at time t. Sub-trajectory training uses it for the boundary terms.
pub trait Potential {
    /// Φ(t, x), `[n]`, with the graph to the parameters.
    fn log_density_at(&self, t: f64, x: &Tensor) -> Tensor;
}

/// The zero control u ≡ 0.
#[derive(Clone, Copy, Debug, Default)]
pub struct ZeroControl;

impl Control for ZeroControl {
    fn eval(&self, _t: f64, x: &Tensor, _score: Option<&Tensor>) -> Tensor {
        x.zeros_like()
    }
}

/// A control given by a closure `f(t, x)`; handy for analytic controls in tests.
pub struct FnControl<F>(pub F);

impl<F> Control for FnControl<F>
where
    F: Fn(f64, &Tensor) -> Tensor,
{
    fn eval(&self, t: f64, x: &Tensor, _score: Option<&Tensor>) -> Tensor {
        (self.0)(t, x)
    }
}

/// Delegation for references and shared pointers, so `&C` and `Rc<C>` (one control used as
/// the generative control and, e.g., as a potential) are controls too.
macro_rules! delegate_control {
    ($($ty:ty),*) => {$(
        impl<C: Control + ?Sized> Control for $ty {
            fn eval(&self, t: f64, x: &Tensor, score: Option<&Tensor>) -> Tensor {
                (**self).eval(t, x, score)
            }
            fn eval_many(&self, ts: &[f64], x: &Tensor, score: Option<&Tensor>) -> Tensor {
                (**self).eval_many(ts, x, score)
            }
            fn needs_target_score(&self) -> bool {
                (**self).needs_target_score()
            }
            fn parameters(&self) -> Vec<Tensor> {
                (**self).parameters()
            }
            fn set_clip_factor(&self, factor: f64) {
                (**self).set_clip_factor(factor)
            }
            fn prepare_times(&self, ts: &[f64]) {
                (**self).prepare_times(ts)
            }
            fn clear_times(&self) {
                (**self).clear_times()
            }
            fn start_tape(&self) -> bool {
                (**self).start_tape()
            }
            fn tape_supported(&self) -> bool {
                (**self).tape_supported()
            }
            fn finish_tape(&self) {
                (**self).finish_tape()
            }
            fn drop_tape(&self) {
                (**self).drop_tape()
            }
            fn tape_vjp(&self, delta: &Tensor) -> Option<TapeVjp> {
                (**self).tape_vjp(delta)
            }
            fn tape_vjp_supported(&self) -> bool {
                (**self).tape_vjp_supported()
            }
            fn start_inference(&self) -> bool {
                (**self).start_inference()
            }
            fn end_inference(&self) {
                (**self).end_inference()
            }
            fn fork(&self) -> Option<Box<dyn Control + Send>> {
                (**self).fork()
            }
        }
    )*};
}

delegate_control!(&C, std::rc::Rc<C>);

/// Exact divergence ∇·f(x) = Σ_i ∂f_i/∂x_i of a vector field by d vector–Jacobian products,
/// keeping the graph (`create_graph`) so the result can be differentiated w.r.t. parameters.
/// `x` must require grad and `f = field(x)`. Returns `[n]`.
pub fn divergence_exact(f: &Tensor, x: &Tensor) -> Tensor {
    let d = x.size()[1];
    let mut div = Tensor::zeros([x.size()[0]], (x.kind(), x.device()));
    for i in 0..d {
        let fi = f.select(1, i).sum(Kind::Float);
        let g = Tensor::run_backward(&[fi], &[x], true, true)
            .into_iter()
            .next()
            .expect("one gradient");
        div += g.select(1, i);
    }
    div
}

/// One-probe Hutchinson estimate ε^T (∂f/∂x) ε with a Rademacher ε (later sde_sampler code),
/// unbiased for ∇·f. Keeps the graph. Returns `[n]`.
pub fn divergence_hutchinson(f: &Tensor, x: &Tensor) -> Tensor {
    let eps = x.rand_like().ge(0.5).to_kind(x.kind()) * 2.0 - 1.0;
    let s = (f * &eps).sum(Kind::Float);
    let g = Tensor::run_backward(&[s], &[x], true, true)
        .into_iter()
        .next()
        .expect("one gradient");
    (g * eps).sum_dim_intlist([1i64].as_slice(), false, x.kind())
}
