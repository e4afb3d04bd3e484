//! Log-domain Sinkhorn machinery shared by both conventions: soft-min
//! updates over the rows or columns of a [`CostOp`], their pruned variant
//! ([`LiveSets`]), and the sums of the transport plan.

use rayon::prelude::*;

use crate::cost::CostOp;
use crate::fastmath;

/// Which side of the cost matrix a potential update runs over.
#[derive(Clone, Copy)]
pub(super) enum Side {
    /// Update the row potential (length n) from the column potential.
    Rows,
    /// Update the column potential (length m) from the row potential.
    Cols,
}

impl Side {
    /// (length of the potential updated, length of the other one).
    fn lens(self, op: &CostOp) -> (usize, usize) {
        match self {
            Side::Rows => (op.n, op.m),
            Side::Cols => (op.m, op.n),
        }
    }

    /// Line `i` of `C` (rows) or of `Cᵀ` (columns), as [`CostOp::row`].
    fn line<'a>(self, op: &'a CostOp, i: usize, buf: &'a mut [f64]) -> &'a [f64] {
        match self {
            Side::Rows => op.row(i, buf),
            Side::Cols => op.col(i, buf),
        }
    }

    /// Entry `(i, j)` of `C` (rows) or of `Cᵀ` (columns).
    fn entry(self, op: &CostOp, i: usize, j: usize) -> f64 {
        match self {
            Side::Rows => op.entry(i, j),
            Side::Cols => op.entry(j, i),
        }
    }
}

/// Log-domain soft-min update: for each row i of `C` (or of `Cᵀ` for
/// [`Side::Cols`]), `out_i = ε·(log_w − LSE_j((other_j − C_ij)/ε))`.
pub(super) fn lse_update(
    op: &CostOp,
    side: Side,
    other: &[f64],
    eps: f64,
    log_w: f64,
    chunk: usize,
) -> Vec<f64> {
    let (len, olen) = side.lens(op);
    debug_assert_eq!(other.len(), olen);
    let inv_eps = 1.0 / eps;
    let gs: Vec<f64> = other.iter().map(|&g| g * inv_eps).collect();
    let mut out = vec![0.0; len];
    out.par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(ci, oc)| {
            let mut cbuf = vec![0.0; olen];
            let mut tbuf = vec![0.0; olen];
            for (k, o) in oc.iter_mut().enumerate() {
                let i = ci * chunk.max(1) + k;
                let c = side.line(op, i, &mut cbuf);
                let l = fastmath::lse_shift(&gs, c, &mut tbuf, inv_eps);
                *o = eps * (log_w - l);
            }
        });
    out
}

/// `(Σ_ij P_ij C_ij, Σ_ij P_ij)` for `P_ij = exp((f_i + g_j − C_ij)/ε)`.
pub(super) fn plan_sums(op: &CostOp, f: &[f64], g: &[f64], eps: f64, chunk: usize) -> (f64, f64) {
    let inv_eps = 1.0 / eps;
    let gs: Vec<f64> = g.iter().map(|&v| v * inv_eps).collect();
    let chunk = chunk.max(1);
    let n_chunks = op.n.div_ceil(chunk);
    (0..n_chunks)
        .into_par_iter()
        .map(|ci| {
            let mut buf = vec![0.0; op.m];
            let (mut pc, mut p) = (0.0, 0.0);
            let end = ((ci + 1) * chunk).min(op.n);
            for (i, &fi) in f.iter().enumerate().take(end).skip(ci * chunk) {
                let c = op.row(i, &mut buf);
                let (a, b) = fastmath::plan_row(fi * inv_eps, &gs, c, inv_eps);
                pc += a;
                p += b;
            }
            (pc, p)
        })
        .reduce(|| (0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1))
}

/// Entries kept in a live set: `z_ij ≥ max_j z_ij − LIVE_MARGIN` (nats).
/// 120 was fastest among 70, 90, 120, 200, 350 at 2000², ε = 1e-3.
const LIVE_MARGIN: f64 = 120.0;

/// Per-row state of [`LiveSets`].
#[derive(Clone, Default)]
struct LiveRow {
    /// Indices `j` with `z_ij ≥ m_i − LIVE_MARGIN` at the last full pass.
    live: Vec<u32>,
    /// Row too wide for a live set (or never built): always a full pass.
    dense: bool,
    /// `argmax_j z_ij` at the last update.
    anchor: u32,
    /// Bound `D_i` on how far entries outside `live` may have risen
    /// relative to the row maximum since the last full pass.
    drift: f64,
}

/// Pruned log-domain soft-min updates for one side of a Sinkhorn solve.
///
/// Write `z_ij = (g_j − C_ij)/ε` for the update of row `i` from the other
/// potential `g`, and `m_i = max_j z_ij`. A full pass computes every `z_ij`
/// and keeps `L_i = {j : z_ij ≥ m_i − M}` (`M` = `LIVE_MARGIN` = 120). Between two updates `g` changes
/// by `Δ_j` (in units of ε); then for `j ∉ L_i`,
/// `z'_ij − m'_i ≤ z_ij − m_i + max_k Δ_k − Δ_a`, where `a` is the previous
/// argmax (because `m'_i ≥ z'_ia = m_i + Δ_a`). So with
/// `D_i ← D_i + max_k Δ_k − Δ_a` accumulated since the last full pass,
/// every entry outside `L_i` satisfies `z'_ij ≤ m'_i − M + D_i`. While
/// `D_i ≤ M − 50`, those entries are more than [`fastmath::LSE_SKIP`] = 50 nats
/// below the maximum and the update sums over `L_i` only (dropping terms
/// below `e^-50` of the largest, as the dense kernel does); otherwise the
/// row gets a full pass. Rows whose live set would exceed an eighth of the
/// other side are kept dense.
pub(super) struct LiveSets {
    rows: Vec<LiveRow>,
    /// `g/ε` of the previous update.
    prev: Option<Vec<f64>>,
}

impl LiveSets {
    pub(super) fn new(len: usize) -> Self {
        LiveSets {
            rows: vec![
                LiveRow {
                    dense: true,
                    ..Default::default()
                };
                len
            ],
            prev: None,
        }
    }

    /// Same contract as [`lse_update`].
    pub(super) fn update(
        &mut self,
        op: &CostOp,
        side: Side,
        other: &[f64],
        eps: f64,
        log_w: f64,
        chunk: usize,
    ) -> Vec<f64> {
        let (len, olen) = side.lens(op);
        debug_assert_eq!(other.len(), olen);
        let inv_eps = 1.0 / eps;
        let gs: Vec<f64> = other.iter().map(|&g| g * inv_eps).collect();
        let delta: Option<(Vec<f64>, f64)> = self.prev.as_ref().map(|prev| {
            let d: Vec<f64> = gs.iter().zip(prev).map(|(a, b)| a - b).collect();
            let mx = d.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            (d, mx)
        });
        let cap = (olen / 8).max(16);
        let chunk = chunk.max(1);
        let mut out = vec![0.0; len];
        out.par_chunks_mut(chunk)
            .zip(self.rows.par_chunks_mut(chunk))
            .enumerate()
            .for_each(|(ci, (oc, rc))| {
                let mut cbuf = vec![0.0; olen];
                let mut tbuf = vec![0.0; olen];
                for (k, (o, r)) in oc.iter_mut().zip(rc.iter_mut()).enumerate() {
                    let i = ci * chunk + k;
                    let full = match &delta {
                        None => true,
                        Some((d, mx)) => {
                            r.drift += mx - d[r.anchor as usize];
                            // NaN drift (non-finite potentials) also forces a full pass.
                            r.dense
                                || r.drift.is_nan()
                                || r.drift > LIVE_MARGIN - fastmath::LSE_SKIP
                        }
                    };
                    let l = if full {
                        let c = side.line(op, i, &mut cbuf);
                        let l = fastmath::lse_shift(&gs, c, &mut tbuf, inv_eps);
                        let m = fastmath::max(&tbuf);
                        let thr = m - LIVE_MARGIN;
                        r.drift = 0.0;
                        r.live.clear();
                        r.dense = false;
                        let mut anchor = None;
                        for (j, &z) in tbuf.iter().enumerate() {
                            if z >= thr {
                                if z == m && anchor.is_none() {
                                    anchor = Some(j as u32);
                                }
                                if r.live.len() == cap {
                                    r.dense = true;
                                    r.live.clear();
                                    break;
                                }
                                r.live.push(j as u32);
                            }
                        }
                        // A dense row needs no anchor (its drift is unused).
                        r.anchor = anchor.unwrap_or(0);
                        l
                    } else {
                        let z = &mut tbuf[..r.live.len()];
                        let (mut m, mut a) = (f64::NEG_INFINITY, 0u32);
                        for (zz, &j) in z.iter_mut().zip(&r.live) {
                            let c = side.entry(op, i, j as usize);
                            *zz = gs[j as usize] - c * inv_eps;
                            if *zz > m {
                                m = *zz;
                                a = j;
                            }
                        }
                        r.anchor = a;
                        let s: f64 = z.iter().map(|&v| fastmath::exp(v - m)).sum();
                        m + s.ln()
                    };
                    *o = eps * (log_w - l);
                }
            });
        self.prev = Some(gs);
        out
    }
}

/// `max_i |a_i − b_i|` (0 for empty slices).
pub(super) fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}
