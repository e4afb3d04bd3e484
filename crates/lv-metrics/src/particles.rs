//! Metrics for particle systems (DW-4, LJ-n): geometric W2 with
//! permutation + orthogonal alignment (AS / ASBS, `benchmarks.md` §4.4).

use anyhow::{bail, Result};
use ndarray::{Array2, ArrayView2, Zip};

use crate::cost::check_pair;
use crate::exact::exact_ot_cost;

/// Largest particle count for which the particle assignment is solved by
/// enumerating all permutations (6! = 720); above it the assignment solver [`crate::lap`] is used.
const BRUTE_FORCE_MAX: usize = 6;

/// Singular value decomposition `A = U diag(s) Vᵀ` of a small square matrix
/// by one-sided Jacobi rotations (Hestenes). `a` is `k × k` row-major.
/// Returns `(u, s, v)`, row-major, with `u` and `v` orthogonal even when `A`
/// is rank deficient (null directions are completed by Gram–Schmidt).
/// Singular values are non-negative, in no particular order.
pub fn jacobi_svd(a: &[f64], k: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    assert_eq!(a.len(), k * k);
    let mut w = a.to_vec(); // columns are orthogonalised in place
    let mut v = vec![0.0; k * k];
    for i in 0..k {
        v[i * k + i] = 1.0;
    }
    for _sweep in 0..60 {
        let mut rotated = false;
        for p in 0..k {
            for q in p + 1..k {
                let (mut al, mut be, mut ga) = (0.0, 0.0, 0.0);
                for r in 0..k {
                    let (x, y) = (w[r * k + p], w[r * k + q]);
                    al += x * x;
                    be += y * y;
                    ga += x * y;
                }
                if ga == 0.0 || ga.abs() <= 1e-15 * (al * be).sqrt() {
                    continue;
                }
                rotated = true;
                let zeta = (be - al) / (2.0 * ga);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                for mat in [&mut w, &mut v] {
                    for r in 0..k {
                        let (x, y) = (mat[r * k + p], mat[r * k + q]);
                        mat[r * k + p] = c * x - s * y;
                        mat[r * k + q] = s * x + c * y;
                    }
                }
            }
        }
        if !rotated {
            break;
        }
    }
    let mut s = vec![0.0; k];
    for (j, sj) in s.iter_mut().enumerate() {
        *sj = (0..k)
            .map(|r| w[r * k + j] * w[r * k + j])
            .sum::<f64>()
            .sqrt();
    }
    let smax = s.iter().copied().fold(0.0, f64::max);
    let tiny = smax * 1e-13 * k as f64;
    let mut u = vec![0.0; k * k];
    let mut done = vec![false; k];
    for j in 0..k {
        if s[j] > tiny && s[j] > 0.0 {
            for r in 0..k {
                u[r * k + j] = w[r * k + j] / s[j];
            }
            done[j] = true;
        }
    }
    // Complete U on the null space: Gram–Schmidt of unit vectors against the
    // columns already set.
    for j in 0..k {
        if done[j] {
            continue;
        }
        s[j] = 0.0;
        for e in 0..k {
            let mut cand = vec![0.0; k];
            cand[e] = 1.0;
            for _pass in 0..2 {
                for (o, &dn) in done.iter().enumerate() {
                    if dn {
                        let dot: f64 = (0..k).map(|r| cand[r] * u[r * k + o]).sum();
                        for r in 0..k {
                            cand[r] -= dot * u[r * k + o];
                        }
                    }
                }
            }
            let norm = cand.iter().map(|c| c * c).sum::<f64>().sqrt();
            if norm > 1e-6 {
                for r in 0..k {
                    u[r * k + j] = cand[r] / norm;
                }
                done[j] = true;
                break;
            }
        }
    }
    (u, s, v)
}

/// Kabsch alignment with reflections allowed: the orthogonal `R` (`k × k`,
/// row-major) minimising `‖X − Y R‖_F` for `P × k` particle arrays, i.e.
/// `R = U Vᵀ` from the SVD `YᵀX = U S Vᵀ` (no determinant correction).
pub fn kabsch(x: &[f64], y: &[f64], k: usize) -> Vec<f64> {
    let p = x.len() / k;
    let mut h = vec![0.0; k * k];
    for i in 0..p {
        for a in 0..k {
            for b in 0..k {
                h[a * k + b] += y[i * k + a] * x[i * k + b];
            }
        }
    }
    let (u, _, v) = jacobi_svd(&h, k);
    let mut r = vec![0.0; k * k];
    for a in 0..k {
        for b in 0..k {
            r[a * k + b] = (0..k).map(|c| u[a * k + c] * v[b * k + c]).sum();
        }
    }
    r
}

/// Squared Frobenius distance `‖X − Y R‖²` after Kabsch alignment
/// (reflections allowed) of `Y` onto `X`, both `P × k` row-major, without
/// any particle permutation.
pub fn kabsch_sq_distance(x: &[f64], y: &[f64], k: usize) -> f64 {
    let r = kabsch(x, y, k);
    let p = x.len() / k;
    let mut s = 0.0;
    for i in 0..p {
        for b in 0..k {
            let yr: f64 = (0..k).map(|a| y[i * k + a] * r[a * k + b]).sum();
            let d = x[i * k + b] - yr;
            s += d * d;
        }
    }
    s
}

fn all_permutations(n: usize) -> Vec<Vec<usize>> {
    fn rec(prefix: &mut Vec<usize>, used: &mut [bool], out: &mut Vec<Vec<usize>>) {
        if prefix.len() == used.len() {
            out.push(prefix.clone());
            return;
        }
        for i in 0..used.len() {
            if !used[i] {
                used[i] = true;
                prefix.push(i);
                rec(prefix, used, out);
                prefix.pop();
                used[i] = false;
            }
        }
    }
    let mut out = Vec::new();
    rec(&mut Vec::new(), &mut vec![false; n], &mut out);
    out
}

/// Geometric distance between two samples (AS/ASBS `eval_utils.py`):
/// Hungarian permutation of the particles of `y` on the Euclidean
/// particle–particle distances to `x`, then Kabsch (reflections allowed)
/// of the permuted `y` onto `x`; returns `D² = ‖x − R·Π(y)‖²` on the
/// flattened vectors. Inputs are `P × k` row-major (already centred by the
/// caller if wanted). Permutation first, then rotation (Köhler et al. 2020);
/// not a joint minimisation, so `D` is invariant to permuting particles and
/// to a common orthogonal map of both samples, but not exactly to rotating
/// only `y` when that changes the particle assignment.
pub fn particle_sq_distance(x: &[f64], y: &[f64], k: usize) -> f64 {
    let p = x.len() / k;
    let perms = if p <= BRUTE_FORCE_MAX {
        Some(all_permutations(p))
    } else {
        None
    };
    particle_sq_distance_with(x, y, k, perms.as_deref(), &mut Vec::new())
}

fn particle_sq_distance_with(
    x: &[f64],
    y: &[f64],
    k: usize,
    perms: Option<&[Vec<usize>]>,
    scratch: &mut Vec<f64>,
) -> f64 {
    let p = x.len() / k;
    // dist[a * p + b] = ‖x_a − y_b‖
    let mut dist = vec![0.0; p * p];
    for a in 0..p {
        for b in 0..p {
            dist[a * p + b] = (0..k)
                .map(|c| (x[a * k + c] - y[b * k + c]).powi(2))
                .sum::<f64>()
                .sqrt();
        }
    }
    let perm: Vec<usize> = match perms {
        Some(perms) => {
            let mut best = f64::INFINITY;
            let mut best_i = 0;
            for (i, pm) in perms.iter().enumerate() {
                let s: f64 = pm.iter().enumerate().map(|(a, &b)| dist[a * p + b]).sum();
                if s < best {
                    best = s;
                    best_i = i;
                }
            }
            perms[best_i].clone()
        }
        None => {
            crate::lap::solve(p, &dist)
                .expect("finite square particle distance matrix")
                .col_for_row
        }
    };
    scratch.clear();
    for &b in &perm {
        scratch.extend_from_slice(&y[b * k..(b + 1) * k]);
    }
    kabsch_sq_distance(x, scratch, k)
}

/// Subtracts, per sample, the mean over its `n_particles` particles
/// (centre of mass). `x` is `B × (P·k)` with particle-major layout
/// `[p0_x, p0_y, p1_x, …]`.
pub fn centre_particles(x: ArrayView2<f64>, n_particles: usize) -> Result<Array2<f64>> {
    let d = x.ncols();
    if n_particles == 0 || !d.is_multiple_of(n_particles) {
        bail!("particles: dimension {d} is not divisible by the number of particles {n_particles}");
    }
    let k = d / n_particles;
    let mut out = x.to_owned();
    for mut row in out.rows_mut() {
        for c in 0..k {
            let mean = (0..n_particles).map(|i| row[i * k + c]).sum::<f64>() / n_particles as f64;
            for i in 0..n_particles {
                row[i * k + c] -= mean;
            }
        }
    }
    Ok(out)
}

/// Matrix of geometric squared distances `D²(x_i, y_j)` (see
/// [`particle_sq_distance`]) between samples already centred.
pub fn particle_sq_distance_matrix(
    x: ArrayView2<f64>,
    y: ArrayView2<f64>,
    n_particles: usize,
) -> Result<Array2<f64>> {
    check_pair(&x, &y, "particle distances")?;
    let d = x.ncols();
    if n_particles == 0 || !d.is_multiple_of(n_particles) {
        bail!("particles: dimension {d} is not divisible by the number of particles {n_particles}");
    }
    let k = d / n_particles;
    let perms = (n_particles <= BRUTE_FORCE_MAX).then(|| all_permutations(n_particles));
    let xs = x.as_standard_layout().into_owned();
    let ys = y.as_standard_layout().into_owned();
    let mut out = Array2::<f64>::zeros((x.nrows(), y.nrows()));
    Zip::from(out.rows_mut())
        .and(xs.rows())
        .par_for_each(|mut orow, xi| {
            let xi = xi.as_slice().expect("standard layout");
            let mut scratch = Vec::with_capacity(d);
            for (o, yj) in orow.iter_mut().zip(ys.rows()) {
                let yj = yj.as_slice().expect("standard layout");
                *o = particle_sq_distance_with(xi, yj, k, perms.as_deref(), &mut scratch);
            }
        });
    Ok(out)
}

/// Geometric W2 for particle systems (AS / ASBS, `benchmarks.md` §4.4):
/// centre each sample (subtract its particle mean), compute for every pair
/// `D²` = squared distance after Hungarian particle permutation (Euclidean
/// particle distances) and Kabsch orthogonal alignment with reflections
/// allowed, then `W2 = sqrt(exact OT cost of D²)` with uniform weights
/// (POT `emd2`). Samples are `B × (P·k)`, particle-major. Requires equal
/// sample counts and `d % n_particles == 0`.
pub fn geometric_w2(x: ArrayView2<f64>, y: ArrayView2<f64>, n_particles: usize) -> Result<f64> {
    check_pair(&x, &y, "geometric_w2")?;
    if x.nrows() != y.nrows() {
        bail!(
            "geometric_w2: exact OT needs equal sample sizes, got {} and {}",
            x.nrows(),
            y.nrows()
        );
    }
    let xc = centre_particles(x, n_particles)?;
    let yc = centre_particles(y, n_particles)?;
    let d2 = particle_sq_distance_matrix(xc.view(), yc.view(), n_particles)?;
    Ok(exact_ot_cost(d2.view())?.max(0.0).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{seq::SliceRandom, Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use rand_distr::StandardNormal;

    fn cloud(n: usize, d: usize, seed: u64) -> Array2<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        Array2::from_shape_fn((n, d), |_| rng.sample(StandardNormal))
    }

    /// Random orthogonal k × k (QR-free: Gram–Schmidt of a Gaussian matrix),
    /// optionally with a reflection.
    fn random_orthogonal(k: usize, rng: &mut ChaCha8Rng, reflect: bool) -> Vec<f64> {
        let a: Vec<f64> = (0..k * k).map(|_| rng.sample(StandardNormal)).collect();
        let (u, _, _) = jacobi_svd(&a, k);
        let mut q = u;
        if reflect {
            for r in 0..k {
                q[r * k] = -q[r * k];
            }
        }
        q
    }

    fn apply(row: &mut [f64], q: &[f64], k: usize) {
        let p = row.len() / k;
        for i in 0..p {
            let v: Vec<f64> = row[i * k..(i + 1) * k].to_vec();
            for b in 0..k {
                row[i * k + b] = (0..k).map(|a| v[a] * q[a * k + b]).sum();
            }
        }
    }

    #[test]
    fn svd_reconstructs() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for k in [1, 2, 3, 5] {
            let a: Vec<f64> = (0..k * k).map(|_| rng.sample(StandardNormal)).collect();
            let (u, s, v) = jacobi_svd(&a, k);
            for i in 0..k {
                for j in 0..k {
                    let rec: f64 = (0..k).map(|c| u[i * k + c] * s[c] * v[j * k + c]).sum();
                    assert!((rec - a[i * k + j]).abs() < 1e-12);
                    let uu: f64 = (0..k).map(|c| u[c * k + i] * u[c * k + j]).sum();
                    let vv: f64 = (0..k).map(|c| v[c * k + i] * v[c * k + j]).sum();
                    let id = if i == j { 1.0 } else { 0.0 };
                    assert!((uu - id).abs() < 1e-12 && (vv - id).abs() < 1e-12);
                }
            }
        }
        // Rank-deficient: U still orthogonal.
        let (u, s, _) = jacobi_svd(&[1.0, 2.0, 2.0, 4.0], 2);
        assert!(s.contains(&0.0));
        let dot = u[0] * u[1] + u[2] * u[3];
        assert!(dot.abs() < 1e-12);
    }

    #[test]
    fn kabsch_invariant_to_rotation_and_reflection() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for k in [2, 3] {
            let x: Vec<f64> = (0..4 * k).map(|_| rng.sample(StandardNormal)).collect();
            let y: Vec<f64> = (0..4 * k).map(|_| rng.sample(StandardNormal)).collect();
            let base = kabsch_sq_distance(&x, &y, k);
            for reflect in [false, true] {
                let q = random_orthogonal(k, &mut rng, reflect);
                let mut yq = y.clone();
                apply(&mut yq, &q, k);
                let d = kabsch_sq_distance(&x, &yq, k);
                assert!(
                    (d - base).abs() < 1e-10,
                    "k={k} reflect={reflect}: {d} vs {base}"
                );
                // A rotated/reflected copy aligns exactly.
                let mut xq = x.clone();
                apply(&mut xq, &q, k);
                assert!(kabsch_sq_distance(&x, &xq, k) < 1e-20);
            }
        }
    }

    #[test]
    fn geometric_w2_invariances() {
        let (b, p, k) = (24, 4, 2);
        let x = cloud(b, p * k, 1);
        let y = cloud(b, p * k, 2);
        let base = geometric_w2(x.view(), y.view(), p).unwrap();
        assert!(base > 0.0);
        assert!(geometric_w2(x.view(), x.view(), p).unwrap() < 1e-12);
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        // Permuting particles within each sample of y.
        let mut yp = y.clone();
        for mut row in yp.rows_mut() {
            let mut order: Vec<usize> = (0..p).collect();
            order.shuffle(&mut rng);
            let old = row.to_vec();
            for (new_i, &old_i) in order.iter().enumerate() {
                for c in 0..k {
                    row[new_i * k + c] = old[old_i * k + c];
                }
            }
        }
        let w = geometric_w2(x.view(), yp.view(), p).unwrap();
        assert!((w - base).abs() < 1e-12, "{w} vs {base}");
        // Translating samples (centring removes it).
        let mut yt = y.clone();
        for mut row in yt.rows_mut() {
            let shift: [f64; 2] = [rng.gen_range(-3.0..3.0), rng.gen_range(-3.0..3.0)];
            for i in 0..p {
                for c in 0..k {
                    row[i * k + c] += shift[c];
                }
            }
        }
        let w = geometric_w2(x.view(), yt.view(), p).unwrap();
        assert!((w - base).abs() < 1e-12);
        // One common rotation / reflection of both clouds.
        for reflect in [false, true] {
            let q = random_orthogonal(k, &mut rng, reflect);
            let (mut xq, mut yq) = (x.clone(), y.clone());
            for mut r in xq.rows_mut() {
                apply(r.as_slice_mut().unwrap(), &q, k);
            }
            for mut r in yq.rows_mut() {
                apply(r.as_slice_mut().unwrap(), &q, k);
            }
            let w = geometric_w2(xq.view(), yq.view(), p).unwrap();
            assert!((w - base).abs() < 1e-10, "reflect={reflect}: {w} vs {base}");
        }
        // Rotating/reflecting each sample of one cloud: a rotated and
        // shuffled copy of x is at geometric distance 0 whenever the
        // permutation step recovers the particle matching; with small
        // rotations (0.05 rad) of these well-separated particles it does.
        let mut xr = x.clone();
        for mut row in xr.rows_mut() {
            let th: f64 = rng.gen_range(-0.05..0.05);
            let q = [th.cos(), th.sin(), -th.sin(), th.cos()];
            apply(row.as_slice_mut().unwrap(), &q, k);
        }
        let w = geometric_w2(x.view(), xr.view(), p).unwrap();
        assert!(w < 1e-7, "{w}");
        // Reflection of each sample combined with the known permutation is
        // exact at the Kabsch level (tested above); here: W2 ≥ 0 and finite.
        assert!(w >= 0.0);
    }

    #[test]
    fn geometric_w2_errors() {
        let x = cloud(4, 8, 1);
        let y = cloud(4, 8, 2);
        assert!(geometric_w2(x.view(), y.view(), 3).is_err());
        let y5 = cloud(5, 8, 2);
        assert!(geometric_w2(x.view(), y5.view(), 4).is_err());
    }

    #[test]
    fn large_particle_count_uses_assignment() {
        // P = 7 > BRUTE_FORCE_MAX: assignment-solver path; identical up to shuffle → 0.
        let x = cloud(3, 7 * 3, 4);
        let mut y = x.clone();
        for mut row in y.rows_mut() {
            let old = row.to_vec();
            for i in 0..7 {
                for c in 0..3 {
                    row[i * 3 + c] = old[((i + 3) % 7) * 3 + c];
                }
            }
        }
        let w = geometric_w2(x.view(), y.view(), 7).unwrap();
        assert!(w < 1e-7, "{w}");
    }
}
