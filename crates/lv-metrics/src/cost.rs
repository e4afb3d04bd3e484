//! Ground costs between point clouds and the row provider used by the
//! streaming Sinkhorn solvers.

use anyhow::{bail, Result};
use ndarray::{Array2, ArrayView2, Zip};

use crate::fastmath;

/// Ground cost between two points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CostKind {
    /// `‖x − y‖₂` (Euclidean distance, not squared).
    Euclidean,
    /// `‖x − y‖₂²` (squared Euclidean distance).
    SqEuclidean,
}

/// Checks that both clouds are non-empty, have the same dimension and are
/// finite; returns the dimension.
pub(crate) fn check_pair(x: &ArrayView2<f64>, y: &ArrayView2<f64>, what: &str) -> Result<usize> {
    if x.nrows() == 0 || y.nrows() == 0 {
        bail!(
            "{what}: empty sample set (got {} and {} points)",
            x.nrows(),
            y.nrows()
        );
    }
    if x.ncols() != y.ncols() {
        bail!(
            "{what}: dimension mismatch: first set has d = {}, second has d = {}",
            x.ncols(),
            y.ncols()
        );
    }
    if x.ncols() == 0 {
        bail!("{what}: points have dimension 0");
    }
    if let Some(((i, j), v)) = x.indexed_iter().find(|(_, v)| !v.is_finite()) {
        bail!("{what}: first set has non-finite value {v} at row {i}, column {j}");
    }
    if let Some(((i, j), v)) = y.indexed_iter().find(|(_, v)| !v.is_finite()) {
        bail!("{what}: second set has non-finite value {v} at row {i}, column {j}");
    }
    Ok(x.ncols())
}

/// Dense `n × m` cost matrix `C_ij = cost(x_i, y_j)`, computed in parallel.
///
/// Distances are formed as `Σ_k (x_ik − y_jk)²` (no `‖x‖² + ‖y‖² − 2x·y`
/// expansion), so coincident points get exactly zero cost.
pub fn cost_matrix(x: ArrayView2<f64>, y: ArrayView2<f64>, kind: CostKind) -> Array2<f64> {
    assert_eq!(x.ncols(), y.ncols(), "cost_matrix: dimension mismatch");
    let m = y.nrows();
    let yt = transpose_contig(y);
    let mut c = Array2::<f64>::zeros((x.nrows(), m));
    Zip::from(c.rows_mut())
        .and(x.rows())
        .par_for_each(|mut crow, xrow| {
            let xs = xrow.to_vec();
            let buf = crow.as_slice_mut().expect("fresh array is contiguous");
            fastmath::dist_row(&xs, &yt, m, buf, kind == CostKind::Euclidean);
        });
    c
}

/// `d × n` row-major copy of an `n × d` array.
pub(crate) fn transpose_contig(a: ArrayView2<f64>) -> Vec<f64> {
    let (n, d) = a.dim();
    let mut out = vec![0.0; n * d];
    for ((i, k), &v) in a.indexed_iter() {
        out[k * n + i] = v;
    }
    out
}

/// Row-major contiguous copy of an `n × d` array.
pub(crate) fn contig(a: ArrayView2<f64>) -> Vec<f64> {
    a.iter().copied().collect()
}

/// Provides rows of `C` (points of `x` against all of `y`) and rows of `Cᵀ`,
/// either from a cached dense matrix or recomputed on the fly.
pub(crate) struct CostOp {
    pub n: usize,
    pub m: usize,
    d: usize,
    kind: CostKind,
    x: Vec<f64>,
    y: Vec<f64>,
    xt: Vec<f64>,
    yt: Vec<f64>,
    /// `(C, Cᵀ)` row-major when cached.
    cache: Option<(Vec<f64>, Vec<f64>)>,
}

impl CostOp {
    /// `cache`: precompute `C` and `Cᵀ` (memory `2·n·m` doubles).
    pub fn new(x: ArrayView2<f64>, y: ArrayView2<f64>, kind: CostKind, cache: bool) -> Self {
        let (n, d) = x.dim();
        let m = y.nrows();
        let mut op = CostOp {
            n,
            m,
            d,
            kind,
            x: contig(x),
            y: contig(y),
            xt: transpose_contig(x),
            yt: transpose_contig(y),
            cache: None,
        };
        if cache {
            let c = cost_matrix(x, y, kind);
            let ct = c.t().as_standard_layout().into_owned();
            op.cache = Some((
                c.into_raw_vec_and_offset().0,
                ct.into_raw_vec_and_offset().0,
            ));
        }
        op
    }

    pub fn is_cached(&self) -> bool {
        self.cache.is_some()
    }

    /// Row `i` of `C` (length m): borrowed from the cache, or computed into
    /// `buf` (length ≥ m) and borrowed from there.
    #[inline]
    pub fn row<'a>(&'a self, i: usize, buf: &'a mut [f64]) -> &'a [f64] {
        match &self.cache {
            Some((c, _)) => &c[i * self.m..(i + 1) * self.m],
            None => {
                fastmath::dist_row(
                    &self.x[i * self.d..(i + 1) * self.d],
                    &self.yt,
                    self.m,
                    buf,
                    self.kind == CostKind::Euclidean,
                );
                &buf[..self.m]
            }
        }
    }

    /// Entry `C[i, j]` (from the cache, or computed from the points exactly
    /// as [`CostOp::row`] computes it, so both paths agree bit for bit).
    #[inline]
    pub fn entry(&self, i: usize, j: usize) -> f64 {
        match &self.cache {
            Some((c, _)) => c[i * self.m + j],
            None => {
                let (xi, yj) = (
                    &self.x[i * self.d..(i + 1) * self.d],
                    &self.y[j * self.d..(j + 1) * self.d],
                );
                let mut s = 0.0;
                for (a, b) in xi.iter().zip(yj) {
                    let t = a - b;
                    s += t * t;
                }
                if self.kind == CostKind::Euclidean {
                    s.sqrt()
                } else {
                    s
                }
            }
        }
    }

    /// Column `j` of `C` (length n), as [`CostOp::row`].
    #[inline]
    pub fn col<'a>(&'a self, j: usize, buf: &'a mut [f64]) -> &'a [f64] {
        match &self.cache {
            Some((_, ct)) => &ct[j * self.n..(j + 1) * self.n],
            None => {
                fastmath::dist_row(
                    &self.y[j * self.d..(j + 1) * self.d],
                    &self.xt,
                    self.n,
                    buf,
                    self.kind == CostKind::Euclidean,
                );
                &buf[..self.n]
            }
        }
    }
}
