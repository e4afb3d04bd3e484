//! Equal-weight isotropic Gaussian mixtures (`gmm9`, `gmm25`, `fab40`, `gmm40_*`) and the 1-D
//! Gaussian `gauss`.

use anyhow::Result;
use lv_core::{ExactSampler, Target};
use tch::{Device, Kind, Tensor};

use crate::util::{parse_table, sq_dists, Constant, HALF_LOG_2PI};

const FAB40_MEANS: &str = include_str!("../data/fab40_means.csv");
const GMM40_MEANS_D2: &str = include_str!("../data/gmm40_means_d2.csv");
const GMM40_MEANS_D5: &str = include_str!("../data/gmm40_means_d5.csv");
const GMM40_MEANS_D50: &str = include_str!("../data/gmm40_means_d50.csv");

/// softplus(1) = log(1 + e), the component std of `fab40`.
pub const FAB40_STD: f64 = 1.313_261_687_518_222_8;

/// An equal-weight mixture of K isotropic Gaussians in R^d with a common std σ:
///
/// ρ(x) = (1/K) Σ_k N(x; m_k, σ² I), normalised, so **log Z = 0**.
///
/// log ρ(x) = LSE_k(−‖x − m_k‖² / (2σ²)) − log K − (d/2)·log(2πσ²).
///
/// Score: the trait's autograd default (a generic, detached score, as for the GMM in the
/// reference code, method spec §6.6). Exact sampler: a uniform component index
/// (`Tensor::randint`) plus σ·`Tensor::randn`. Domain: per coordinate
/// [min_k m_k − 5σ, max_k m_k + 5σ] (the reference code's convention; ±7.739 for `gmm9`).
pub struct GaussianMixture {
    name: String,
    description: String,
    dim: usize,
    std: f64,
    means: Vec<Vec<f64>>,
    means_t: Constant,
    domain: Vec<(f64, f64)>,
}

impl GaussianMixture {
    /// A mixture with the given means (rows, all of length `dim`) and common std.
    pub fn new(name: &str, description: &str, means: Vec<Vec<f64>>, std: f64) -> Self {
        let dim = means[0].len();
        let flat: Vec<f64> = means.iter().flatten().copied().collect();
        let means_t = Constant::from_slice(&flat, &[means.len() as i64, dim as i64]);
        let domain = (0..dim)
            .map(|j| {
                let lo = means.iter().map(|m| m[j]).fold(f64::INFINITY, f64::min);
                let hi = means.iter().map(|m| m[j]).fold(f64::NEG_INFINITY, f64::max);
                (lo - 5.0 * std, hi + 5.0 * std)
            })
            .collect();
        GaussianMixture {
            name: name.to_string(),
            description: description.to_string(),
            dim,
            std,
            means,
            means_t,
            domain,
        }
    }

    /// `gmm9` (method spec §9, "grid"): d = 2, 9 modes at {−5, 0, 5}², variance 0.3.
    /// Per-coordinate variance 0.3 + 50/3 ≈ 16.967 (std ≈ 4.1191). log Z = 0.
    pub fn gmm9() -> Self {
        Self::grid("gmm9", &[-5.0, 0.0, 5.0])
    }

    /// `gmm25` (benchmarks spec §3.1, Sendera et al.): d = 2, 25 modes at {−10, −5, 0, 5, 10}²,
    /// covariance 0.3 I. log Z = 0.
    pub fn gmm25() -> Self {
        Self::grid("gmm25", &[-10.0, -5.0, 0.0, 5.0, 10.0])
    }

    fn grid(name: &str, coords: &[f64]) -> Self {
        // Row-major cartesian product (x outer, y inner), as torch.cartesian_prod.
        let means = coords
            .iter()
            .flat_map(|&a| coords.iter().map(move |&b| vec![a, b]))
            .collect::<Vec<_>>();
        let k = means.len();
        Self::new(
            name,
            &format!("{k}-mode Gaussian grid mixture on {coords:?}^2, variance 0.3, normalised"),
            means,
            0.3f64.sqrt(),
        )
    }

    /// `fab40` (method spec §9, "GMM-40 (fab)"): d = 2, 40 modes, std softplus(1) ≈ 1.3133.
    ///
    /// Means: the shipped table `data/fab40_means.csv`, produced once by the reference code's
    /// recipe with torch 2.x on the CPU:
    /// `g = torch.Generator(); g.manual_seed(42); loc = (torch.rand((40, 2), generator=g) - 0.5) * 2 * 40`
    /// (float32, written as exact float64). log Z = 0.
    pub fn fab40() -> Result<Self> {
        let flat = parse_table(FAB40_MEANS, 40, 2, "fab40_means.csv")?;
        Ok(Self::new(
            "fab40",
            "40-mode Gaussian mixture on [-40,40]^2 (torch seed 42), std softplus(1), normalised",
            flat.chunks(2).map(|c| c.to_vec()).collect(),
            FAB40_STD,
        ))
    }

    /// `gmm40_{d}d` (benchmarks spec §3.4): 40 equal-weight components with identity
    /// covariance in d ∈ {2, 5, 50}; means = 40·U(−1, 1)^{40×d} from JAX `PRNGKey(0)`, shipped
    /// as `data/gmm40_means_d{d}.csv`, the **legacy threefry variant** (jax < 0.5,
    /// `jax_threefry_partitionable=False`, as pinned by Beyond-ELBOs / SCLD). log Z = 0.
    pub fn gmm40(dim: usize) -> Result<Self> {
        let text = match dim {
            2 => GMM40_MEANS_D2,
            5 => GMM40_MEANS_D5,
            50 => GMM40_MEANS_D50,
            _ => anyhow::bail!("gmm40: no mean table for d = {dim} (available: 2, 5, 50)"),
        };
        let flat = parse_table(text, 40, dim, &format!("gmm40_means_d{dim}.csv"))?;
        Ok(Self::new(
            &format!("gmm40_{dim}d"),
            &format!(
                "40-mode Gaussian mixture in d={dim}, identity covariance, means U[-40,40]^d \
                 (JAX PRNGKey(0), jax<0.5 stream), normalised"
            ),
            flat.chunks(dim).map(|c| c.to_vec()).collect(),
            1.0,
        ))
    }

    /// The component means m_k.
    pub fn means(&self) -> &[Vec<f64>] {
        &self.means
    }

    /// The common component std σ.
    pub fn component_std(&self) -> f64 {
        self.std
    }

    /// Short human-readable description.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The analytic score on the host (CPU float32 batches without a graph): per row, the
    /// responsibilities softmax_k(−|x − m_k|²/2σ²) in f64 with the max trick, then
    /// (Σ_k w_k m_k / Σ_k w_k − x)/σ². Same value as the tensor path to float32 rounding
    /// (tested). Rows go in blocks of [`LANES`], one SIMD lane per row, each row with the
    /// arithmetic of the per-component loops in their order (squared distances summed over
    /// the coordinates in order, components in order); the exps that underflow to 0
    /// (exponent below −745.2) are not computed and components whose weight is 0 in every
    /// row of a block add nothing, so the values are the loops' bit for bit (tested).
    fn score_native(&self, x: &Tensor) -> Option<Tensor> {
        let var = self.std * self.std;
        let k = self.means.len();
        let d = self.dim;
        // m_kj at [j·K + k].
        let mt: Vec<f64> = (0..d)
            .flat_map(|j| self.means.iter().map(move |m| m[j]))
            .collect();
        let flat: Vec<f64> = self.means.iter().flatten().copied().collect();
        let (mut l, mut mean) = (vec![[0f64; LANES]; k], vec![[0f64; LANES]; d]);
        crate::util::simd(|| {
            crate::util::native_row_blocks::<LANES>(x, |xb, ob| {
                score_block(&mt, &flat, var, xb, ob, &mut l, &mut mean)
            })
        })
    }

    /// Component log-likelihoods log N(x; m_k, σ² I), `[n, K]` (for mode assignment).
    pub fn component_log_densities(&self, x: &Tensor) -> Tensor {
        let var = self.std * self.std;
        let norm = -(self.dim as f64) * (HALF_LOG_2PI + self.std.ln());
        sq_dists(x, &self.means_t.like(x)) * (-0.5 / var) + norm
    }
}

/// Rows per block of the host score (one f64 lane each: one AVX-512 register).
const LANES: usize = 8;

/// The host score of [`LANES`] rows `xb` (`[LANES, d]`) into `ob` (see
/// [`GaussianMixture::score_native`]); `mt` holds the means coordinate-major (`[d, K]`),
/// `flat` component-major (`[K, d]`); `l` (`K` lanes) and `mean` (`d` lanes) are scratch.
#[inline(always)]
fn score_block(
    mt: &[f64],
    flat: &[f64],
    var: f64,
    xb: &[f32],
    ob: &mut [f32],
    l: &mut [[f64; LANES]],
    mean: &mut [[f64; LANES]],
) {
    let (k, d) = (l.len(), mean.len());
    l.fill([0.0; LANES]);
    for (j, mj) in mt.chunks_exact(k.max(1)).enumerate().take(d) {
        let xj: [f64; LANES] = std::array::from_fn(|r| xb[r * d + j] as f64);
        for (lk, &m) in l.iter_mut().zip(mj) {
            for r in 0..LANES {
                let t = xj[r] - m;
                lk[r] += t * t;
            }
        }
    }
    let mut mx = [f64::NEG_INFINITY; LANES];
    for lk in l.iter_mut() {
        for r in 0..LANES {
            lk[r] = -0.5 * lk[r] / var;
            mx[r] = mx[r].max(lk[r]);
        }
    }
    let mut tot = [0f64; LANES];
    for lk in l.iter_mut() {
        for r in 0..LANES {
            lk[r] = crate::util::exp_or_zero(lk[r] - mx[r]);
            tot[r] += lk[r];
        }
    }
    mean.fill([0.0; LANES]);
    // Σ_k w_k m_kj in component order for every j. A zero weight adds w·m = ±0, which
    // leaves every sum as it is (they start at +0), so only all-zero components are skipped.
    for (w, m) in l.iter().zip(flat.chunks_exact(d)) {
        if w.iter().all(|&v| v == 0.0) {
            continue;
        }
        for (a, &mj) in mean.iter_mut().zip(m) {
            for r in 0..LANES {
                a[r] += w[r] * mj;
            }
        }
    }
    for r in 0..LANES {
        for j in 0..d {
            ob[r * d + j] = ((mean[j][r] / tot[r] - xb[r * d + j] as f64) / var) as f32;
        }
    }
}

impl Target for GaussianMixture {
    fn name(&self) -> &str {
        &self.name
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn log_density(&self, x: &Tensor) -> Tensor {
        let k = self.means.len() as f64;
        self.component_log_densities(x).logsumexp([-1], false) - k.ln()
    }

    /// Analytic score ∇log ρ(x) = Σ_k softmax_k(log N(x; m_k, σ²I))·(m_k − x)/σ² (one
    /// `[n, K]` softmax and one `[n, K]×[K, d]` product), detached from the graph of x as the
    /// generic autograd score of the reference code is (spec §6.6); about 2× cheaper than
    /// autograd at B = 2048 (docs/performance.md).
    fn score(&self, x: &Tensor) -> Tensor {
        if let Some(s) = self.score_native(x) {
            return s;
        }
        tch::no_grad(|| {
            let x = x.detach();
            let w = self.component_log_densities(&x).softmax(-1, x.kind());
            let means = self.means_t.like(&x);
            (w.matmul(&means) - &x) / (self.std * self.std)
        })
    }

    /// 0 (normalised mixture).
    fn log_z(&self) -> Option<f64> {
        Some(0.0)
    }

    /// √(σ² + Var_k m_kj) per coordinate j (equal weights; the variance of the means with
    /// divisor K): 4.1191 for `gmm9`.
    fn marginal_stds(&self) -> Option<Vec<f64>> {
        let k = self.means.len() as f64;
        Some(
            (0..self.dim)
                .map(|j| {
                    let mean = self.means.iter().map(|m| m[j]).sum::<f64>() / k;
                    let var = self
                        .means
                        .iter()
                        .map(|m| (m[j] - mean).powi(2))
                        .sum::<f64>()
                        / k;
                    (self.std * self.std + var).sqrt()
                })
                .collect(),
        )
    }

    /// The component means.
    fn mode_centres(&self) -> Option<Vec<Vec<f64>>> {
        Some(self.means.clone())
    }

    fn domain(&self) -> Vec<(f64, f64)> {
        self.domain.clone()
    }

    fn sampler(&self) -> Option<&dyn ExactSampler> {
        Some(self)
    }
}

impl ExactSampler for GaussianMixture {
    fn sample(&self, n: usize, device: Device) -> Tensor {
        let k = self.means.len() as i64;
        let idx = Tensor::randint(k, [n as i64], (Kind::Int64, device));
        let means = self.means_t.get(device, Kind::Float);
        means.index_select(0, &idx)
            + Tensor::randn([n as i64, self.dim as i64], (Kind::Float, device)) * self.std
    }
}

/// `gauss`: the 1-D Gaussian N(3, 1), normalised (**log Z = 0**).
///
/// log ρ(x) = −(x − 3)²/2 − ½·log 2π; analytic score −(x − 3), kept in the autograd graph.
/// Domain 3 ± 5. Exact sampler 3 + `randn`.
pub struct Gauss {
    mean: f64,
    std: f64,
}

impl Gauss {
    /// N(3, 1).
    pub fn new() -> Self {
        Gauss {
            mean: 3.0,
            std: 1.0,
        }
    }
}

impl Default for Gauss {
    fn default() -> Self {
        Self::new()
    }
}

impl Target for Gauss {
    fn name(&self) -> &str {
        "gauss"
    }

    fn dim(&self) -> usize {
        1
    }

    fn log_density(&self, x: &Tensor) -> Tensor {
        let z = (x - self.mean) / self.std;
        (z.square() * -0.5).sum_dim_intlist(-1, false, None::<Kind>) - HALF_LOG_2PI - self.std.ln()
    }

    fn score(&self, x: &Tensor) -> Tensor {
        (x - self.mean) * (-1.0 / (self.std * self.std))
    }

    fn score_in_graph(&self) -> bool {
        true
    }

    /// 0 (normalised).
    fn log_z(&self) -> Option<f64> {
        Some(0.0)
    }

    fn marginal_stds(&self) -> Option<Vec<f64>> {
        Some(vec![self.std])
    }

    fn domain(&self) -> Vec<(f64, f64)> {
        vec![(self.mean - 5.0 * self.std, self.mean + 5.0 * self.std)]
    }

    fn sampler(&self) -> Option<&dyn ExactSampler> {
        Some(self)
    }
}

impl ExactSampler for Gauss {
    fn sample(&self, n: usize, device: Device) -> Tensor {
        Tensor::randn([n as i64, 1], (Kind::Float, device)) * self.std + self.mean
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host score as the straightforward per-row, per-component loops compute it: each
    /// squared distance summed over the coordinates in order, every exp, every weighted mean.
    fn per_component_score(g: &GaussianMixture, x: &[f32]) -> Vec<f32> {
        let var = g.std * g.std;
        let d = g.dim;
        let mut out = Vec::with_capacity(x.len());
        for xr in x.chunks_exact(d) {
            let l: Vec<f64> = g
                .means
                .iter()
                .map(|m| {
                    let sq: f64 = xr
                        .iter()
                        .zip(m)
                        .map(|(&a, &b)| (a as f64 - b) * (a as f64 - b))
                        .sum();
                    -0.5 * sq / var
                })
                .collect();
            let mx = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = l.iter().map(|v| (v - mx).exp()).collect();
            let tot: f64 = w.iter().sum();
            for (j, &xj) in xr.iter().enumerate() {
                let mean: f64 = w.iter().zip(&g.means).map(|(w, m)| w * m[j]).sum();
                out.push(((mean / tot - xj as f64) / var) as f32);
            }
        }
        out
    }

    /// The coordinate-major host score with skipped underflowing exps gives the per-component
    /// loops' values bit for bit (gmm9 and the 40-mode mixture in 50 dimensions, points near
    /// and far from the means).
    #[test]
    fn host_score_equals_per_component_loops_bitwise() {
        for (g, scale) in [
            (GaussianMixture::gmm9(), 6.0f32),
            (GaussianMixture::gmm40(50).unwrap(), 60.0),
        ] {
            let d = g.dim;
            let n = 257;
            let mut x: Vec<f32> = (0..n * d)
                .map(|i| ((i as u32).wrapping_mul(2_654_435_761) as f32 / 4.3e9 - 0.5) * scale)
                .collect();
            // Rows on a mean and next to one (one dominant weight, the rest underflowing).
            for (r, m) in g.means.iter().take(5).enumerate() {
                for (j, &mj) in m.iter().enumerate() {
                    x[r * d + j] = mj as f32 + 0.01 * r as f32;
                }
            }
            let xt = Tensor::from_slice(&x).view([n as i64, d as i64]);
            let got =
                Vec::<f32>::try_from(g.score_native(&xt).expect("host path").view([-1])).unwrap();
            let want = per_component_score(&g, &x);
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    a.to_bits(),
                    b.to_bits(),
                    "{}: element {i}: {a} vs {b}",
                    g.name
                );
            }
        }
    }
}
