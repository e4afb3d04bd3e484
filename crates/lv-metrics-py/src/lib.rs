//! `lv_metrics._lv_metrics`: the functions of the `lv-metrics` crate on NumPy arrays.
//!
//! Conventions of the bridge (each function's docstring states the metric's own):
//! - Inputs are anything `numpy.asarray(x, dtype=float64)` accepts. A float64 array, C- or
//!   Fortran-ordered or strided, is read in place (no copy at the boundary); other dtypes
//!   (float32, integers) are converted to float64 once.
//! - The GIL is released while a metric is computed; the work runs on rayon's pool (all
//!   cores unless `RAYON_NUM_THREADS` says otherwise).
//! - Bad input (wrong rank, dimension mismatch, empty sets, non-finite values, invalid
//!   options) raises `ValueError` with the message the `lv` command line prints for it.

use ndarray::{ArrayView1, ArrayView2, Ix1, Ix2};
use numpy::{
    AllowTypeChange, PyArrayDescrMethods, PyArrayLikeDyn, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use lv_metrics as m;

/// A float64 view of an array-like argument, borrowed for the duration of the call.
type ArrayArg<'py> = PyArrayLikeDyn<'py, f64, AllowTypeChange>;

fn value_error(e: anyhow::Error) -> PyErr {
    PyValueError::new_err(format!("{e:#}"))
}

/// Reads an argument as float64: real numeric dtypes (float, int, bool) and nested sequences
/// are accepted; complex, object, string and date arrays, and anything numpy cannot convert,
/// raise `ValueError` naming the argument.
fn arr<'py>(obj: &Bound<'py, PyAny>, name: &str) -> PyResult<ArrayArg<'py>> {
    if let Ok(a) = obj.downcast::<PyUntypedArray>() {
        let kind = a.dtype().kind() as char;
        if !matches!(kind, 'f' | 'i' | 'u' | 'b') {
            return Err(PyValueError::new_err(format!(
                "{name} must be an array of real numbers, got dtype {}",
                a.dtype()
            )));
        }
    }
    obj.extract::<ArrayArg<'py>>().map_err(|e| {
        PyValueError::new_err(format!("{name} cannot be read as a float64 array: {e}"))
    })
}

/// A non-negative integer option as `usize`, with a `ValueError` for negative values.
fn count(name: &str, v: i64) -> PyResult<usize> {
    usize::try_from(v)
        .map_err(|_| PyValueError::new_err(format!("{name} must be non-negative, got {v}")))
}

/// `view2!(x)`: shadows the argument `x` by a float64 `[n, d]` view of it (errors name `x`);
/// the array it borrows stays alive, shadowed, to the end of the function.
macro_rules! view2 {
    ($v:ident) => {
        let $v = arr($v, stringify!($v))?;
        let $v = view2(&$v, stringify!($v))?;
    };
}

/// `view1!(a)`: as [`view2!`] for a 1-D argument.
macro_rules! view1 {
    ($v:ident) => {
        let $v = arr($v, stringify!($v))?;
        let $v = view1(&$v, stringify!($v))?;
    };
}

fn view2<'a>(a: &'a ArrayArg<'_>, name: &str) -> PyResult<ArrayView2<'a, f64>> {
    let shape = a.shape().to_vec();
    a.as_array().into_dimensionality::<Ix2>().map_err(|_| {
        PyValueError::new_err(format!(
            "{name} must be a 2-D array of shape [n, d], got shape {shape:?}"
        ))
    })
}

fn view1<'a>(a: &'a ArrayArg<'_>, name: &str) -> PyResult<ArrayView1<'a, f64>> {
    let shape = a.shape().to_vec();
    a.as_array().into_dimensionality::<Ix1>().map_err(|_| {
        PyValueError::new_err(format!("{name} must be a 1-D array, got shape {shape:?}"))
    })
}

/// A 1-D view as a slice (copied only when the array is strided).
fn slice_of(v: ArrayView1<'_, f64>) -> std::borrow::Cow<'_, [f64]> {
    match v.to_slice() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(v.to_vec()),
    }
}

fn check_positive(name: &str, v: f64) -> PyResult<()> {
    if !(v.is_finite() && v > 0.0) {
        return Err(PyValueError::new_err(format!(
            "{name} must be a positive finite number, got {v}"
        )));
    }
    Ok(())
}

fn check_at_least_one(name: &str, v: usize) -> PyResult<()> {
    if v == 0 {
        return Err(PyValueError::new_err(format!(
            "{name} must be at least 1, got 0"
        )));
    }
    Ok(())
}

/// Exact 2-Wasserstein distance between two equal-size samples, by linear assignment on the
/// squared Euclidean cost: W2 = sqrt(min_σ (1/n) Σ_i ‖x_i − y_σ(i)‖²) (the convention of
/// Sendera et al. and of AS/ASBS, which call POT's `emd2` with uniform weights).
#[pyfunction]
fn w2(py: Python<'_>, x: &Bound<'_, PyAny>, y: &Bound<'_, PyAny>) -> PyResult<f64> {
    view2!(x);
    view2!(y);
    py.allow_threads(|| m::w2_exact(x, y)).map_err(value_error)
}

/// W2² of `w2` (the optimal mean squared cost, no square root).
#[pyfunction]
fn w2_squared(py: Python<'_>, x: &Bound<'_, PyAny>, y: &Bound<'_, PyAny>) -> PyResult<f64> {
    view2!(x);
    view2!(y);
    py.allow_threads(|| m::w2_squared_exact(x, y))
        .map_err(value_error)
}

/// Optimal assignment cost of a square cost matrix with uniform weights:
/// min_σ (1/n) Σ_i C[i, σ(i)] (POT's `emd2(a, b, C)` with a = b = 1/n).
#[pyfunction]
fn exact_ot_cost(py: Python<'_>, cost: &Bound<'_, PyAny>) -> PyResult<f64> {
    view2!(cost);
    py.allow_threads(|| m::exact_ot_cost(cost))
        .map_err(value_error)
}

/// The optimal assignment σ of a square cost matrix (row i goes to column σ[i]), as a list.
#[pyfunction]
fn assignment(py: Python<'_>, cost: &Bound<'_, PyAny>) -> PyResult<Vec<usize>> {
    view2!(cost);
    py.allow_threads(|| m::assignment(cost))
        .map_err(value_error)
}

/// Exact W2 of two 1-D uniform empirical measures (POT's `emd2_1d` with squared cost,
/// square-rooted): sqrt(mean_i (a_(i) − b_(i))²) over sorted values for equal sizes, the
/// monotone (quantile) coupling otherwise.
#[pyfunction]
fn w2_1d(py: Python<'_>, a: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>) -> PyResult<f64> {
    view1!(a);
    view1!(b);
    let (a, b) = (slice_of(a), slice_of(b));
    py.allow_threads(|| m::w2_1d(&a, &b)).map_err(value_error)
}

/// Energy W2 (E-W2 of AS/ASBS): the 1-D W2 of `w2_1d` between the energies of the model
/// samples and those of the reference samples.
#[pyfunction]
fn energy_w2(
    py: Python<'_>,
    model: &Bound<'_, PyAny>,
    reference: &Bound<'_, PyAny>,
) -> PyResult<f64> {
    view1!(model);
    view1!(reference);
    let (a, b) = (slice_of(model), slice_of(reference));
    py.allow_threads(|| m::energy_w2(&a, &b))
        .map_err(value_error)
}

/// Sinkhorn "W²_γ" of Richter & Berner (`sde_sampler/eval/sinkhorn.py`): Euclidean cost
/// M_ij = ‖x_i − y_j‖ (not squared), uniform weights, log-domain iterations from u = 0,
/// v = ε log b, at most `max_iter` (u, v) updates, stopping once max|Δu| and max|Δv| are
/// below `tol`. Returns Σ P_ij M_ij (no entropy term, not debiased). Default ε = 1e-3.
/// Samples larger than 5000 × 5000 stream the cost row by row, so 1e5 × 1e5 fits in memory.
#[pyfunction]
#[pyo3(signature = (x, y, *, eps=1e-3, max_iter=100, tol=1e-5))]
fn sinkhorn_sde(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    y: &Bound<'_, PyAny>,
    eps: f64,
    max_iter: i64,
    tol: f64,
) -> PyResult<f64> {
    view2!(x);
    view2!(y);
    check_positive("eps", eps)?;
    check_positive("tol", tol)?;
    let max_iter = count("max_iter", max_iter)?;
    check_at_least_one("max_iter", max_iter)?;
    let opts = m::SdeSinkhornOptions {
        eps,
        max_iter,
        tol,
        ..Default::default()
    };
    py.allow_threads(|| m::sinkhorn_sde(x, y, &opts))
        .map(|o| o.value)
        .map_err(value_error)
}

fn divergence_options(
    eps: Option<f64>,
    threshold: f64,
    max_iter: i64,
) -> PyResult<m::DivergenceOptions> {
    if let Some(e) = eps {
        check_positive("eps", e)?;
    }
    check_positive("threshold", threshold)?;
    let max_iter = count("max_iter", max_iter)?;
    check_at_least_one("max_iter", max_iter)?;
    Ok(m::DivergenceOptions {
        eps,
        threshold,
        max_iter,
        ..Default::default()
    })
}

/// Debiased Sinkhorn divergence of ott-jax 0.4.6 (`sinkhorn_divergence` on two
/// `PointCloud`s, `SD.compute_SD`): squared Euclidean cost, uniform weights,
/// S = OT_ε(x, y) − ½ OT_ε(x, x) − ½ OT_ε(y, y) with OT_ε ott's `reg_ot_cost` (the dual
/// objective at the Sinkhorn potentials), in units of distance². ε defaults to
/// 0.05 · mean_ij ‖x_i − y_j‖² (ott's rule for a point cloud), shared by the three terms;
/// convergence threshold 1e-3 on the marginal error, at most 2000 iterations, self terms by
/// the symmetric scheme. The convention of RSMC, SCLD and Beyond ELBOs.
#[pyfunction]
#[pyo3(signature = (x, y, *, eps=None, threshold=1e-3, max_iter=2000))]
fn sinkhorn_divergence(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    y: &Bound<'_, PyAny>,
    eps: Option<f64>,
    threshold: f64,
    max_iter: i64,
) -> PyResult<f64> {
    view2!(x);
    view2!(y);
    let opts = divergence_options(eps, threshold, max_iter)?;
    py.allow_threads(|| m::sinkhorn_divergence(x, y, &opts))
        .map(|o| o.divergence)
        .map_err(value_error)
}

/// The entropic OT cost OT_ε(x, y) of ott-jax 0.4.6 (`reg_ot_cost` of a `PointCloud`),
/// squared Euclidean cost, with the ε rule and solver settings of `sinkhorn_divergence`.
#[pyfunction]
#[pyo3(signature = (x, y, *, eps=None, threshold=1e-3, max_iter=2000))]
fn reg_ot_cost(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    y: &Bound<'_, PyAny>,
    eps: Option<f64>,
    threshold: f64,
    max_iter: i64,
) -> PyResult<f64> {
    view2!(x);
    view2!(y);
    let opts = divergence_options(eps, threshold, max_iter)?;
    py.allow_threads(|| m::reg_ot_cost(x, y, &opts))
        .map(|o| o.value)
        .map_err(value_error)
}

/// ott-jax's default ε for two point clouds with squared cost: 0.05 · mean_ij ‖x_i − y_j‖²
/// (computed in O((n + m) d) from means and population variances).
#[pyfunction]
fn default_epsilon(py: Python<'_>, x: &Bound<'_, PyAny>, y: &Bound<'_, PyAny>) -> PyResult<f64> {
    view2!(x);
    view2!(y);
    if x.ncols() != y.ncols() || x.nrows() == 0 || y.nrows() == 0 {
        return Err(PyValueError::new_err(format!(
            "default_epsilon: need two non-empty sets of the same dimension, got shapes {:?} and {:?}",
            x.shape(),
            y.shape()
        )));
    }
    Ok(py.allow_threads(|| m::default_epsilon(x, y)))
}

/// MMD with a Gaussian kernel k(x, y) = exp(−‖x − y‖² / (2h²)) and the median heuristic of
/// `mmd_median.py` (RSMC, SCLD): h is the median (NumPy convention) of the pairwise
/// Euclidean distances of the pooled sample [x; y] over pairs i ≤ j (the zero diagonal
/// included); MMD² = ΣK_XX/(n(n−1)) + ΣK_YY/(m(m−1)) − 2 mean K_XY with the unit diagonals
/// kept in the within-set sums (as that code does); returns sqrt(max(1e-20, MMD²)).
#[pyfunction]
fn mmd_median(py: Python<'_>, x: &Bound<'_, PyAny>, y: &Bound<'_, PyAny>) -> PyResult<f64> {
    view2!(x);
    view2!(y);
    py.allow_threads(|| m::mmd_median(x, y))
        .map(|o| o.mmd)
        .map_err(value_error)
}

/// The unbiased MMD² (U-statistic: within-set sums over i ≠ j with divisor n(n − 1)) with a
/// Gaussian kernel of bandwidth h; `bandwidth=None` takes the median of the distinct
/// pairwise distances (i < j) of the pooled sample. May be negative.
#[pyfunction]
#[pyo3(signature = (x, y, *, bandwidth=None))]
fn mmd_unbiased(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    y: &Bound<'_, PyAny>,
    bandwidth: Option<f64>,
) -> PyResult<f64> {
    view2!(x);
    view2!(y);
    if let Some(h) = bandwidth {
        check_positive("bandwidth", h)?;
    }
    py.allow_threads(|| m::mmd_unbiased(x, y, bandwidth))
        .map(|o| o.mmd2)
        .map_err(value_error)
}

/// The median-heuristic bandwidth: median of the pairwise Euclidean distances of [x; y];
/// `include_diagonal=True` (the `mmd_median.py` convention) counts the pairs i ≤ j,
/// `False` the distinct pairs i < j.
#[pyfunction]
#[pyo3(signature = (x, y, *, include_diagonal=true))]
fn median_bandwidth(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    y: &Bound<'_, PyAny>,
    include_diagonal: bool,
) -> PyResult<f64> {
    view2!(x);
    view2!(y);
    py.allow_threads(|| m::median_bandwidth(x, y, include_diagonal))
        .map_err(value_error)
}

/// Geometric W2 for systems of `n_particles` particles in d / n_particles dimensions (DW-4,
/// LJ-13; the AS/ASBS convention). Samples are particle-major rows [n, P·k], equal counts.
/// Each sample is centred at its particle mean; the cost D² of a pair is the squared
/// distance after the Hungarian permutation of particles and the Kabsch orthogonal alignment
/// (reflections allowed); W2 = sqrt(exact OT cost of D²) with uniform weights (POT `emd2`).
#[pyfunction]
fn geometric_w2(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    y: &Bound<'_, PyAny>,
    n_particles: i64,
) -> PyResult<f64> {
    view2!(x);
    view2!(y);
    let n_particles = count("n_particles", n_particles)?;
    check_at_least_one("n_particles", n_particles)?;
    py.allow_threads(|| m::geometric_w2(x, y, n_particles))
        .map_err(value_error)
}

/// Mode coverage of a mixture: each sample goes to its nearest centre (Euclidean, ties to the
/// lower index); a mode is covered when it gets at least `min_share · n` samples
/// (default 1/(4K) for K modes). Returns a dict: fraction, covered, counts, min_share.
#[pyfunction]
#[pyo3(signature = (samples, centres, *, min_share=None))]
fn mode_coverage<'py>(
    py: Python<'py>,
    samples: &Bound<'_, PyAny>,
    centres: &Bound<'_, PyAny>,
    min_share: Option<f64>,
) -> PyResult<Bound<'py, PyDict>> {
    view2!(samples);
    view2!(centres);
    let r = py
        .allow_threads(|| m::mode_coverage(samples, centres, min_share))
        .map_err(value_error)?;
    let d = PyDict::new(py);
    d.set_item("fraction", r.fraction)?;
    d.set_item("covered", r.covered)?;
    d.set_item("counts", r.counts)?;
    d.set_item("min_share", r.min_share)?;
    Ok(d)
}

fn std_dict<'py>(py: Python<'py>, r: m::StdErrors) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("avg_marginal_stddev", r.avg_marginal_stddev)?;
    d.set_item("avg_stddev", r.avg_stddev)?;
    d.set_item("per_coordinate", r.per_coordinate)?;
    Ok(d)
}

/// Standard-deviation errors of the Richter–Berner code: ŝ_k is the unbiased (divisor n − 1)
/// std of coordinate k of `model`; returns a dict with avg_marginal_stddev = mean_k |ŝ_k − s_k|
/// (the paper's Δstd), avg_stddev = |mean_k ŝ_k − mean_k s_k| and per_coordinate |ŝ_k − s_k|.
#[pyfunction]
fn std_errors<'py>(
    py: Python<'py>,
    model: &Bound<'_, PyAny>,
    target_std: &Bound<'_, PyAny>,
) -> PyResult<Bound<'py, PyDict>> {
    view2!(model);
    view1!(target_std);
    let s = slice_of(target_std);
    let r = py
        .allow_threads(|| m::std_errors(model, &s))
        .map_err(value_error)?;
    std_dict(py, r)
}

/// `std_errors` with s_k the unbiased std of a reference sample.
#[pyfunction]
fn std_errors_vs_samples<'py>(
    py: Python<'py>,
    model: &Bound<'_, PyAny>,
    reference: &Bound<'_, PyAny>,
) -> PyResult<Bound<'py, PyDict>> {
    view2!(model);
    view2!(reference);
    let r = py
        .allow_threads(|| m::std_errors_vs_samples(model, reference))
        .map_err(value_error)?;
    std_dict(py, r)
}

/// Every metric of `a` (model) against `b` (reference), as `lv metrics A B --json` prints it:
/// w2 (on min(n_a, n_b, max_exact) samples), sinkhorn_sde (max_sinkhorn_sde), sinkhorn_div
/// (max_sinkhorn_div), mmd_median and mmd_unbiased (max_mmd), w2_geometric when `particles`
/// is given, and metric_sizes. Sets are subsampled without replacement with `seed`; `eps`
/// overrides ε of both Sinkhorn conventions.
#[pyfunction]
#[pyo3(signature = (a, b, *, eps=None, particles=None, max_exact=2000, max_sinkhorn_div=2000,
                    max_sinkhorn_sde=10_000, max_mmd=2000, seed=0))]
#[allow(clippy::too_many_arguments)]
fn report<'py>(
    py: Python<'py>,
    a: &Bound<'_, PyAny>,
    b: &Bound<'_, PyAny>,
    eps: Option<f64>,
    particles: Option<i64>,
    max_exact: i64,
    max_sinkhorn_div: i64,
    max_sinkhorn_sde: i64,
    max_mmd: i64,
    seed: i128,
) -> PyResult<Bound<'py, PyAny>> {
    view2!(a);
    view2!(b);
    if let Some(e) = eps {
        check_positive("eps", e)?;
    }
    let particles = particles.map(|p| count("particles", p)).transpose()?;
    let [max_exact, max_sinkhorn_div, max_sinkhorn_sde, max_mmd] = [
        ("max_exact", max_exact),
        ("max_sinkhorn_div", max_sinkhorn_div),
        ("max_sinkhorn_sde", max_sinkhorn_sde),
        ("max_mmd", max_mmd),
    ]
    .map(|(name, v)| count(name, v).and_then(|n| check_at_least_one(name, n).map(|_| n)));
    let (max_exact, max_sinkhorn_div, max_sinkhorn_sde, max_mmd) =
        (max_exact?, max_sinkhorn_div?, max_sinkhorn_sde?, max_mmd?);
    let seed = u64::try_from(seed)
        .map_err(|_| PyValueError::new_err(format!("seed must be in [0, 2^64), got {seed}")))?;
    let opts = m::ReportOptions {
        eps,
        particles,
        max_exact,
        max_sinkhorn_div,
        max_sinkhorn_sde,
        max_mmd,
        seed,
    };
    let json = py
        .allow_threads(|| {
            let r = m::compute_report(&a.to_owned(), &b.to_owned(), &opts)?;
            Ok::<_, anyhow::Error>(serde_json::to_string(&r)?)
        })
        .map_err(value_error)?;
    py.import("json")?.call_method1("loads", (json,))
}

#[pymodule]
fn _lv_metrics(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(w2, m)?)?;
    m.add_function(wrap_pyfunction!(w2_squared, m)?)?;
    m.add_function(wrap_pyfunction!(exact_ot_cost, m)?)?;
    m.add_function(wrap_pyfunction!(assignment, m)?)?;
    m.add_function(wrap_pyfunction!(w2_1d, m)?)?;
    m.add_function(wrap_pyfunction!(energy_w2, m)?)?;
    m.add_function(wrap_pyfunction!(sinkhorn_sde, m)?)?;
    m.add_function(wrap_pyfunction!(sinkhorn_divergence, m)?)?;
    m.add_function(wrap_pyfunction!(reg_ot_cost, m)?)?;
    m.add_function(wrap_pyfunction!(default_epsilon, m)?)?;
    m.add_function(wrap_pyfunction!(mmd_median, m)?)?;
    m.add_function(wrap_pyfunction!(mmd_unbiased, m)?)?;
    m.add_function(wrap_pyfunction!(median_bandwidth, m)?)?;
    m.add_function(wrap_pyfunction!(geometric_w2, m)?)?;
    m.add_function(wrap_pyfunction!(mode_coverage, m)?)?;
    m.add_function(wrap_pyfunction!(std_errors, m)?)?;
    m.add_function(wrap_pyfunction!(std_errors_vs_samples, m)?)?;
    m.add_function(wrap_pyfunction!(report, m)?)?;
    Ok(())
}
