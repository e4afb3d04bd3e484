"""lv_metrics against SciPy, POT and direct NumPy transcriptions of each convention.

Run by `cargo xtask test` (which builds and installs the wheel first), or by hand:
`pytest crates/lv-metrics-py/tests` in a venv holding the wheel, numpy, scipy and pot.
"""

import threading
import time

import numpy as np
import ot
import pytest
import scipy.optimize
import scipy.spatial.distance

import lv_metrics as m


def clouds(seed, n=200, d=3, shift=0.5, m_=None):
    r = np.random.default_rng(seed)
    x = r.normal(size=(n, d))
    y = r.normal(size=(m_ or n, d)) * 1.3 + shift
    return x, y


def sq_cost(x, y):
    return ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)


# --- exact W2 -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_w2_matches_scipy_and_pot(seed):
    x, y = clouds(seed, n=150, d=1 + seed)
    c = sq_cost(x, y)
    rows, cols = scipy.optimize.linear_sum_assignment(c)
    ref = np.sqrt(c[rows, cols].mean())
    w = np.full(len(x), 1.0 / len(x))
    pot = np.sqrt(ot.emd2(w, w, c))
    assert abs(m.w2(x, y) - ref) < 1e-8
    assert abs(m.w2(x, y) - pot) < 1e-8
    assert abs(m.w2_squared(x, y) - ref**2) < 1e-8


@pytest.mark.parametrize("seed", range(3))
def test_exact_ot_cost_and_assignment_match_scipy(seed):
    r = np.random.default_rng(100 + seed)
    c = r.exponential(size=(120, 120))
    rows, cols = scipy.optimize.linear_sum_assignment(c)
    assert abs(m.exact_ot_cost(c) - c[rows, cols].mean()) < 1e-8
    sigma = m.assignment(c)
    assert abs(c[np.arange(120), sigma].sum() - c[rows, cols].sum()) < 1e-8
    assert sorted(sigma) == list(range(120))


@pytest.mark.parametrize("sizes", [(300, 300), (200, 300), (7, 5)])
def test_w2_1d_matches_pot(sizes):
    r = np.random.default_rng(sum(sizes))
    a, b = r.normal(size=sizes[0]), r.gamma(2.0, size=sizes[1])
    pot = np.sqrt(ot.emd2_1d(a, b))
    assert abs(m.w2_1d(a, b) - pot) < 1e-8
    assert m.energy_w2(a, b) == m.w2_1d(a, b)


# --- Sinkhorn -----------------------------------------------------------------------------


def sde_sinkhorn_numpy(x, y, eps, max_iter, tol):
    """A transcription of sde_sampler/eval/sinkhorn.py (log domain, Euclidean cost)."""
    c = np.sqrt(sq_cost(x, y))
    n, k = c.shape
    loga, logb = np.log(np.full(n, 1.0 / n)), np.log(np.full(k, 1.0 / k))
    u, v = np.zeros(n), eps * logb
    for _ in range(max_iter):
        u_old, v_old = u, v
        u = eps * (loga - scipy.special.logsumexp((v[None, :] - c) / eps, axis=1))
        v = eps * (logb - scipy.special.logsumexp((u[:, None] - c) / eps, axis=0))
        if np.abs(u - u_old).max() < tol and np.abs(v - v_old).max() < tol:
            break
    p = np.exp((u[:, None] + v[None, :] - c) / eps)
    return (p * c).sum()


@pytest.mark.parametrize("eps,max_iter", [(1e-3, 100), (0.05, 100), (0.5, 1000)])
def test_sinkhorn_sde_matches_the_reference_algorithm(eps, max_iter):
    x, y = clouds(7, n=180, m_=150)
    ref = sde_sinkhorn_numpy(x, y, eps, max_iter, 1e-5)
    got = m.sinkhorn_sde(x, y, eps=eps, max_iter=max_iter)
    assert abs(got - ref) <= 1e-8 * max(1.0, abs(ref))


def test_sinkhorn_sde_converged_matches_pot():
    # At a converged fixed point the sde_sampler value is POT's <P, M> (sinkhorn2's value).
    x, y = clouds(8, n=120)
    c = np.sqrt(sq_cost(x, y))
    w = np.full(120, 1.0 / 120)
    pot = ot.sinkhorn2(w, w, c, 0.3, method="sinkhorn_log", stopThr=1e-14, numItermax=100000)
    got = m.sinkhorn_sde(x, y, eps=0.3, max_iter=100000, tol=1e-14)
    assert abs(got - float(pot)) < 1e-8


def entropic_primal(x, y, eps):
    """ott's reg_ot_cost at convergence: <P, C> + eps KL(P | a b^T), from POT's plan."""
    c = sq_cost(x, y)
    a, b = np.full(len(x), 1.0 / len(x)), np.full(len(y), 1.0 / len(y))
    p = ot.sinkhorn(a, b, c, eps, method="sinkhorn_log", stopThr=1e-13, numItermax=200000)
    mask = p > 0
    kl = (p[mask] * np.log(p[mask] / np.outer(a, b)[mask])).sum()
    return (p * c).sum() + eps * kl


@pytest.mark.parametrize("seed", range(3))
def test_sinkhorn_divergence_matches_pot_at_convergence(seed):
    x, y = clouds(20 + seed, n=100, m_=80)
    mean_c = sq_cost(x, y).mean()
    assert abs(m.default_epsilon(x, y) - 0.05 * mean_c) < 1e-10 * mean_c
    # A larger ε than the default rule's, so that POT converges to 1e-13 in a few thousand
    # iterations; the convention (cost, weights, debiasing, dual value) is the same for any ε.
    eps = 0.5 * mean_c
    ref = entropic_primal(x, y, eps) - 0.5 * entropic_primal(x, x, eps) - 0.5 * entropic_primal(y, y, eps)
    got = m.sinkhorn_divergence(x, y, eps=eps, threshold=1e-12, max_iter=200000)
    assert abs(got - ref) < 1e-8 * max(1.0, abs(ref))
    got_xy = m.reg_ot_cost(x, y, eps=eps, threshold=1e-12, max_iter=200000)
    assert abs(got_xy - entropic_primal(x, y, eps)) < 1e-8


def test_sinkhorn_divergence_of_a_set_with_itself_is_zero():
    # The cross term is solved by alternating updates and the self terms by the symmetric
    # scheme, so the value is 0 only up to the convergence threshold.
    x, _ = clouds(3, n=60)
    assert abs(m.sinkhorn_divergence(x, x)) < 1e-3
    assert abs(m.sinkhorn_divergence(x, x, threshold=1e-8, max_iter=100000)) < 1e-7


# --- MMD ----------------------------------------------------------------------------------


def mmd_median_numpy(x, y):
    z = np.vstack([x, y])
    dist = scipy.spatial.distance.cdist(z, z)
    h = np.median(dist[np.triu_indices(len(z))])
    k = lambda a, b: np.exp(-sq_cost(a, b) / (2 * h * h))  # noqa: E731
    n, k_ = len(x), len(y)
    mmd2 = k(x, x).sum() / (n * (n - 1)) + k(y, y).sum() / (k_ * (k_ - 1)) - 2 * k(x, y).mean()
    return np.sqrt(max(1e-20, mmd2)), h


def test_mmd_median_matches_its_numpy_transcription():
    x, y = clouds(4, n=150, d=4)
    ref, h = mmd_median_numpy(x, y)
    assert abs(m.mmd_median(x, y) - ref) < 1e-10
    assert abs(m.median_bandwidth(x, y) - h) < 1e-12


def test_mmd_unbiased_matches_the_u_statistic():
    x, y = clouds(5, n=120, d=2)
    z = np.vstack([x, y])
    d = scipy.spatial.distance.pdist(z)
    h = np.median(d)
    assert abs(m.median_bandwidth(x, y, include_diagonal=False) - h) < 1e-12
    k = lambda a, b: np.exp(-sq_cost(a, b) / (2 * h * h))  # noqa: E731
    kxx, kyy = k(x, x), k(y, y)
    n = len(x)
    ref = (kxx.sum() - n) / (n * (n - 1)) + (kyy.sum() - n) / (n * (n - 1)) - 2 * k(x, y).mean()
    assert abs(m.mmd_unbiased(x, y) - ref) < 1e-10
    assert abs(m.mmd_unbiased(x, y, bandwidth=0.7) - m.mmd_unbiased(x, y, bandwidth=0.7)) == 0


# --- particles, modes, stds ---------------------------------------------------------------


def test_geometric_w2_is_zero_for_permuted_translated_rotated_copies():
    # The particle permutation is chosen (Hungarian) before the Kabsch alignment, so a copy
    # is recognised exactly when the rotation does not change which particles are nearest:
    # well-separated particles on a square and rotations below 20 degrees.
    r = np.random.default_rng(9)
    n, p, k = 40, 4, 2
    square = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0], [4.0, 4.0]])
    x = (square[None] + 0.3 * r.normal(size=(n, p, k))).reshape(n, p * k)
    y = np.empty_like(x)
    for i in range(n):
        th = r.uniform(-0.35, 0.35)
        rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
        centred = x[i].reshape(p, k) - x[i].reshape(p, k).mean(0)
        parts = centred @ rot.T + r.normal(size=k)
        y[i] = parts[r.permutation(p)].reshape(-1)
    y = y[r.permutation(n)]
    assert m.geometric_w2(x, y, p) < 1e-7
    # ...and clearly positive for a different sample.
    assert m.geometric_w2(x, r.normal(size=(n, p * k)) * 2.0, p) > 0.1


def test_mode_coverage_matches_numpy():
    r = np.random.default_rng(11)
    centres = np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    s = np.vstack([r.normal(size=(90, 2)), r.normal(size=(10, 2)) + [5, 0]])
    got = m.mode_coverage(s, centres)
    nearest = np.argmin(sq_cost(s, centres), axis=1)
    counts = np.bincount(nearest, minlength=3)
    assert got["counts"] == counts.tolist()
    assert got["min_share"] == pytest.approx(1 / 12)
    assert got["covered"] == int((counts >= len(s) / 12).sum())
    assert got["fraction"] == pytest.approx(got["covered"] / 3)


def test_std_errors_match_numpy():
    x, y = clouds(12, n=300, d=3)
    s = np.array([1.0, 2.0, 0.5])
    got = m.std_errors(x, s)
    sh = x.std(axis=0, ddof=1)
    assert got["avg_marginal_stddev"] == pytest.approx(np.abs(sh - s).mean(), abs=1e-12)
    assert got["avg_stddev"] == pytest.approx(abs(sh.mean() - s.mean()), abs=1e-12)
    got2 = m.std_errors_vs_samples(x, y)
    assert got2["per_coordinate"] == pytest.approx(np.abs(sh - y.std(axis=0, ddof=1)).tolist(), abs=1e-12)


def test_report_agrees_with_the_single_functions():
    x, y = clouds(13, n=100)
    r = m.report(x, y)
    assert r["w2"] == m.w2(x, y)
    assert r["sinkhorn_sde"] == m.sinkhorn_sde(x, y)
    assert r["sinkhorn_div"] == m.sinkhorn_divergence(x, y)
    assert r["mmd_median"] == m.mmd_median(x, y)
    assert r["mmd_unbiased"] == m.mmd_unbiased(x, y)
    assert r["metric_sizes"]["w2"] == [100, 100]
    assert "w2_geometric" not in r
    assert "w2_geometric" in m.report(x[:, :2], y[:, :2], particles=2)


# --- dtypes, memory order, the GIL --------------------------------------------------------


def test_dtypes_and_memory_orders_give_the_same_values():
    x, y = clouds(14, n=120)
    x32 = x.astype(np.float32)
    base = m.sinkhorn_divergence(x32.astype(np.float64), y)
    for xi in [x32, np.asfortranarray(x32), np.asfortranarray(x32.astype(np.float64)),
               np.repeat(x32.astype(np.float64), 2, axis=0)[::2], x32.tolist()]:
        assert m.sinkhorn_divergence(xi, y) == pytest.approx(base, rel=1e-12)
    xi = (x * 1000).astype(np.int64)
    assert m.w2(xi, y) == m.w2(xi.astype(np.float64), y)


def test_the_gil_is_released_while_computing():
    x, y = clouds(15, n=1500, d=5)
    done = threading.Event()

    def work():
        m.w2(x, y)
        m.sinkhorn_sde(x, y)
        done.set()

    t = threading.Thread(target=work)
    ticks = 0
    start = time.perf_counter()
    t.start()
    while not done.is_set():
        ticks += 1
    t.join()
    elapsed = time.perf_counter() - start
    # Holding the GIL, the metric would leave this loop a few switch intervals (5 ms each).
    assert elapsed > 0.05
    assert ticks > 100_000 * elapsed


# --- bad input ----------------------------------------------------------------------------

X = np.zeros((5, 2)) + np.arange(5)[:, None]

BAD = {
    "dimension mismatch": lambda: m.w2(X, X[:, :1]),
    "unequal sizes": lambda: m.w2(X, X[:4]),
    "1-D input": lambda: m.sinkhorn_sde(X[0], X),
    "3-D input": lambda: m.mmd_median(np.zeros((2, 2, 2)), X),
    "empty set": lambda: m.sinkhorn_divergence(np.zeros((0, 2)), X),
    "NaN": lambda: m.sinkhorn_divergence(X * np.nan, X),
    "inf": lambda: m.mmd_median(X, X + np.inf),
    "None entry": lambda: m.w2([[1.0, None]] * 5, X),
    "strings": lambda: m.w2(np.array([["a", "b"]]), X),
    "complex": lambda: m.w2(X + 1j, X),
    "dict": lambda: m.w2({}, X),
    "eps <= 0": lambda: m.sinkhorn_sde(X, X, eps=0.0),
    "eps inf": lambda: m.sinkhorn_divergence(X, X, eps=float("inf")),
    "max_iter negative": lambda: m.sinkhorn_sde(X, X, max_iter=-1),
    "max_iter zero": lambda: m.sinkhorn_divergence(X, X, max_iter=0),
    "particles do not divide d": lambda: m.geometric_w2(X, X, 3),
    "particles zero": lambda: m.report(X, X, particles=0),
    "seed negative": lambda: m.report(X, X, seed=-1),
    "min_share > 1": lambda: m.mode_coverage(X, X, min_share=2.0),
    "min_share NaN": lambda: m.mode_coverage(X, X, min_share=float("nan")),
    "one sample for MMD": lambda: m.mmd_median(X[:1], X),
    "std length": lambda: m.std_errors(X, [1.0]),
    "bandwidth <= 0": lambda: m.mmd_unbiased(X, X, bandwidth=-1.0),
    "zero dimension": lambda: m.w2(np.zeros((3, 0)), np.zeros((3, 0))),
    "non-square cost": lambda: m.exact_ot_cost(np.ones((2, 3))),
    "w2_1d 2-D": lambda: m.w2_1d(X, X),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_raises_value_error(case):
    with pytest.raises(ValueError) as e:
        BAD[case]()
    assert str(e.value), case


def test_error_messages_are_those_of_the_library():
    with pytest.raises(ValueError, match=r"^w2_exact: dimension mismatch: first set has d = 2, second has d = 1$"):
        m.w2(X, X[:, :1])
    with pytest.raises(ValueError, match=r"non-finite value NaN at row 0, column 0"):
        m.sinkhorn_sde(X * np.nan, X)
