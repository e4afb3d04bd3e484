//! A target written in Python: `log_prob(x: torch.Tensor) -> torch.Tensor` (and optionally
//! `score`), behind the library's [`Target`] trait.
//!
//! The bridge:
//! - The batch `x` (`[n, d]`, float32 or float64, on the CPU) is handed to Python as a NumPy
//!   array over libtorch's own memory (no copy), kept alive by a [`TensorOwner`] that holds a
//!   reference to the tensor; `lv._bridge` turns it into a `torch.Tensor` with
//!   `torch.from_numpy` (no copy). Batches on another device go through host memory.
//! - The result (`[n]`, and `[n, d]` for the score) is copied once into a libtorch tensor of
//!   the input's kind and device.
//! - Without a `score`, `lv._bridge` computes ∇ log ρ by `torch.autograd.grad`.
//! - Python exceptions cannot cross the `Target` methods (they return tensors), so the first
//!   one is kept in [`PENDING`], the call returns NaN, and the trainer's interrupt check
//!   ([`pending`]) stops the run at the end of that step; `lv.train` then raises it.
//! - The values are outside libtorch's autograd graph here, so losses that differentiate
//!   log ρ through the trajectory (KL) are refused for these targets (`lib.rs`).

use lv_core::Target;
use numpy::{AllowTypeChange, PyArray2, PyArrayLike1, PyArrayLike2, PyUntypedArrayMethods};
use pyo3::prelude::*;
use std::sync::Mutex;
use tch::{Device, Kind, Tensor};

/// The first Python exception raised by a target callback and not yet reported.
static PENDING: Mutex<Option<PyErr>> = Mutex::new(None);

fn keep(e: PyErr) {
    let mut p = PENDING.lock().unwrap_or_else(|p| p.into_inner());
    if p.is_none() {
        *p = Some(e);
    }
}

/// Whether a callback has failed since the last [`take_pending`].
pub fn pending() -> bool {
    PENDING.lock().unwrap_or_else(|p| p.into_inner()).is_some()
}

/// The kept exception, if any (and forgets it).
pub fn take_pending() -> Option<PyErr> {
    PENDING.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// Keeps a libtorch tensor alive while NumPy arrays view its memory. Never read: it only
/// holds the reference (so `Sync` is sound: no method touches the tensor).
#[pyclass(frozen)]
pub struct TensorOwner(#[allow(dead_code)] Tensor);

// SAFETY: the tensor is only dropped, never accessed, through a shared `TensorOwner`; tch
// tensors are `Send`, and dropping one from any thread is what tch allows.
unsafe impl Sync for TensorOwner {}

/// A NumPy view of a CPU, contiguous float32/float64 tensor `[n, d]`, owned by a
/// [`TensorOwner`].
pub fn numpy_view<'py>(py: Python<'py>, t: &Tensor) -> PyResult<Bound<'py, PyAny>> {
    let (n, d) = (t.size()[0] as usize, t.size()[1] as usize);
    let owner = Bound::new(py, TensorOwner(t.shallow_clone()))?.into_any();
    let ptr = t.data_ptr();
    // SAFETY: `t` is contiguous with shape [n, d] and the element type matched below; its
    // storage stays alive as long as `owner`, which the array references as its base.
    unsafe {
        match t.kind() {
            Kind::Float => {
                let v = ndarray::ArrayView2::from_shape_ptr((n, d), ptr as *const f32);
                Ok(PyArray2::borrow_from_array(&v, owner).into_any())
            }
            _ => {
                let v = ndarray::ArrayView2::from_shape_ptr((n, d), ptr as *const f64);
                Ok(PyArray2::borrow_from_array(&v, owner).into_any())
            }
        }
    }
}

/// The batch as Python will see it: CPU, contiguous, float32 or float64, no graph.
fn host_batch(x: &Tensor) -> Tensor {
    let kind = match x.kind() {
        Kind::Double => Kind::Double,
        _ => Kind::Float,
    };
    x.detach().to_device(Device::Cpu).to_kind(kind).contiguous()
}

/// A target whose log-density (and score) are Python callables.
pub struct PyTarget {
    pub name: String,
    pub dim: usize,
    pub log_z: Option<f64>,
    pub domain: Vec<(f64, f64)>,
    pub log_prob: Py<PyAny>,
    pub score: Option<Py<PyAny>>,
    /// `lv._bridge` (`call_log_prob`, `call_score`).
    pub bridge: Py<PyAny>,
}

impl PyTarget {
    fn nan(shape: &[i64], like: &Tensor) -> Tensor {
        Tensor::full(shape, f64::NAN, (like.kind(), like.device()))
    }

    fn call_log_prob(&self, x: &Tensor) -> PyResult<Tensor> {
        let h = host_batch(x);
        let n = h.size()[0] as usize;
        Python::with_gil(|py| {
            let arr = numpy_view(py, &h)?;
            let out = self.bridge.call_method1(
                py,
                "call_log_prob",
                (self.log_prob.clone_ref(py), arr, n),
            )?;
            let out: PyArrayLike1<f64, AllowTypeChange> = out.extract(py)?;
            let v = out.as_array().to_vec();
            Ok(Tensor::from_slice(&v)
                .to_kind(x.kind())
                .to_device(x.device()))
        })
    }

    fn call_score(&self, x: &Tensor) -> PyResult<Tensor> {
        let h = host_batch(x);
        let (n, d) = (h.size()[0] as usize, h.size()[1] as usize);
        Python::with_gil(|py| {
            let arr = numpy_view(py, &h)?;
            let score = match &self.score {
                Some(s) => s.clone_ref(py).into_any(),
                None => py.None(),
            };
            let out = self.bridge.call_method1(
                py,
                "call_score",
                (self.log_prob.clone_ref(py), score, arr, n, d),
            )?;
            let out: PyArrayLike2<f64, AllowTypeChange> = out.extract(py)?;
            debug_assert_eq!(out.shape(), [n, d]);
            let v = out.as_array().iter().copied().collect::<Vec<f64>>();
            Ok(Tensor::from_slice(&v)
                .view([n as i64, d as i64])
                .to_kind(x.kind())
                .to_device(x.device()))
        })
    }
}

impl Target for PyTarget {
    fn name(&self) -> &str {
        &self.name
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn log_density(&self, x: &Tensor) -> Tensor {
        if pending() {
            return Self::nan(&[x.size()[0]], x);
        }
        self.call_log_prob(x).unwrap_or_else(|e| {
            keep(e);
            Self::nan(&[x.size()[0]], x)
        })
    }

    fn score(&self, x: &Tensor) -> Tensor {
        if pending() {
            return Self::nan(&x.size(), x);
        }
        self.call_score(x).unwrap_or_else(|e| {
            keep(e);
            Self::nan(&x.size(), x)
        })
    }

    fn log_z(&self) -> Option<f64> {
        self.log_z
    }

    fn domain(&self) -> Vec<(f64, f64)> {
        self.domain.clone()
    }
}
