//! Views between CPU float32 tensors and host slices: slices as `[rows, cols]` tensors (GEMM
//! operands and outputs, no copy) and contiguous tensors as slices.

use tch::{Device, Kind, Tensor};

/// A `[rows, cols]` row-major CPU float32 tensor over `len ≥ rows·cols` floats at `ptr`.
fn blob(ptr: *const f32, len: usize, rows: usize, cols: usize) -> Tensor {
    assert!(len >= rows * cols);
    // SAFETY: the memory covers rows·cols floats; every caller passes a live slice that
    // outlives the tensor (each use is a GEMM operand that dies within the statement).
    unsafe {
        Tensor::from_blob(
            ptr as *const u8,
            &[rows as i64, cols as i64],
            &[cols as i64, 1],
            Kind::Float,
            Device::Cpu,
        )
    }
}

/// A `[rows, cols]` tensor viewing `data` (read-only use).
pub(super) fn view(data: &[f32], rows: usize, cols: usize) -> Tensor {
    blob(data.as_ptr(), data.len(), rows, cols)
}

/// A `[rows, cols]` tensor viewing `data`, for a GEMM output written through the view.
pub(super) fn view_mut(data: &mut [f32], rows: usize, cols: usize) -> Tensor {
    blob(data.as_mut_ptr(), data.len(), rows, cols)
}

/// The elements of a contiguous CPU float32 tensor (read-only).
pub(crate) fn host(t: &Tensor) -> &[f32] {
    assert!(
        t.is_contiguous() && t.kind() == Kind::Float && t.device() == Device::Cpu,
        "host: contiguous CPU float32 tensor expected"
    );
    // SAFETY: the tensor owns numel contiguous floats, alive while `t` is.
    unsafe { std::slice::from_raw_parts(t.data_ptr() as *const f32, t.numel()) }
}

/// The elements of a contiguous CPU float32 tensor, writable in place.
#[allow(clippy::mut_from_ref)]
pub(super) fn host_mut_contig(t: &Tensor) -> &mut [f32] {
    assert!(
        t.is_contiguous() && t.kind() == Kind::Float && t.device() == Device::Cpu,
        "host_mut_contig: contiguous CPU float32 tensor expected"
    );
    let n = t.numel();
    // SAFETY: the tensor owns n contiguous floats; callers hold the only reference to it
    // (a fresh GEMM output or a fresh copy) while the slice lives.
    unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, n) }
}

/// Host copy of a float32 tensor (any shape), in row-major order.
pub(super) fn to_vec(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.detach().to_kind(Kind::Float).contiguous().flatten(0, -1))
        .expect("float32 tensor to host vector")
}
