//! Dense linear assignment: a shortest-augmenting-path solver (Jonker &
//! Volgenant 1987, in the form of Crouse 2016 that SciPy's
//! `linear_sum_assignment` uses) whose inner Dijkstra sweep is laid out for
//! SIMD.
//!
//! # Algorithm
//!
//! Minimise `Σ_i C[i, σ(i)]` over permutations σ of a square `n × n` matrix.
//! The solver keeps column prices `v` and an implicit row price
//! `u_i = C[i, σ(i)] − v_σ(i)` for assigned rows, with the invariants
//! `C[i, j] − u_i − v_j ≥ 0` (dual feasibility) and equality on assigned
//! pairs (complementary slackness); at the end both certify optimality by LP
//! duality ([`Assignment::max_dual_violation`] measures the first).
//!
//! 1. *Column reduction*: `v_j = min_i C[i, j]` (with `u = 0` this is
//!    feasible); scanning columns from the last, each column's minimising row
//!    takes it if that row is still free.
//! 2. For every free row `f`, a Dijkstra search over columns with reduced
//!    costs `C[i, j] − u_i − v_j ≥ 0` finds the shortest path to a free
//!    column; prices of the columns scanned are lowered by
//!    `μ − d_j` (μ: the path length) and the path is augmented.
//!
//! Unlike SciPy's loop over a shrinking index list (an indirect access per
//! element), each Dijkstra step here relaxes *all* `n` columns with one
//! contiguous, branch-free sweep (scanned columns carry the price `−∞`, so
//! their tentative distance stays `+∞` and never wins the minimum); the
//! sweep is compiled for AVX-512/AVX2 and chosen at run time (see
//! [`crate::fastmath`]). The same arithmetic as SciPy's solver otherwise,
//! so the two agree on the optimal cost (ties may pick a different optimal
//! permutation).

use anyhow::{bail, Result};

use crate::fastmath;

const NONE: u32 = u32::MAX;

/// An optimal assignment and the prices that certify it.
#[derive(Debug, Clone)]
pub struct Assignment {
    /// `col_for_row[i]`: the column assigned to row `i`.
    pub col_for_row: Vec<usize>,
    /// Column prices `v_j`; row prices are `u_i = C[i, σ(i)] − v_σ(i)`.
    pub col_price: Vec<f64>,
}

impl Assignment {
    /// `Σ_i C[i, σ(i)]` for the row-major `n × n` matrix `cost`.
    pub fn total_cost(&self, cost: &[f64]) -> f64 {
        let n = self.col_for_row.len();
        self.col_for_row
            .iter()
            .enumerate()
            .map(|(i, &j)| cost[i * n + j])
            .sum()
    }

    /// Largest dual infeasibility `max_ij (u_i + v_j − C[i, j])` (≤ 0 up to
    /// rounding for an optimal assignment: with complementary slackness on
    /// the assigned pairs it proves optimality).
    pub fn max_dual_violation(&self, cost: &[f64]) -> f64 {
        let n = self.col_for_row.len();
        let v = &self.col_price;
        let mut worst = f64::NEG_INFINITY;
        for (i, &ji) in self.col_for_row.iter().enumerate() {
            let row = &cost[i * n..(i + 1) * n];
            let u = row[ji] - v[ji];
            for (c, vj) in row.iter().zip(v) {
                worst = worst.max(u + vj - c);
            }
        }
        worst
    }
}

/// Solves the square assignment problem for the row-major `n × n` matrix
/// `cost` (all entries finite). See the module documentation.
pub fn solve(n: usize, cost: &[f64]) -> Result<Assignment> {
    if cost.len() != n * n {
        bail!(
            "assignment: cost has {} entries, expected {n} × {n}",
            cost.len()
        );
    }
    if n >= NONE as usize {
        bail!("assignment: n = {n} is too large");
    }
    if let Some(p) = cost.iter().position(|v| !v.is_finite()) {
        bail!(
            "assignment: non-finite cost {} at ({}, {})",
            cost[p],
            p / n.max(1),
            p % n.max(1)
        );
    }
    let row = |i: usize| &cost[i * n..(i + 1) * n];
    let mut col_for_row = vec![NONE; n];
    let mut row_for_col = vec![NONE; n];

    // 1. Column reduction.
    let mut v = vec![f64::INFINITY; n];
    let mut argmin = vec![0u32; n];
    for i in 0..n {
        for (j, &c) in row(i).iter().enumerate() {
            if c < v[j] {
                v[j] = c;
                argmin[j] = i as u32;
            }
        }
    }
    for j in (0..n).rev() {
        let i = argmin[j] as usize;
        if col_for_row[i] == NONE {
            col_for_row[i] = j as u32;
            row_for_col[j] = i as u32;
        }
    }

    // 2. Shortest augmenting paths from each free row.
    // `vs`: working copy of v with −∞ on the columns scanned in this search.
    let mut vs = v.clone();
    let mut dist = vec![f64::INFINITY; n];
    let mut pred = vec![0u32; n];
    let mut scanned: Vec<usize> = Vec::with_capacity(n);
    let mut scanned_dist: Vec<f64> = Vec::with_capacity(n);
    for f in 0..n {
        if col_for_row[f] != NONE {
            continue;
        }
        dist.fill(f64::INFINITY);
        // d_j = C[f, j] − v_j (u_f = 0 is allowed: f is unassigned, so only
        // feasibility C − u − v ≥ 0 matters and it holds for any u_f ≤ min).
        let (mut mu, mut j) = fastmath::relax(row(f), &vs, &mut dist, &mut pred, 0.0, f as u32);
        let sink = loop {
            scanned.push(j);
            scanned_dist.push(mu);
            vs[j] = f64::NEG_INFINITY;
            dist[j] = f64::INFINITY;
            let i = row_for_col[j];
            if i == NONE {
                break j;
            }
            let ci = row(i as usize);
            // Row i's price u_i = C[i, j] − v_j; relax d_k ← μ + C[i,k] − u_i − v_k.
            let base = mu - (ci[j] - v[j]);
            (mu, j) = fastmath::relax(ci, &vs, &mut dist, &mut pred, base, i);
            if !mu.is_finite() {
                bail!("assignment: no augmenting path (non-finite reduced costs)");
            }
        };
        // Price update for the scanned columns, then augment along pred.
        let total = *scanned_dist.last().expect("sink was scanned");
        for (&j, &dj) in scanned.iter().zip(&scanned_dist) {
            v[j] -= total - dj;
            vs[j] = v[j];
        }
        scanned.clear();
        scanned_dist.clear();
        let mut j = sink as u32;
        loop {
            let i = pred[j as usize];
            row_for_col[j as usize] = i;
            let prev = std::mem::replace(&mut col_for_row[i as usize], j);
            if i as usize == f {
                break;
            }
            j = prev;
        }
    }
    Ok(Assignment {
        col_for_row: col_for_row.into_iter().map(|j| j as usize).collect(),
        col_price: v,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn brute_force(n: usize, c: &[f64]) -> f64 {
        fn rec(n: usize, c: &[f64], i: usize, used: &mut Vec<bool>, acc: f64, best: &mut f64) {
            if i == n {
                *best = best.min(acc);
                return;
            }
            for j in 0..n {
                if !used[j] {
                    used[j] = true;
                    rec(n, c, i + 1, used, acc + c[i * n + j], best);
                    used[j] = false;
                }
            }
        }
        let mut best = f64::INFINITY;
        rec(n, c, 0, &mut vec![false; n], 0.0, &mut best);
        best
    }

    fn check_permutation(a: &Assignment) {
        let n = a.col_for_row.len();
        let mut seen = vec![false; n];
        for &j in &a.col_for_row {
            assert!(j < n && !seen[j], "not a permutation: {:?}", a.col_for_row);
            seen[j] = true;
        }
    }

    #[test]
    fn brute_force_small_random_and_tied() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for n in 1..=7 {
            for trial in 0..20 {
                // Half the trials use small integers: many ties and degenerate paths.
                let c: Vec<f64> = (0..n * n)
                    .map(|_| {
                        if trial % 2 == 0 {
                            rng.gen_range(-3.0..5.0)
                        } else {
                            rng.gen_range(0..3) as f64
                        }
                    })
                    .collect();
                let a = solve(n, &c).unwrap();
                check_permutation(&a);
                let want = brute_force(n, &c);
                assert!(
                    (a.total_cost(&c) - want).abs() < 1e-12,
                    "n={n} trial={trial}"
                );
                assert!(a.max_dual_violation(&c) < 1e-12);
            }
        }
    }

    #[test]
    fn matches_lsap_and_certifies_optimality() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for &(n, d) in &[(60usize, 2usize), (150, 2), (120, 10), (90, 1)] {
            let x: Vec<f64> = (0..n * d).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let y: Vec<f64> = (0..n * d).map(|_| rng.gen_range(-1.0..1.5)).collect();
            let mut c = vec![0.0; n * n];
            for i in 0..n {
                for j in 0..n {
                    c[i * n + j] = (0..d).map(|k| (x[i * d + k] - y[j * d + k]).powi(2)).sum();
                }
            }
            let a = solve(n, &c).unwrap();
            check_permutation(&a);
            let (rows, cols) = lsap::solve(n, n, &c, false).unwrap();
            let want: f64 = rows.iter().zip(&cols).map(|(&i, &j)| c[i * n + j]).sum();
            let got = a.total_cost(&c);
            assert!(
                (got - want).abs() <= 1e-10 * want.abs().max(1.0),
                "{got} vs {want}"
            );
            assert!(a.max_dual_violation(&c) < 1e-10, "n={n} d={d}");
        }
    }

    #[test]
    fn duplicate_points_and_constant_matrix() {
        // All-equal costs: every permutation is optimal.
        let n = 40;
        let c = vec![2.5; n * n];
        let a = solve(n, &c).unwrap();
        check_permutation(&a);
        assert_eq!(a.total_cost(&c), 2.5 * n as f64);
        // Rank-one structure with repeated rows.
        let c: Vec<f64> = (0..n * n)
            .map(|p| ((p / n) % 3) as f64 * ((p % n) % 5) as f64)
            .collect();
        let a = solve(n, &c).unwrap();
        check_permutation(&a);
        assert!(a.max_dual_violation(&c) < 1e-12);
    }

    #[test]
    fn errors() {
        assert!(solve(2, &[1.0, 2.0, 3.0]).is_err());
        let e = solve(2, &[1.0, f64::NAN, 3.0, 4.0])
            .unwrap_err()
            .to_string();
        assert!(e.contains("non-finite cost NaN at (0, 1)"), "{e}");
        assert!(solve(0, &[]).unwrap().col_for_row.is_empty());
    }
}
