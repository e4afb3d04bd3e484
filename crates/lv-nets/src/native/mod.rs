//! Native CPU forward and backward of the [`FourierMlp`](crate::FourierMlp) trunk, used for
//! the direct LV gradient ("tape" mode, see [`lv_core::Control::start_tape`]).
//!
//! In tape mode each trunk evaluation NN(t_k, x_k) runs outside autograd: the GEMMs are
//! libtorch's (`mm_out`/`addmm_` on views of our buffers, so the thread setting and the
//! BLAS kernel are the same as in the autograd path), while bias, GELU and the GELU
//! derivative are one fused, vectorised pass that stores a_l = GELU(h_l) and GELU'(h_l) for
//! the backward. The value is returned as a fresh leaf that requires grad. After the caller's
//! backward pass has filled the leaves' gradients δ_k = ∂L/∂NN_k, [`TrunkTape::backward`] runs
//! the trunk's backward for every step:
//!
//! - ∂L/∂W_out += δ_kᵀ a_last, ∂L/∂b_out += Σ_rows δ_k, and dh_last = (δ_k W_out) ⊙ GELU'(h_last);
//! - for the hidden layers l (from the top): ∂L/∂W_l += dh_lᵀ a_{l−1}, ∂L/∂b_l += Σ_rows dh_l,
//!   dh_{l−1} = (dh_l W_l) ⊙ GELU'(h_{l−1});
//! - input layer: ∂L/∂W_in += dh_0ᵀ x_k, ∂L/∂b_in += Σ_rows dh_0, and the time embedding row
//!   e_{t_k} (added to h_0) receives Σ_rows dh_0.
//!
//! GELU is the exact (erf) one, Φ from a relatively accurate erfc
//! ([`gelu_pair`](kernels::gelu_pair)); exp is a range-reduced degree-7 polynomial (relative
//! error < 2e-7). Both are float32-accurate and vectorise (AVX-512 or AVX2+FMA chosen at run
//! time).
//!
//! The code is in three parts: [`kernels`] (the fused elementwise passes on host slices, their
//! vectorised variants and their row-parallel split), [`views`] (CPU float32 tensors as host
//! slices, and host slices as GEMM operands) and [`tape`] (the recorded trunk evaluations and
//! their backward).

mod kernels;
mod tape;
mod views;

pub(crate) use tape::{Head, TapeLayer, TrunkTape};
pub(crate) use views::host;
