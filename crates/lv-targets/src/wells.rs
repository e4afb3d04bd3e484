//! Double-well products: the sde_sampler many-well (`dw1`, `mw5`, `mw50`) and the FAB
//! ManyWell (`manywell32`, `manywell64`).

use lv_core::{ExactSampler, Target};
use tch::{Device, Kind, Tensor};

use crate::util::{log_add_exp, rejection_sample, simpson, HALF_LOG_2PI};

/// Z₁(δ) = ∫ exp(−(x² − δ)²) dx by composite Simpson on [−√δ − 6, √δ + 6] (the integrand is
/// below e^{−1000} outside), 40 000 intervals: accurate to ~1e-14 relative.
pub fn double_well_z1(delta: f64) -> f64 {
    let r = delta.sqrt() + 6.0;
    simpson(|x| (-(x * x - delta).powi(2)).exp(), -r, r, 40_000)
}

/// The standard deviation of one double-well coordinate, √(∫y²e^{−(y²−δ)²}dy / Z₁(δ)), by
/// Simpson quadrature on the same range as [`double_well_z1`].
pub fn double_well_std(delta: f64) -> f64 {
    let r = delta.sqrt() + 6.0;
    let m2 = simpson(|x| x * x * (-(x * x - delta).powi(2)).exp(), -r, r, 40_000);
    (m2 / double_well_z1(delta)).sqrt()
}

/// The sde_sampler many-well: m double-well coordinates then d − m standard-Gaussian ones,
///
/// log ρ(x) = −Σ_{i<m} ((x_i − s)² − δ)² − ½ Σ_{i≥m} (x_i − s)²,
///
/// with an optional shift s (only `dw1` uses one). Unnormalised, with
/// **log Z = m·log Z₁(δ) + ((d − m)/2)·log 2π**, Z₁(δ) = ∫exp(−(x² − δ)²)dx (computed by
/// [`double_well_z1`]; reference constants: log Z₁(4) = −0.1082111026, log Z₁(2) =
/// 0.2930017367, so `mw5`: −0.5410555129, `mw50`: 42.81724268, `dw1`: 0.2930017367; mpmath,
/// shared/data README).
///
/// Analytic score (in graph): −4((x_i − s)² − δ)(x_i − s) on the wells, −(x_i − s) on the
/// Gaussian coordinates. Reference stds of a well coordinate: 1.98346 (δ = 4), 1.35475 (δ = 2).
///
/// **Exact sampler.** Gaussian coordinates: s + `randn`. Well coordinates by rejection from the
/// reference code's proposal q = ½N(s − √δ, 1/δ) + ½N(s + √δ, 1/δ) (std σ = 1/√δ) with the
/// envelope **M = 2σ√(2π) = 2√(2π/δ)**, i.e. ρ₁ ≤ M·q. Proof (y = x − s ≥ 0, the other side is
/// symmetric): ρ₁/q ≤ ρ₁/(½N(y; √δ, σ²)) = 2σ√(2π)·exp(−(y² − δ)² + δ(y − √δ)²/2), and
/// (y² − δ)² = (y − √δ)²(y + √δ)² ≥ δ(y − √δ)² for y ≥ 0, so the exponent is ≤ 0. The bound is
/// tight at y = √δ. (The reference code uses M = 3, which is *not* an envelope for δ = 2:
/// sup ρ₁/q ≈ 3.544 there.) Acceptance rate Z₁/M: 0.378 (δ = 2), 0.358 (δ = 4).
///
/// Domain (reference code): wells s ± (√δ + 2.5), Gaussian coordinates s ± 5.
pub struct ManyWell {
    name: String,
    dim: usize,
    wells: usize,
    delta: f64,
    shift: f64,
    log_z1: f64,
}

impl ManyWell {
    /// A many-well with `wells` double-well coordinates of separation δ out of `dim`.
    pub fn new(name: &str, dim: usize, wells: usize, delta: f64, shift: f64) -> Self {
        ManyWell {
            name: name.to_string(),
            dim,
            wells,
            delta,
            shift,
            log_z1: double_well_z1(delta).ln(),
        }
    }

    /// `dw1`: the 1-D shifted double well −((x − 1.5)² − 2)², log Z = 0.2930017367.
    pub fn dw1() -> Self {
        Self::new("dw1", 1, 1, 2.0, 1.5)
    }

    /// `mw5`: d = 5, all five coordinates wells with δ = 4 (32 modes), log Z = −0.5410555129.
    pub fn mw5() -> Self {
        Self::new("mw5", 5, 5, 4.0, 0.0)
    }

    /// `mw50`: d = 50, five wells with δ = 2 plus 45 Gaussian coordinates, log Z = 42.81724268.
    pub fn mw50() -> Self {
        Self::new("mw50", 50, 5, 2.0, 0.0)
    }

    /// Number of double-well coordinates m.
    pub fn wells(&self) -> usize {
        self.wells
    }

    /// Separation δ.
    pub fn delta(&self) -> f64 {
        self.delta
    }

    /// log Z₁(δ) of one well coordinate.
    pub fn log_z1(&self) -> f64 {
        self.log_z1
    }

    /// The rejection envelope M = 2√(2π/δ) (see the type docs).
    pub fn envelope(&self) -> f64 {
        2.0 * (2.0 * std::f64::consts::PI / self.delta).sqrt()
    }

    /// log q(x) of the two-component proposal for one well coordinate (f64, for tests).
    pub fn log_proposal(&self, x: f64) -> f64 {
        let sigma = 1.0 / self.delta.sqrt();
        let c = self.delta.sqrt();
        let lg = |m: f64| -0.5 * ((x - m) / sigma).powi(2) - HALF_LOG_2PI - sigma.ln();
        log_add_exp(lg(self.shift - c), lg(self.shift + c)) - std::f64::consts::LN_2
    }

    /// `n` exact draws `[n]` (float32) of one well coordinate.
    fn sample_wells(&self, n: usize, device: Device) -> Tensor {
        let opts = (Kind::Float, device);
        let sigma = 1.0 / self.delta.sqrt();
        let c = self.delta.sqrt();
        let log_m = self.envelope().ln();
        let accept = double_well_z1(self.delta) / self.envelope();
        rejection_sample(n, accept, |m| {
            let sign = Tensor::rand([m], opts).lt(0.5).to_kind(Kind::Float) * 2.0 - 1.0;
            let y = sign * c + Tensor::randn([m], opts) * sigma;
            let log_rho = -(y.square() - self.delta).square();
            let lq = |mu: f64| (&y - mu).square() * (-0.5 / (sigma * sigma));
            let log_q = Tensor::stack(&[lq(-c), lq(c)], 0).logsumexp([0], false)
                - (std::f64::consts::LN_2 + HALF_LOG_2PI + sigma.ln());
            let log_u = Tensor::rand([m], opts).log();
            let ok = log_u.le_tensor(&(log_rho - log_q - log_m));
            (y + self.shift, ok)
        })
    }
}

impl Target for ManyWell {
    fn name(&self) -> &str {
        &self.name
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn log_density(&self, x: &Tensor) -> Tensor {
        let y = x - self.shift;
        let w = y.narrow(1, 0, self.wells as i64);
        let wells = -(w.square() - self.delta)
            .square()
            .sum_dim_intlist(-1, false, None::<Kind>);
        if self.dim > self.wells {
            let g = y.narrow(1, self.wells as i64, (self.dim - self.wells) as i64);
            wells - g.square().sum_dim_intlist(-1, false, None::<Kind>) * 0.5
        } else {
            wells
        }
    }

    fn score(&self, x: &Tensor) -> Tensor {
        let y = x - self.shift;
        let w = y.narrow(1, 0, self.wells as i64);
        let sw = (w.square() - self.delta) * &w * -4.0;
        if self.dim > self.wells {
            let g = y.narrow(1, self.wells as i64, (self.dim - self.wells) as i64);
            Tensor::cat(&[sw, -g], 1)
        } else {
            sw
        }
    }

    fn score_in_graph(&self) -> bool {
        true
    }

    /// m·log Z₁(δ) + ((d − m)/2)·log 2π, with Z₁ by Simpson quadrature (see the type docs).
    fn log_z(&self) -> Option<f64> {
        Some(self.wells as f64 * self.log_z1 + (self.dim - self.wells) as f64 * HALF_LOG_2PI)
    }

    /// Well coordinates: √(E[(x − s)²]) = √(∫y²e^{−(y²−δ)²}dy / Z₁(δ)) by Simpson quadrature
    /// (1.98346 for δ = 4, 1.35475 for δ = 2; the mean is s by symmetry); Gaussian ones: 1.
    fn marginal_stds(&self) -> Option<Vec<f64>> {
        let s = double_well_std(self.delta);
        Some(
            (0..self.dim)
                .map(|i| if i < self.wells { s } else { 1.0 })
                .collect(),
        )
    }

    fn domain(&self) -> Vec<(f64, f64)> {
        let r = self.delta.sqrt() + 2.5;
        (0..self.dim)
            .map(|i| {
                let h = if i < self.wells { r } else { 5.0 };
                (self.shift - h, self.shift + h)
            })
            .collect()
    }

    fn sampler(&self) -> Option<&dyn ExactSampler> {
        Some(self)
    }
}

impl ExactSampler for ManyWell {
    fn sample(&self, n: usize, device: Device) -> Tensor {
        let (n_i, m) = (n as i64, self.wells as i64);
        let w = self.sample_wells(n * self.wells, device).reshape([n_i, m]);
        if self.dim > self.wells {
            let g = Tensor::randn([n_i, self.dim as i64 - m], (Kind::Float, device)) + self.shift;
            Tensor::cat(&[w, g], 1)
        } else {
            w
        }
    }
}

/// Z_x1 = ∫exp(−x⁴ + 6x² + ½x)dx as hard-coded by the FAB / gfn-diffusion / Beyond-ELBOs codes
/// (exact: 11784.509265127827).
pub const FAB_Z_X1: f64 = 11784.50927;

/// Proposal for the FAB double-well coordinate: (weight, mean, std) per component. The means sit
/// near the two modes (±1.7), the weights near the well masses (0.844 / 0.156).
const FAB_PROPOSAL: [(f64, f64, f64); 2] = [(0.84, 1.75, 0.4), (0.16, -1.71, 0.4)];

/// The FAB ManyWell (Midgley et al. 2023; benchmarks spec §3.3) in d = 2B dimensions: B
/// independent blocks (x_{2i}, x_{2i+1}), the even coordinate a double well and the odd one a
/// Gaussian:
///
/// log ρ(x) = Σ_i [−x_{2i}⁴ + 6x_{2i}² + ½x_{2i} − ½x_{2i+1}²].
///
/// **log Z = (d/2)·(log 11784.50927 + ½ log 2π)** (the constant hard-coded by the codes):
/// 164.6956753198 for d = 32, 329.3913506396 for d = 64 (shared/data README).
///
/// Analytic score (in graph): −4x³ + 12x + ½ on even, −x on odd coordinates.
///
/// **Exact sampler** (as enabled in RSMC): x_{2i+1} ~ N(0, 1); x_{2i} by rejection from the
/// two-component Gaussian proposal q = 0.84·N(1.75, 0.4²) + 0.16·N(−1.71, 0.4²) (means at the
/// modes, weights near the well masses 0.844 / 0.156) with envelope M = e^{0.002}·max_grid ρ₁/q.
/// Validity: r = log ρ₁ − log q has r' = g' − q'/q with g(x) = −x⁴ + 6x² + ½x and
/// −q'/q = Σ_k resp_k·(x − μ_k)/s² between (x − 1.75)/0.16 and (x + 1.71)/0.16. Hence for
/// x ≥ 3, r' ≤ −4x³ + 12x + ½ + (x + 1.71)/0.16 < 0 (−42 at x = 3, decreasing), and symmetrically
/// r' > 0 for x ≤ −3: the sup is attained in [−3, 3]. There |g'| ≤ 144.5 and |q'/q| ≤ 29.7, so
/// r is 175-Lipschitz and its maximum over a grid of step 2e-5 on [−4, 4] is within
/// 175·1e-5 = 1.75e-3 of the sup; the margin 2e-3 makes ρ₁ ≤ M·q everywhere. Acceptance
/// Z_x1/M ≈ 0.51.
///
/// Domain: x_{2i} ∈ [−3, 3], x_{2i+1} ∈ [−5, 5].
pub struct FabManyWell {
    name: String,
    dim: usize,
    log_envelope: f64,
}

impl FabManyWell {
    /// The ManyWell in `dim` (even) dimensions, registered as `manywell{dim}`.
    pub fn new(dim: usize) -> Self {
        assert!(
            dim.is_multiple_of(2) && dim > 0,
            "FAB ManyWell needs an even dimension"
        );
        FabManyWell {
            name: format!("manywell{dim}"),
            dim,
            log_envelope: Self::compute_log_envelope(),
        }
    }

    /// log ρ₁(x) = −x⁴ + 6x² + ½x of one double-well coordinate.
    pub fn log_rho_x1(x: f64) -> f64 {
        -x.powi(4) + 6.0 * x * x + 0.5 * x
    }

    /// log q(x) of the proposal (f64, for tests).
    pub fn log_proposal(x: f64) -> f64 {
        FAB_PROPOSAL
            .iter()
            .map(|&(w, m, s)| w.ln() - 0.5 * ((x - m) / s).powi(2) - HALF_LOG_2PI - s.ln())
            .fold(f64::NEG_INFINITY, log_add_exp)
    }

    /// log M of the rejection envelope (see the type docs).
    pub fn log_envelope(&self) -> f64 {
        self.log_envelope
    }

    fn compute_log_envelope() -> f64 {
        let steps = 400_000;
        let h = 8.0 / steps as f64;
        let best = (0..=steps)
            .map(|i| {
                let x = -4.0 + h * i as f64;
                Self::log_rho_x1(x) - Self::log_proposal(x)
            })
            .fold(f64::NEG_INFINITY, f64::max);
        // Lipschitz bound 175 of log ρ₁ − log q on [−4, 4] ⇒ grid error ≤ 175·h/2 = 1.75e-3.
        best + 2e-3
    }

    fn sample_x1(&self, n: usize, device: Device) -> Tensor {
        let opts = (Kind::Float, device);
        let accept = (FAB_Z_X1.ln() - self.log_envelope).exp();
        rejection_sample(n, accept, |m| {
            let (w0, m0, s0) = FAB_PROPOSAL[0];
            let (_, m1, s1) = FAB_PROPOSAL[1];
            let first = Tensor::rand([m], opts).lt(w0);
            let z = Tensor::randn([m], opts);
            let x = (&z * s0 + m0).where_self(&first, &(&z * s1 + m1));
            let log_rho = -x.pow_tensor_scalar(4.0) + x.square() * 6.0 + &x * 0.5;
            let comps: Vec<Tensor> = FAB_PROPOSAL
                .iter()
                .map(|&(w, mu, s)| {
                    (&x - mu).square() * (-0.5 / (s * s)) + (w.ln() - HALF_LOG_2PI - s.ln())
                })
                .collect();
            let log_q = Tensor::stack(&comps, 0).logsumexp([0], false);
            let log_u = Tensor::rand([m], opts).log();
            let ok = log_u.le_tensor(&(log_rho - log_q - self.log_envelope));
            (x, ok)
        })
    }
}

impl Target for FabManyWell {
    fn name(&self) -> &str {
        &self.name
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn log_density(&self, x: &Tensor) -> Tensor {
        let b = x.reshape([-1, self.dim as i64 / 2, 2]);
        let x1 = b.select(2, 0);
        let x2 = b.select(2, 1);
        let per = -x1.pow_tensor_scalar(4.0) + x1.square() * 6.0 + &x1 * 0.5 - x2.square() * 0.5;
        per.sum_dim_intlist(-1, false, None::<Kind>)
    }

    fn score(&self, x: &Tensor) -> Tensor {
        let b = x.reshape([-1, self.dim as i64 / 2, 2]);
        let x1 = b.select(2, 0);
        let x2 = b.select(2, 1);
        let s1 = x1.pow_tensor_scalar(3.0) * -4.0 + &x1 * 12.0 + 0.5;
        let s2 = -x2;
        Tensor::stack(&[s1, s2], 2).reshape([-1, self.dim as i64])
    }

    fn score_in_graph(&self) -> bool {
        true
    }

    /// (d/2)·(log 11784.50927 + ½ log 2π).
    fn log_z(&self) -> Option<f64> {
        Some(self.dim as f64 / 2.0 * (FAB_Z_X1.ln() + HALF_LOG_2PI))
    }

    fn domain(&self) -> Vec<(f64, f64)> {
        (0..self.dim)
            .map(|i| if i % 2 == 0 { (-3.0, 3.0) } else { (-5.0, 5.0) })
            .collect()
    }

    fn sampler(&self) -> Option<&dyn ExactSampler> {
        Some(self)
    }
}

impl ExactSampler for FabManyWell {
    fn sample(&self, n: usize, device: Device) -> Tensor {
        let b = self.dim as i64 / 2;
        let x1 = self
            .sample_x1(n * b as usize, device)
            .reshape([n as i64, b]);
        let x2 = Tensor::randn([n as i64, b], (Kind::Float, device));
        Tensor::stack(&[x1, x2], 2).reshape([n as i64, self.dim as i64])
    }
}
