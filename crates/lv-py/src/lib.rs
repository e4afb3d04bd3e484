//! `lv._lv`: the compiled half of the `lv` Python package (python/lv wraps it with torch
//! tensors and a result class).
//!
//! Arrays cross as NumPy float64 (registry targets, samples) or as zero-copy views of
//! libtorch memory (the batches given to a Python target, `target.rs`). Library errors
//! (bad configs, keys, run folders, shapes) raise `ValueError` with the message the `lv`
//! command line prints; Ctrl-C during training stops at the end of the step with a valid
//! checkpoint and raises `KeyboardInterrupt`.

mod target;

use anyhow::Context;
use lv_bench::config::RunConfig;
use lv_bench::preset::{load_run_config, Preset};
use lv_bench::run::{self, Overrides, TrainOptions};
use numpy::{AllowTypeChange, PyArray1, PyArray2, PyArrayLike2, ToPyArray};
use pyo3::exceptions::{PyKeyboardInterrupt, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{Kind, Tensor};

fn value_error(e: anyhow::Error) -> PyErr {
    PyValueError::new_err(format!("{e:#}"))
}

/// A Python value of a config dict as TOML (bool, int, float, str, list, dict).
fn to_toml(v: &Bound<'_, PyAny>, key: &str) -> PyResult<toml::Value> {
    if v.is_instance_of::<PyBool>() {
        return Ok(toml::Value::Boolean(v.extract()?));
    }
    if v.is_instance_of::<PyInt>() {
        return Ok(toml::Value::Integer(v.extract().map_err(|_| {
            PyValueError::new_err(format!("key `{key}`: integer out of range"))
        })?));
    }
    if v.is_instance_of::<PyFloat>() {
        return Ok(toml::Value::Float(v.extract()?));
    }
    if v.is_instance_of::<PyString>() {
        return Ok(toml::Value::String(v.extract()?));
    }
    if let Ok(l) = v.downcast::<PyList>() {
        return l
            .iter()
            .map(|x| to_toml(&x, key))
            .collect::<PyResult<Vec<_>>>()
            .map(toml::Value::Array);
    }
    if let Ok(d) = v.downcast::<PyDict>() {
        let mut t = toml::Table::new();
        for (k, x) in d.iter() {
            let k: String = k.extract().map_err(|_| {
                PyValueError::new_err(format!("key `{key}`: config keys must be strings"))
            })?;
            let sub = if key.is_empty() {
                k.clone()
            } else {
                format!("{key}.{k}")
            };
            t.insert(k, to_toml(&x, &sub)?);
        }
        return Ok(toml::Value::Table(t));
    }
    Err(PyValueError::new_err(format!(
        "key `{key}`: a config value must be a bool, int, float, str, list or dict, got {}",
        v.get_type().name()?
    )))
}

/// `key=value` overrides from a dict of dotted keys, in the syntax of `lv train --set`.
fn overrides_of(d: Option<&Bound<'_, PyDict>>) -> PyResult<Vec<String>> {
    let mut out = Vec::new();
    if let Some(d) = d {
        for (k, v) in d.iter() {
            let k: String = k
                .extract()
                .map_err(|_| PyValueError::new_err("override keys must be strings"))?;
            let v = to_toml(&v, &k)?;
            out.push(format!("{k}={v}"));
        }
    }
    Ok(out)
}

/// The run config named by `config`: a dict (a plain run config), a shipped preset row
/// `"<preset>/<row>"`, a TOML file, or a preset file with `row`.
fn resolve_config(
    config: &Bound<'_, PyAny>,
    row: Option<&str>,
    overrides: &[String],
) -> PyResult<RunConfig> {
    if let Ok(d) = config.downcast::<PyDict>() {
        let mut value = to_toml(d.as_any(), "")?;
        for o in overrides {
            lv_bench::config::apply_override(&mut value, o).map_err(value_error)?;
        }
        return lv_bench::config::deserialize_config(value).map_err(value_error);
    }
    let s: String = config.extract().map_err(|_| {
        PyValueError::new_err(
            "config must be a dict, a path to a TOML file, or a shipped preset row such as \"quick/pis-lv-gmm9\"",
        )
    })?;
    let path = Path::new(&s);
    if !path.exists() && !s.ends_with(".toml") {
        if let Some((preset, name)) = s.split_once('/') {
            let p = Preset::shipped(preset).map_err(value_error)?;
            return p.resolve(name, overrides).map_err(value_error);
        }
        return Err(PyValueError::new_err(format!(
            "config `{s}`: no such file, and not a shipped preset row `<preset>/<row>` (e.g. \"quick/pis-lv-gmm9\")"
        )));
    }
    load_run_config(path, row, overrides).map_err(value_error)
}

/// The names of the target registry (built-ins, then targets registered from Python).
#[pyfunction]
fn target_names() -> Vec<String> {
    lv_targets::names()
}

/// A registry target, evaluated on float64 NumPy batches.
#[pyclass(frozen)]
struct BuiltinTarget(Box<dyn lv_core::Target>);

fn batch(t: &dyn lv_core::Target, x: &Bound<'_, PyAny>) -> PyResult<Tensor> {
    let a: PyArrayLike2<f64, AllowTypeChange> = x.extract().map_err(|e| {
        PyValueError::new_err(format!("x cannot be read as a float64 [n, d] array: {e}"))
    })?;
    let a = a.as_array();
    if a.ncols() != t.dim() {
        return Err(PyValueError::new_err(format!(
            "target `{}` has dimension {}, but the batch has shape {:?}",
            t.name(),
            t.dim(),
            a.shape()
        )));
    }
    let v: Vec<f64> = a.iter().copied().collect();
    Ok(Tensor::from_slice(&v).view([a.nrows() as i64, a.ncols() as i64]))
}

fn to_numpy2<'py>(py: Python<'py>, t: &Tensor) -> PyResult<Bound<'py, PyArray2<f64>>> {
    let a = run::to_array(t).map_err(value_error)?;
    Ok(a.to_pyarray(py))
}

#[pymethods]
impl BuiltinTarget {
    #[new]
    fn new(name: &str) -> PyResult<Self> {
        lv_targets::by_name(name)
            .map(BuiltinTarget)
            .map_err(value_error)
    }
    #[getter]
    fn name(&self) -> String {
        self.0.name().to_string()
    }
    #[getter]
    fn dim(&self) -> usize {
        self.0.dim()
    }
    #[getter]
    fn log_z(&self) -> Option<f64> {
        self.0.log_z()
    }
    #[getter]
    fn has_sampler(&self) -> bool {
        self.0.sampler().is_some()
    }
    /// log ρ(x) (unnormalised), float64 `[n]`. Computed without the GIL, as is the score:
    /// with torch imported, libtorch's autograd engine is torch's Python engine, which
    /// refuses to run while the calling thread holds the GIL.
    fn log_density<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray1<f64>>> {
        let x = batch(self.0.as_ref(), x)?;
        let t = self.0.as_ref();
        let y = py.allow_threads(move || t.log_density(&x).to_kind(Kind::Double).contiguous());
        let v = Vec::<f64>::try_from(&y).map_err(|e| value_error(e.into()))?;
        Ok(PyArray1::from_vec(py, v))
    }
    /// ∇ log ρ(x), float64 `[n, d]`.
    fn score<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray2<f64>>> {
        let x = batch(self.0.as_ref(), x)?;
        let t = self.0.as_ref();
        let s = py.allow_threads(move || t.score(&x));
        to_numpy2(py, &s)
    }
    /// The shipped reference samples, or exact samples when the target has a sampler
    /// (`n` of them, seeded); `None` when it has neither.
    #[pyo3(signature = (n=None, seed=0))]
    fn reference_samples<'py>(
        &self,
        py: Python<'py>,
        n: Option<usize>,
        seed: u64,
    ) -> PyResult<Option<Bound<'py, PyArray2<f64>>>> {
        let n = n.unwrap_or(10_000);
        if n == 0 || n > lv_core::check::MAX_COUNT {
            return Err(PyValueError::new_err(format!(
                "n must be in [1, {}] (got {n})",
                lv_core::check::MAX_COUNT
            )));
        }
        tch::manual_seed(seed as i64);
        match run::reference_samples(self.0.as_ref(), n) {
            None => Ok(None),
            Some(r) => Ok(Some(r.map_err(value_error)?.to_pyarray(py))),
        }
    }
}

/// Registers a Python target under `name` (prefixed `py:` by the Python wrapper).
#[pyfunction]
#[pyo3(signature = (name, dim, log_prob, bridge, score=None, log_z=None, domain=None))]
#[allow(clippy::too_many_arguments)]
fn register_target(
    name: String,
    dim: usize,
    log_prob: Py<PyAny>,
    bridge: Py<PyAny>,
    score: Option<Py<PyAny>>,
    log_z: Option<f64>,
    domain: Option<Vec<(f64, f64)>>,
) -> PyResult<()> {
    if dim == 0 || dim > 100_000 {
        return Err(PyValueError::new_err(format!(
            "dim must be in [1, 100000], got {dim}"
        )));
    }
    let domain = domain.unwrap_or_else(|| vec![(-10.0, 10.0); dim]);
    if domain.len() != dim
        || domain
            .iter()
            .any(|(a, b)| !(a.is_finite() && b.is_finite() && a < b))
    {
        return Err(PyValueError::new_err(format!(
            "domain must be {dim} finite (lo, hi) pairs with lo < hi"
        )));
    }
    let t = target::PyTarget {
        name,
        dim,
        log_z,
        domain,
        log_prob,
        score,
        bridge,
    };
    lv_targets::register(Arc::new(t)).map_err(value_error)
}

/// Raises the exception a Python target kept during the last library call, if any.
fn raise_pending() -> PyResult<()> {
    match target::take_pending() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Resolves a config and trains it in `out`; returns (run folder, results.json text or
/// `None` when stopped early). `python_target`: the config's target is a Python callable,
/// for which losses that differentiate log ρ through the trajectory are refused.
#[pyfunction]
#[pyo3(signature = (config, out=None, row=None, overrides=None, quiet=false, python_target=false))]
fn train(
    py: Python<'_>,
    config: &Bound<'_, PyAny>,
    out: Option<PathBuf>,
    row: Option<String>,
    overrides: Option<&Bound<'_, PyDict>>,
    quiet: bool,
    python_target: bool,
) -> PyResult<(String, Option<String>)> {
    let ov = overrides_of(overrides)?;
    let cfg = resolve_config(config, row.as_deref(), &ov)?;
    let detached = cfg.loss.with_k(cfg.lv_traj_k).map(|l| l.detached());
    if python_target && detached.is_ok_and(|d| !d) {
        return Err(PyValueError::new_err(format!(
            "loss `{}` differentiates log ρ through the trajectory, which a target written in \
             Python cannot give to libtorch's graph here; use an LV-family loss (lv, lv_biased, \
             vargrad, lv_traj, ...)",
            cfg.loss
        )));
    }
    let dir = out.unwrap_or_else(|| run::default_run_dir(&cfg));
    let results = train_interruptible(py, cfg, &dir, false, quiet)?;
    Ok((dir.display().to_string(), results))
}

/// [`run::train_in`] with the GIL released, stopping at the end of a step on Ctrl-C (then
/// `KeyboardInterrupt`) or when a Python target failed (then its exception); the results as
/// JSON text, `None` if the run stopped early.
fn train_interruptible(
    py: Python<'_>,
    cfg: RunConfig,
    dir: &Path,
    resume: bool,
    quiet: bool,
) -> PyResult<Option<String>> {
    let _ = target::take_pending();
    let (result, interrupted) = py.allow_threads(|| {
        let interrupted = std::sync::atomic::AtomicBool::new(false);
        let stop = || {
            let ctrl_c = Python::with_gil(|py| py.check_signals().is_err());
            if ctrl_c {
                interrupted.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            ctrl_c || target::pending()
        };
        let opts = TrainOptions {
            stop_after: None,
            quiet,
            interrupt: Some(&stop),
        };
        (
            run::train_in(cfg, dir, resume, &opts),
            interrupted.into_inner(),
        )
    });
    raise_pending()?;
    if interrupted {
        return Err(PyKeyboardInterrupt::new_err(format!(
            "training interrupted; the checkpoint in {} is valid (continue with lv.resume({:?}))",
            dir.display(),
            dir.display().to_string()
        )));
    }
    result
        .map_err(value_error)?
        .map(|r| serde_json::to_string(&r))
        .transpose()
        .map_err(|e| PyValueError::new_err(e.to_string()))
}

/// Continues the run in `run_dir` from its checkpoint (`lv train --resume`).
#[pyfunction]
#[pyo3(signature = (run_dir, quiet=false))]
fn resume(py: Python<'_>, run_dir: PathBuf, quiet: bool) -> PyResult<Option<String>> {
    let cfg = RunConfig::load(&run_dir.join("config.toml"), &[])
        .with_context(|| format!("{} is not a run folder", run_dir.display()))
        .map_err(value_error)?;
    train_interruptible(py, cfg, &run_dir, true, quiet)
}

/// `lv eval RUN`: the results (JSON text) of evaluating the run's EMA weights again.
#[pyfunction]
fn evaluate(py: Python<'_>, run_dir: PathBuf) -> PyResult<String> {
    let _ = target::take_pending();
    let r = py.allow_threads(|| run::evaluate_folder(&run_dir, &[], &Overrides::default()));
    raise_pending()?;
    let r = r.map_err(value_error)?;
    serde_json::to_string(&r).map_err(|e| PyValueError::new_err(e.to_string()))
}

/// `lv sample RUN -n N`: terminal samples, float64 `[n, d]`.
#[pyfunction]
#[pyo3(signature = (run_dir, n, seed=None))]
fn sample<'py>(
    py: Python<'py>,
    run_dir: PathBuf,
    n: usize,
    seed: Option<u64>,
) -> PyResult<Bound<'py, PyArray2<f64>>> {
    let _ = target::take_pending();
    let ov = Overrides {
        seed,
        ..Overrides::default()
    };
    let x = py.allow_threads(|| run::sample_folder(&run_dir, n, &ov));
    raise_pending()?;
    Ok(x.map_err(value_error)?.to_pyarray(py))
}

/// The config of a shipped preset row (`"quick/pis-lv-gmm9"`) as TOML text.
#[pyfunction]
fn show_config(config: &Bound<'_, PyAny>) -> PyResult<String> {
    let cfg = resolve_config(config, None, &[])?;
    toml::to_string_pretty(&cfg).map_err(|e| PyValueError::new_err(e.to_string()))
}

/// Whether libtorch was built with CUDA and sees a device.
#[pyfunction]
fn cuda_available() -> bool {
    tch::Cuda::is_available()
}

#[pymodule]
fn _lv(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("TORCH_VERSION", "2.13.0")?;
    m.add_class::<BuiltinTarget>()?;
    m.add_class::<target::TensorOwner>()?;
    m.add_function(wrap_pyfunction!(target_names, m)?)?;
    m.add_function(wrap_pyfunction!(register_target, m)?)?;
    m.add_function(wrap_pyfunction!(train, m)?)?;
    m.add_function(wrap_pyfunction!(resume, m)?)?;
    m.add_function(wrap_pyfunction!(evaluate, m)?)?;
    m.add_function(wrap_pyfunction!(sample, m)?)?;
    m.add_function(wrap_pyfunction!(show_config, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_available, m)?)?;
    Ok(())
}
