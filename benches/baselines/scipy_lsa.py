#!/usr/bin/env python3
"""Time scipy.optimize.linear_sum_assignment on 2000 x 2000 squared-Euclidean
costs (d = 2 and d = 50), the baseline for lv-metrics' exact W2.

Usage: python3 benches/baselines/scipy_lsa.py [n] [repeats] [--dump DIR]
Prints one line per dimension: seconds (best of `repeats`) and the W2 value.
With --dump DIR the two cost matrices are also written as raw little-endian
float64 (DIR/cost_d2.bin, DIR/cost_d50.bin), so that
`cargo run --release -p lv-metrics --example timing -- --cost-files DIR/cost_d2.bin DIR/cost_d50.bin`
times lv's solver on exactly the same matrices.
"""
import sys
import time

import numpy as np
from scipy.optimize import linear_sum_assignment


def main() -> None:
    args = sys.argv[1:]
    dump = None
    if "--dump" in args:
        k = args.index("--dump")
        dump = args[k + 1]
        del args[k : k + 2]
    n = int(args[0]) if len(args) > 0 else 2000
    repeats = int(args[1]) if len(args) > 1 else 3
    for d in (2, 50):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n, d))
        y = rng.standard_normal((n, d)) + 0.5
        cost = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
        if dump is not None:
            cost.astype("<f8").tofile(f"{dump}/cost_d{d}.bin")
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            rows, cols = linear_sum_assignment(cost)
            best = min(best, time.perf_counter() - t)
        w2 = np.sqrt(cost[rows, cols].mean())
        print(f"scipy linear_sum_assignment n={n} d={d}: {best:.3f} s  (W2 = {w2:.6f})")


if __name__ == "__main__":
    main()
