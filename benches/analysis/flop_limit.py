"""The arithmetic limit of the LV training step and of the final evaluation on this CPU.

Counts the floating-point operations of the FourierMLP trunk (spec §6.2: Lin_{d→C}, then
`hidden` Lin_{C→C}, each after a GELU, then Lin_{C→d}) per row and time step, and measures
one thread's float32 GEMM rate with torch at the trunk's own shapes and at a large square
shape (the BLAS kernel's peak on this machine). The limit of a workload is its GEMM FLOPs
divided by the measured rate at its shapes: everything else (GELU, the score, the SDE
update, libtorch's per-op overhead) comes on top.

Counts (one multiply-add = 2 FLOPs; a [m, k] x [k, n] product = 2mkn):
- forward, per row and step: 2(dC + hidden·C² + Cd);
- backward of the LV step, per row and step: the weight gradients (the same products as
  the forward) and the input gradients of every layer but the first (2(hidden·C² + Cd)).
The time branch and s(t) run once per grid time for the whole batch; their share is
printed too (well below 1 %).

Usage: python benches/analysis/flop_limit.py [--batch 2048] [--steps 200] [--dim 2]
       [--width 64] [--hidden 2] [--eval-n 100000] [--rounds 5]
"""

import argparse
import time

import torch


def gemm_rate(m, k, n, rounds):
    """Median GFLOP/s of torch.mm on one thread for [m, k] x [k, n], float32."""
    a = torch.randn(m, k)
    b = torch.randn(k, n)
    out = torch.empty(m, n)
    reps = max(1, int(2e9 / (2 * m * k * n)))
    torch.mm(a, b, out=out)
    rates = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b, out=out)
        dt = time.perf_counter() - t0
        rates.append(2 * m * k * n * reps / dt / 1e9)
    rates.sort()
    return rates[len(rates) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--dim", type=int, default=2)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=2)
    ap.add_argument("--eval-n", type=int, default=100_000)
    ap.add_argument("--eval-chunk", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(1)
    d, c, h = a.dim, a.width, a.hidden
    fwd = 2 * (d * c + h * c * c + c * d)
    bwd = fwd + 2 * (h * c * c + c * d)
    rows = a.batch * a.steps
    # Time branch (128 -> C -> C) and s(t) (128 -> C -> C -> C -> 1) per grid time, fwd + bwd.
    time_branch = 3 * a.steps * 2 * (128 * c + c * c + 128 * c + 2 * c * c + c)
    step_flops = rows * (fwd + bwd) + time_branch
    eval_flops = 2 * a.eval_n * a.steps * fwd
    print(f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}, 1 thread")
    print(f"trunk d={d}, C={c}, hidden={h}: forward {fwd} FLOPs per row and step, "
          f"LV backward {bwd}")
    print(f"LV step B={a.batch} x N={a.steps}: {step_flops / 1e9:.2f} GFLOP "
          f"(time branch and s(t) {100 * time_branch / step_flops:.2f} %)")
    print(f"final evaluation {a.eval_n} x {a.steps} x 2 passes: {eval_flops / 1e9:.0f} GFLOP")
    shapes = {
        "peak (1024^3)": (1024, 1024, 1024),
        f"hidden fwd [{a.batch},{c}]x[{c},{c}]": (a.batch, c, c),
        f"weight grad [{c},{a.batch}]x[{a.batch},{c}]": (c, a.batch, c),
        f"eval hidden [{a.eval_chunk},{c}]x[{c},{c}]": (a.eval_chunk, c, c),
    }
    rates = {}
    for name, (m, k, n) in shapes.items():
        rates[name] = gemm_rate(m, k, n, a.rounds)
        print(f"  GEMM {name}: {rates[name]:.1f} GFLOP/s")
    peak = rates["peak (1024^3)"]
    train_rate = rates[f"hidden fwd [{a.batch},{c}]x[{c},{c}]"]
    eval_rate = rates[f"eval hidden [{a.eval_chunk},{c}]x[{c},{c}]"]
    print(f"LV step limit: {step_flops / 1e9 / train_rate:.3f} s at the trunk-shape rate "
          f"({train_rate / step_flops * 1e9:.2f} steps/s), "
          f"{step_flops / 1e9 / peak:.3f} s at the peak rate ({peak / step_flops * 1e9:.2f} steps/s)")
    print(f"evaluation limit: {eval_flops / 1e9 / eval_rate:.1f} s at the trunk-shape rate, "
          f"{eval_flops / 1e9 / peak:.1f} s at the peak rate")


if __name__ == "__main__":
    main()
