//! The fused host updates on CPU float32: one pass over the rows per step computes X_{k+1}
//! and the step's R terms from the step's [`StepKernel`], with ∂R/∂u_k for the
//! kept-controls LV path ([`fused_lv_update`]), or for a step with w = u
//! ([`fused_wu_update`]: evaluations, the adjoint KL path's forward). [`host`] and
//! [`host_mut`] are the host views these passes (and the adjoint's backward) work on.

use super::kernel::StepKernel;
use tch::{Kind, Tensor};

/// Read-only host view of a contiguous CPU float32 tensor.
pub(super) fn host(t: &Tensor) -> &[f32] {
    assert!(
        t.device() == tch::Device::Cpu && t.kind() == Kind::Float && t.is_contiguous(),
        "host view needs a contiguous CPU float32 tensor"
    );
    // SAFETY: contiguous CPU float32 storage of `numel` elements, alive while `t` is.
    unsafe { std::slice::from_raw_parts(t.data_ptr() as *const f32, t.numel()) }
}

/// Mutable host view of a contiguous CPU float32 tensor. The caller must hold no other view
/// of the same storage while writing.
#[allow(clippy::mut_from_ref)]
pub(super) fn host_mut(t: &Tensor) -> &mut [f32] {
    assert!(
        t.device() == tch::Device::Cpu && t.kind() == Kind::Float && t.is_contiguous(),
        "host view needs a contiguous CPU float32 tensor"
    );
    // SAFETY: contiguous CPU float32 storage of `numel` elements, alive while `t` is; the
    // callers write only tensors they allocated (or own, `r`) and read other tensors.
    unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, t.numel()) }
}

/// One step of the LV simulation with kept controls (w = u numerically, no graph), fused
/// over rows: returns X_{k+1} and ∂R/∂u_k, and adds the step's R terms to `r`, exactly as the
/// tensor code of [`super::simulate_with_noise`] does with the same [`StepKernel`] (the
/// quadratic term q_k (u−r)·(w − ½(u+r)) and the Itô term (u−r)·ΔŴ_k). Accumulates in
/// float32 like the tensor path. It never sees an inference control: kept controls require
/// v = None (asserted in [`super::simulate_with_noise`]), so form 3.2 here is DIS (v ≡ 0)
/// and has no λ²σ(∇·v)Δ term.
pub(super) fn fused_lv_update(
    kernel: StepKernel,
    xk: &Tensor,
    u: &Tensor,
    xi: &Tensor,
    r: &mut Tensor,
) -> (Tensor, Tensor) {
    let xk = xk.contiguous();
    let u = u.contiguous();
    let xi = xi.contiguous();
    let (xs, us, xis) = (host(&xk), host(&u), host(&xi));
    let n = r.numel();
    let d = xs.len() / n.max(1);
    let shape = [n as i64, d as i64];
    let x_t = Tensor::empty(shape, (Kind::Float, tch::Device::Cpu));
    let coef_t = Tensor::empty(shape, (Kind::Float, tch::Device::Cpu));
    let (x_next, coef, rv) = (host_mut(&x_t), host_mut(&coef_t), host_mut(r));
    let f = |v: f64| v as f32;
    match kernel {
        StepKernel::Euler {
            dt,
            sigma,
            a,
            lam,
            rs,
        } => {
            let rs = f(rs);
            let sq = f(dt.sqrt());
            let noise = f(sigma * lam);
            let (dt, sigma, a, lam) = (f(dt), f(sigma), f(a), f(lam));
            for (i, ri) in rv.iter_mut().enumerate() {
                let (mut cost, mut ito) = (0f32, 0f32);
                for j in i * d..(i + 1) * d {
                    let (x, uu) = (xs[j], us[j]);
                    let refu = x * rs;
                    let diff = uu - refu;
                    cost += diff * (uu - (uu + refu) * 0.5);
                    let dw = xis[j] * sq;
                    ito += diff * dw;
                    x_next[j] = x + (x * a + uu * sigma) * dt + dw * noise;
                    coef[j] = dw * lam;
                }
                *ri += cost * dt;
                *ri += ito * lam;
            }
        }
        StepKernel::Exp { .. } | StepKernel::Discrete { .. } => {
            let (decay, gain, scale) = kernel.linear().expect("a linear form");
            let (decay, gain, noise) = (f(decay), f(gain), f(scale));
            let quad = f(kernel.quad());
            let ito_scale = f(kernel.ito_scale());
            for (i, ri) in rv.iter_mut().enumerate() {
                let (mut cost, mut ito) = (0f32, 0f32);
                for j in i * d..(i + 1) * d {
                    let uu = us[j];
                    cost += uu * (uu - uu * 0.5);
                    ito += uu * xis[j];
                    x_next[j] = xs[j] * decay + uu * gain + xis[j] * noise;
                    coef[j] = xis[j] * ito_scale;
                }
                *ri += cost * quad;
                *ri += ito * ito_scale;
            }
        }
    }
    (x_t, coef_t)
}

/// One step with w = u and no graph (the evaluation modes `EvalIto` and `EvalNoIto`, and the
/// KL modes on the adjoint path, whose graph is the adjoint's), without an inference
/// control, fused over rows: returns X_{k+1} and adds the step's R terms to `r`: the
/// quadratic term ½|u − r_k|²·q_k and, with `ito`, the Itô term (u − r_k)·ΔŴ_k, with the
/// same [`StepKernel`] as the tensor code of [`super::simulate_with_noise`]. Accumulates in
/// float32 like the tensor path; the sums over a row's coordinates and the order of the
/// terms round differently from it.
pub(super) fn fused_wu_update(
    kernel: StepKernel,
    xk: &Tensor,
    u: &Tensor,
    xi: &Tensor,
    r: &mut Tensor,
    ito: bool,
) -> Tensor {
    #[cfg(test)]
    FUSED_WU_STEPS.with(|c| c.set(c.get() + 1));
    let xk = xk.contiguous();
    let u = u.contiguous();
    let xi = xi.contiguous();
    let (xs, us, xis) = (host(&xk), host(&u), host(&xi));
    let n = r.numel();
    let d = xs.len() / n.max(1);
    let x_t = Tensor::empty([n as i64, d as i64], (Kind::Float, tch::Device::Cpu));
    let (x_next, rv) = (host_mut(&x_t), host_mut(r));
    let f = |v: f64| v as f32;
    // r_k = rs·X for the Euler forms (0 for the linear ones); ΔŴ = ξ√Δ·λ (Euler) or
    // ξ·ito_scale; X_{k+1} as StepKernel::advance computes it.
    let quad = f(kernel.quad());
    let ito_scale = if ito { f(kernel.ito_scale()) } else { 0.0 };
    match kernel {
        StepKernel::Euler {
            dt,
            sigma,
            a,
            lam,
            rs,
        } => {
            let (rs, sq, noise) = (f(rs), f(dt.sqrt()), f(sigma * lam));
            let (dt, sigma, a) = (f(dt), f(sigma), f(a));
            for (i, ri) in rv.iter_mut().enumerate() {
                let (mut sqn, mut itos) = (0f32, 0f32);
                for j in i * d..(i + 1) * d {
                    let (x, uu) = (xs[j], us[j]);
                    let diff = uu - x * rs;
                    sqn += diff * diff;
                    let dw = xis[j] * sq;
                    itos += diff * dw;
                    x_next[j] = x + (x * a + uu * sigma) * dt + dw * noise;
                }
                *ri += sqn * 0.5 * quad;
                if ito {
                    *ri += itos * ito_scale;
                }
            }
        }
        StepKernel::Exp { .. } | StepKernel::Discrete { .. } => {
            let (decay, gain, noise) = kernel.linear().expect("a linear form");
            let (decay, gain, noise) = (f(decay), f(gain), f(noise));
            for (i, ri) in rv.iter_mut().enumerate() {
                let (mut sqn, mut itos) = (0f32, 0f32);
                for j in i * d..(i + 1) * d {
                    let uu = us[j];
                    sqn += uu * uu;
                    itos += uu * xis[j];
                    x_next[j] = xs[j] * decay + uu * gain + xis[j] * noise;
                }
                *ri += sqn * 0.5 * quad;
                if ito {
                    *ri += itos * ito_scale;
                }
            }
        }
    }
    x_t
}

#[cfg(test)]
thread_local! {
    /// Calls of [`fused_wu_update`] on this thread (tests check that the path is taken).
    pub(super) static FUSED_WU_STEPS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}
