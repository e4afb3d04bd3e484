//! Memory estimates checked before a run allocates: a batch, an evaluation or a sample
//! request that cannot fit is refused with the amount it needs, instead of failing inside
//! libtorch's allocator (an abort) or being killed by the OOM killer.
//!
//! The estimates are upper-bound style counts of the large buffers (float32 tensors, f64
//! arrays), not exact measurements; they are checked against `MemAvailable` of
//! `/proc/meminfo` (no check where that file is absent).

use anyhow::{bail, Result};

/// Bytes per trajectory row per time step kept for the backward pass of a training step:
/// the network's activations (≈ 3 tensors of `width` per layer), the Fourier features
/// (2F for the time branch, kept once per step and row in the worst case) and ≈ 8 state-sized
/// tensors (state, noise, control, score, their gradients), all float32.
pub fn train_bytes_per_row(dim: usize, width: usize, layers: usize, freqs: usize) -> u64 {
    4 * (3 * width * layers + 4 * freqs + 8 * dim) as u64
}

/// Bytes of one training step: `rows` trajectories × `steps` time steps.
pub fn train_bytes(rows: usize, steps: usize, per_row: u64) -> u64 {
    (rows as u64)
        .saturating_mul(steps as u64)
        .saturating_mul(per_row)
}

/// Bytes of an evaluation: `n` terminal samples of dimension `dim` (float32 tensor plus two
/// f64 arrays), `chunk` trajectories in flight (no gradients: ≈ 3 network activations of
/// `width` and 8 state-sized tensors per row), the exact W2 and MMD on `n_metrics` points
/// (dense n² f64 cost and kernel matrices, twice) and the streaming Sinkhorn on `n_sinkhorn`
/// points (the point sets and the dual vectors).
pub fn eval_bytes(
    n: usize,
    chunk: usize,
    dim: usize,
    width: usize,
    n_metrics: usize,
    n_sinkhorn: usize,
) -> u64 {
    let (n, chunk, dim, width) = (n as u64, chunk as u64, dim as u64, width as u64);
    let (nm, ns) = (n_metrics as u64, n_sinkhorn as u64);
    let samples = n.saturating_mul(dim).saturating_mul(20);
    let in_flight = chunk.saturating_mul(4 * (3 * width + 8 * dim));
    let dense = nm.saturating_mul(nm).saturating_mul(16);
    let sinkhorn = ns.saturating_mul(dim + 4).saturating_mul(16);
    samples
        .saturating_add(in_flight)
        .saturating_add(dense)
        .saturating_add(sinkhorn)
}

/// `MemAvailable` of `/proc/meminfo`, in bytes.
pub fn available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Refuses `bytes` when more than the available memory: "<what> needs about X GiB of memory,
/// Y GiB are available; <hint>".
pub fn ensure_fits(what: &str, bytes: u64, hint: &str) -> Result<()> {
    if let Some(avail) = available_bytes() {
        if bytes > avail {
            bail!(
                "{what} needs about {} of memory, {} are available; {hint}",
                gib(bytes),
                gib(avail)
            );
        }
    }
    Ok(())
}

fn gib(b: u64) -> String {
    format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_scale_and_refuse_the_impossible() {
        let per_row = train_bytes_per_row(2, 64, 4, 64);
        // The order of the measured ≈ 2 kB per row of the direct path at width 64.
        assert!((1_000..10_000).contains(&per_row), "{per_row}");
        assert_eq!(train_bytes(10, 5, per_row), 50 * per_row);
        assert_eq!(train_bytes(usize::MAX, usize::MAX, per_row), u64::MAX);
        let e = ensure_fits("training", u64::MAX, "lower `train.batch`");
        if available_bytes().is_some() {
            let e = e.unwrap_err().to_string();
            assert!(
                e.contains("needs about") && e.contains("train.batch"),
                "{e}"
            );
        }
        assert!(ensure_fits("x", 1, "").is_ok());
        assert!(eval_bytes(4000, 4000, 2, 64, 1000, 1000) < 1 << 30);
    }
}
