"""Training steps/s of a target written in PyTorch against the same target in Rust, through
the same in-process driver (`lv.train`), in one run.

    python benches/python/bench_python_target.py [--batch 2048] [--steps 60] [--rounds 3]

The target is the registry's `gauss` (1-D N(3, 1), normalised) and its PyTorch copy
`-0.5 (x − 3)² − 0.5 log 2π`, so the runs differ only in where log ρ and ∇ log ρ are computed.
For each row of the shipped `quick` preset given (PIS with the Langevin-input network calls
the score at every time step; DIS as well), both targets train `steps` steps at the given
batch, one libtorch thread, alternating Rust and Python runs for `rounds` paired rounds.
Prints a markdown table with the median steps/s of each and their ratio.
"""

import argparse
import math
import statistics
import tempfile

import torch

import lv

p = argparse.ArgumentParser()
p.add_argument("--batch", type=int, default=2048)
p.add_argument("--steps", type=int, default=60)
p.add_argument("--rounds", type=int, default=3)
p.add_argument("--rows", default="pis-lv-gmm9,dis-lv-gmm9")
args = p.parse_args()

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def gauss_torch(x):
    return -0.5 * ((x - 3.0) ** 2).sum(-1) - HALF_LOG_2PI


def gauss_torch_score(x):
    return -(x - 3.0)


def steps_per_s(row, target, **kw):
    with tempfile.TemporaryDirectory() as d:
        r = lv.train(
            f"quick/{row}",
            target=target,
            out=f"{d}/run",
            overrides={"train.steps": args.steps, "train.batch": args.batch, "eval.n": 1000,
                       "threads": 1},
            quiet=True,
            **kw,
        )
    return args.steps / r.seconds


print(f"batch {args.batch}, {args.steps} steps per run, one libtorch thread, "
      f"median of {args.rounds} paired rounds\n")
print("| row | Rust target (steps/s) | PyTorch target, autograd score | ratio | "
      "PyTorch target, given score | ratio |")
print("|---|---|---|---|---|---|")
for row in args.rows.split(","):
    rust, auto, given = [], [], []
    for _ in range(args.rounds):
        rust.append(steps_per_s(row, "gauss"))
        auto.append(steps_per_s(row, gauss_torch, dim=1, name="gauss_torch", log_z=0.0))
        given.append(steps_per_s(row, gauss_torch, dim=1, name="gauss_torch_s",
                                 score=gauss_torch_score, log_z=0.0))
    r, a, g = (statistics.median(v) for v in (rust, auto, given))
    print(f"| {row} | {r:.1f} | {a:.1f} | {r / a:.2f}× | {g:.1f} | {r / g:.2f}× |")
