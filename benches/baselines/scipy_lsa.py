#!/usr/bin/env python3
"""Time scipy.optimize.linear_sum_assignment on 2000 x 2000 squared-Euclidean
costs (d = 2 and d = 50), the baseline for lv-metrics' exact W2.

Usage: python3 benches/baselines/scipy_lsa.py [n] [repeats]
Prints one line per dimension: seconds (best of `repeats`) and the W2 value.
"""
import sys
import time

import numpy as np
from scipy.optimize import linear_sum_assignment


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    for d in (2, 50):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n, d))
        y = rng.standard_normal((n, d)) + 0.5
        cost = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            rows, cols = linear_sum_assignment(cost)
            best = min(best, time.perf_counter() - t)
        w2 = np.sqrt(cost[rows, cols].mean())
        print(f"scipy linear_sum_assignment n={n} d={d}: {best:.3f} s  (W2 = {w2:.6f})")


if __name__ == "__main__":
    main()
