//! The batched LV replay: R of a [`Recording`] recomputed with the live controls in one call
//! per control over all (t_k, X_k), from the same [`StepKernel`]s as the simulation.

use super::kernel::StepKernel;
use super::{Controls, DivMode, Recording};
use crate::control::{divergence_exact, divergence_hutchinson};
use crate::method::{Method, RndForm};
use crate::subspace::project_opt;
use tch::Tensor;

/// Recomputes the LV log-RND of a [`Recording`] with the live controls in one batched call
/// per control over all (t_k, X_k). Equal to the step-by-step LV R (same noises) and to its
/// gradient; the trajectory itself carries no graph.
pub fn replay_lv(
    method: &Method,
    grid: &crate::grid::TimeGrid,
    controls: Controls<'_>,
    rec: &Recording,
) -> Tensor {
    replay_terms(method, grid, controls, rec, 0) + &rec.constant
}

/// The controlled part of the replayed R restricted to the time steps `k0 .. k1` (no
/// constant terms), `[n]`. Summing these over a partition of the steps and adding
/// `rec.constant` gives [`replay_lv`]. Used by the chunked replay, which backpropagates one
/// chunk at a time so that the graph of all N·n rows never exists at once.
pub fn replay_lv_steps(
    method: &Method,
    grid: &crate::grid::TimeGrid,
    controls: Controls<'_>,
    rec: &Recording,
    k0: usize,
    k1: usize,
) -> Tensor {
    let n = rec.n;
    let rows = |t: &Tensor| t.narrow(0, k0 as i64 * n, (k1 - k0) as i64 * n);
    let part = Recording {
        ts: rec.ts[k0..k1].to_vec(),
        xs: rows(&rec.xs),
        scores: rec.scores.as_ref().map(rows),
        ws: rows(&rec.ws),
        dws: rows(&rec.dws),
        constant: rec.constant.shallow_clone(),
        noise_scale: rec.noise_scale,
        n,
        zero_com: rec.zero_com,
    };
    replay_terms(method, grid, controls, &part, k0)
}

/// Σ_k q_k (u_k − r_k)·(w_k − ½(u_k + r_k)) + (u_k − r_k)·ΔŴ_k (+ λ²σ_k(∇·v)_kΔ_k for the
/// bridge) over the recorded steps, `[n]`; ΔŴ_k is the recorded `dws` (kernel module doc).
fn replay_terms(
    method: &Method,
    grid: &crate::grid::TimeGrid,
    controls: Controls<'_>,
    rec: &Recording,
    k0: usize,
) -> Tensor {
    let n = rec.n;
    let steps = rec.ts.len() as i64;
    let kernels: Vec<StepKernel> = (0..steps as usize)
        .map(|k| StepKernel::new(method, rec.ts[k], grid.dt(k0 + k), rec.noise_scale))
        .collect();
    // Per-row coefficient columns `[N·n, 1]`, built on the host once per call.
    let col = |f: &dyn Fn(&StepKernel) -> f64| -> Tensor {
        let vals: Vec<f32> = kernels.iter().map(|k| f(k) as f32).collect();
        Tensor::from_slice(&vals)
            .to_device(rec.xs.device())
            .to_kind(rec.xs.kind())
            .repeat_interleave_self_int(n, Some(0), None)
            .unsqueeze(1)
    };
    let scores = rec.scores.as_ref();
    // The inference control with its x-graph for the divergence (bridge).
    let (xin, v, div) = match controls.v {
        Some(vc) if method.form == RndForm::TimeReversal => {
            let xin = rec.xs.detach().set_requires_grad(true);
            let v = vc.eval_many(&rec.ts, &xin, scores);
            let div = match controls.div {
                DivMode::Exact => divergence_exact(&v, &xin),
                DivMode::Hutchinson => divergence_hutchinson(&v, &xin),
            };
            (xin, Some(v), Some(div))
        }
        _ => (rec.xs.shallow_clone(), None, None),
    };
    let u = project_opt(rec.zero_com, &controls.u.eval_many(&rec.ts, &xin, scores));
    let ref_u = match method.form {
        RndForm::Reference { .. } => Some(&rec.xs * col(&|k| k.ref_scale())),
        RndForm::TimeReversal => v.as_ref().map(|v| -v),
        RndForm::ExpIntegrator { .. } | RndForm::OuDds { .. } => None,
    };
    let (diff, mean) = match &ref_u {
        Some(r) => (&u - r, (&u + r) * 0.5),
        None => (u.shallow_clone(), &u * 0.5),
    };
    let cost = (&diff * (&rec.ws - mean)) * col(&|k| k.quad()) + &diff * &rec.dws;
    let mut per_row = cost.sum_dim_intlist([1i64].as_slice(), false, cost.kind());
    if let Some(div) = div {
        // λ²σ_k(∇·v)Δ_k, as in the simulation (module doc of `sim`).
        // As the float32 product of the columns λ²σ_k and Δ_k.
        let lam2 = rec.noise_scale * rec.noise_scale;
        let rate = col(&|k| lam2 * k.sigma());
        per_row += div * (rate * col(&|k| k.quad())).squeeze_dim(1);
    }
    per_row
        .reshape([steps, n])
        .sum_dim_intlist([0i64].as_slice(), false, per_row.kind())
}
