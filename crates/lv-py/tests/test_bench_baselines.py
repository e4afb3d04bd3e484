"""The speed baselines of benches/baselines (pytorch_step.py, jax_step.py): their targets
against the registry's, and one training step of each on benchmark rows resolved by
`lv.show_config`, as `cargo xtask bench --workloads benchmark` runs them.

The baselines are float32; the registry (`lv.targets.get`) computes in float64. Tolerances:
log densities to 2e-5 of |log ρ| plus 1e-3 — robot4's likelihood divides the squared
end-effector distance by 2·0.01², which turns float32 rounding of the cumulative angles
into relative errors near 1e-5 (measured up to 7e-6); scores to 1e-4 of the largest
|score| of the row plus 1e-3 (robot4's score is ~1e4 for the same reason).
"""

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

import lv

ROOT = Path(__file__).resolve().parents[3]
BASELINES = ROOT / "benches" / "baselines"
sys.path.insert(0, str(BASELINES))

import bench_targets_torch  # noqa: E402

TORCH_TARGETS = ["manywell32", "manywell64", "gmm40_50d", "mos50", "robot4"]
JAX_TARGETS = ["gmm9", "funnel10", "funnel10_clip30"] + TORCH_TARGETS


def points(name, n=64):
    """Points where the target has its mass: registry samples (exact or the shipped set),
    moved a little off them (robot4's reference set sits on the goals)."""
    x = lv.targets.get(name).reference_samples(n=n, seed=3)
    if x is None:
        x = lv.targets.get(name).reference_samples()
    g = torch.Generator().manual_seed(5)
    x = x[:n] + 0.01 * torch.randn(x[:n].shape, generator=g, dtype=torch.float64)
    return x.to(torch.float32)


def check(name, log_density, score, x):
    ref = lv.targets.get(name)
    want_lp = ref.log_prob(x.double())
    want_s = ref.score(x.double())
    got_lp = log_density(x).double()
    got_s = score(x).double()
    assert torch.all((got_lp - want_lp).abs() <= 2e-5 * want_lp.abs() + 1e-3), name
    row_max = want_s.abs().amax(1, keepdim=True)
    assert torch.all((got_s - want_s).abs() <= 1e-4 * row_max + 1e-3), name


@pytest.mark.parametrize("name", TORCH_TARGETS)
def test_torch_targets_match_the_registry(name):
    t = bench_targets_torch.TARGETS[name]()
    assert t.dim == lv.targets.get(name).dim
    check(name, t.log_density, t.score, points(name))


@pytest.mark.parametrize("name", JAX_TARGETS)
def test_jax_targets_match_the_registry(name):
    pytest.importorskip("jax")
    import jax.numpy as jnp

    import bench_targets_jax

    t = bench_targets_jax.TARGETS[name]()
    assert t.dim == lv.targets.get(name).dim
    x = points(name)
    xj = jnp.asarray(x.numpy())

    def as_torch(f):
        return lambda _x: torch.from_numpy(np.array(f(xj)))

    check(name, as_torch(t.log_density), as_torch(t.score), x)


def test_a_wrong_target_breaks_the_check():
    # The check is not vacuous: a density off by 0.1, or a score off by 1 %, fails it.
    t = bench_targets_torch.TARGETS["manywell64"]()
    x = points("manywell64")
    check("manywell64", t.log_density, t.score, x)
    with pytest.raises(AssertionError):
        check("manywell64", lambda y: t.log_density(y) + 0.1, t.score, x)
    with pytest.raises(AssertionError):
        check("manywell64", t.log_density, lambda y: 1.01 * t.score(y), x)


ROWS = ["cpu/pis-lv-robot4", "cpu/ou_dds-lv_biased-mos50", "cpu/ou_dds-lv_biased-manywell32"]


@pytest.mark.parametrize("row", ROWS)
@pytest.mark.parametrize("script", ["pytorch_step.py", "jax_step.py"])
def test_baseline_runs_a_benchmark_row(tmp_path, row, script):
    if script == "jax_step.py":
        pytest.importorskip("jax")
        pytest.importorskip("optax")
    cfg = tomllib.loads(lv.show_config(row))
    cfg["train"]["batch"] = 16
    cfg["sde"]["steps"] = 6
    cfg["model"]["mlp"]["width"] = 8
    file = tmp_path / "row.toml"
    file.write_text(lv.show_config(cfg))
    out = subprocess.run(
        [sys.executable, str(BASELINES / script), "--config", str(file), "--iters", "2",
         "--warmup", "1", "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    method, loss, target = row.split("/")[1].split("-")
    assert res["config"] == f"{method}-{loss}-{target}-b16-n6"
    assert res["steps_per_s"] > 0
    assert res["last_loss"] == res["last_loss"]  # not NaN


def test_a_row_the_baselines_cannot_reproduce_is_refused(tmp_path):
    cfg = tomllib.loads(lv.show_config("cpu/pis-lv-gmm9"))
    cfg["train"]["initial_repeats"] = 4
    file = tmp_path / "row.toml"
    file.write_text(lv.show_config(cfg))
    out = subprocess.run(
        [sys.executable, str(BASELINES / "pytorch_step.py"), "--config", str(file)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode != 0
    assert "initial_repeats > 1 has no baseline" in out.stderr
