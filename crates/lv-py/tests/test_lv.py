"""The `lv` Python package: registry targets, training on a PyTorch target, resume after an
interrupt, and bad input as ValueError.

Run by `cargo xtask test` (which builds and installs the wheel first), or by hand:
`pytest crates/lv-py/tests` in a venv holding the wheel and torch==2.13.0.
"""

import _thread
import json
import math
import threading
import tomllib

import pytest
import torch

import lv

MU = torch.tensor([1.0, -2.0])
SIGMA = torch.tensor([0.5, 2.0])
# log ∫ exp(−½ Σ_k ((x_k − μ_k)/σ_k)²) dx
LOG_Z = float(0.5 * len(MU) * math.log(2 * math.pi) + torch.log(SIGMA).sum())


def gauss(x):
    return -0.5 * (((x - MU) / SIGMA) ** 2).sum(-1)


def gauss_score(x):
    return -(x - MU) / SIGMA**2


FAST = {"train.steps": 150, "eval.n": 2000}


# --- the registry -------------------------------------------------------------------------


def test_registry_targets_on_tensors():
    t = lv.targets.get("gmm9")
    assert t.name == "gmm9" and t.dim == 2 and t.has_sampler
    assert t.log_z == pytest.approx(0.0)
    x = torch.randn(16, 2, dtype=torch.float32) * 3
    y = t.log_prob(x)
    assert y.shape == (16,) and y.dtype == torch.float64
    # The score against central finite differences of log_prob.
    g = t.score(x)
    h = 1e-5
    for k in range(2):
        e = torch.zeros(2, dtype=torch.float64)
        e[k] = h
        xd = x.double()
        fd = (t.log_prob(xd + e) - t.log_prob(xd - e)) / (2 * h)
        assert torch.allclose(g[:, k], fd, rtol=1e-4, atol=1e-6)
    s = t.reference_samples(500, seed=3)
    assert s.shape == (500, 2)
    assert torch.equal(s, t.reference_samples(500, seed=3))
    assert "gmm9" in lv.targets.names() and "robot4" in lv.targets.names()


@pytest.mark.parametrize("name", ["mos50", "robot4", "gmm40_50d", "funnel10"])
def test_registry_scores_by_autograd_run_with_torch_imported(name):
    # These scores run libtorch's autograd, which with torch imported is torch's Python
    # engine: it must not be called holding the GIL (it would raise, not compute).
    t = lv.targets.get(name)
    x = t.reference_samples(8, seed=1)[:8]
    g = t.score(x)
    assert g.shape == x.shape and torch.isfinite(g).all()
    h = 1e-6
    for k in [0, t.dim - 1]:
        e = torch.zeros(t.dim, dtype=torch.float64)
        e[k] = h
        fd = (t.log_prob(x + e) - t.log_prob(x - e)) / (2 * h)
        assert torch.allclose(g[:, k], fd, rtol=1e-3, atol=1e-3 * g.abs().max()), name


def test_registry_errors_are_value_errors():
    with pytest.raises(ValueError, match="unknown target `nope`"):
        lv.targets.get("nope")
    with pytest.raises(ValueError, match="has dimension 2"):
        lv.targets.get("gmm9").log_prob(torch.zeros(3, 5))


# --- training on a PyTorch target ---------------------------------------------------------


def test_a_pytorch_gaussian_trains_to_its_log_z(tmp_path):
    r = lv.train("quick/pis-lv-gmm9", target=gauss, dim=2, out=str(tmp_path / "run"),
                 overrides={"train.steps": 300}, log_z=LOG_Z, quiet=True)
    assert r.run_dir == str(tmp_path / "run")
    assert r.log_z_ref == pytest.approx(LOG_Z)
    assert abs(r.log_z_is - LOG_Z) < 0.05
    assert r.log_z_error_is == pytest.approx(abs(r.log_z_is - LOG_Z))
    assert 0.5 < r.ess <= 1.0
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert on_disk["target"] == "py:gauss"
    assert on_disk["log_z_is"] == pytest.approx(r.log_z_is)
    # Samples of the trained sampler: mean and std near the target's.
    x = lv.sample(r.run_dir, 4000, target=gauss, dim=2)
    assert x.shape == (4000, 2) and x.dtype == torch.float32
    assert torch.allclose(x.mean(0), MU, atol=0.15)
    assert torch.allclose(x.std(0), SIGMA, rtol=0.15)
    # Evaluating again gives the same kind of result.
    again = lv.evaluate(r.run_dir, target=gauss, dim=2)
    assert abs(again.log_z_is - LOG_Z) < 0.05


def test_an_explicit_score_is_used_and_agrees_with_autograd(tmp_path):
    calls = {"score": 0}

    def score(x):
        calls["score"] += 1
        return gauss_score(x)

    r = lv.train("quick/dis-lv-gmm9", target=gauss, dim=2, score=score, name="gauss_s",
                 out=str(tmp_path / "s"), overrides=FAST, log_z=LOG_Z, quiet=True)
    assert calls["score"] > 0
    # The same run with the autograd score: equal scores up to rounding, so the same run.
    a = lv.train("quick/dis-lv-gmm9", target=gauss, dim=2, name="gauss_a",
                 out=str(tmp_path / "a"), overrides=FAST, log_z=LOG_Z, quiet=True)
    assert abs(r.log_z_is - a.log_z_is) < 1e-3


def test_dict_configs_and_shipped_rows_resolve_the_same(tmp_path):
    text = lv.show_config("quick/pis-lv-gmm9")
    cfg = tomllib.loads(text)
    assert cfg["method"] == "pis" and cfg["target"] == "gmm9"
    cfg["train"]["steps"] = 100
    r = lv.train(cfg, out=str(tmp_path / "d"), quiet=True)
    assert r.raw["steps"] == 100 and r.raw["target"] == "gmm9"
    assert "sinkhorn_div" in r.metrics or "w2" in r.metrics


# --- interrupts and errors from the callable ----------------------------------------------


def test_ctrl_c_stops_with_a_valid_checkpoint_and_resume_finishes(tmp_path):
    out = tmp_path / "c"
    started = threading.Event()

    def slow_gauss(x):
        started.set()
        return gauss(x)

    def interrupt():
        started.wait()
        _thread.interrupt_main()

    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        lv.train("quick/pis-lv-gmm9", target=slow_gauss, dim=2, name="slow_gauss", out=str(out),
                 overrides={"train.steps": 400, "checkpoint_every": 1000}, quiet=True)
    meta = json.loads((out / "checkpoint.json").read_text())
    assert 0 < meta["counters"]["step"] < 400
    r = lv.resume(str(out), target=slow_gauss, dim=2, name="slow_gauss", quiet=True)
    assert r.raw["steps"] == 400


def test_an_exception_in_log_prob_is_raised_by_train(tmp_path):
    n = {"calls": 0}

    def flaky(x):
        n["calls"] += 1
        if n["calls"] > 40:
            raise RuntimeError("flaky target failed")
        return gauss(x)

    with pytest.raises(RuntimeError, match="flaky target failed"):
        lv.train("quick/pis-lv-gmm9", target=flaky, dim=2, out=str(tmp_path / "f"),
                 overrides=FAST, quiet=True)
    assert (tmp_path / "f" / "checkpoint.safetensors").exists()


BAD = {
    "no dim for a callable": (lambda p: lv.train("quick/pis-lv-gmm9", target=gauss, out=p), "needs dim="),
    "kl on a callable": (lambda p: lv.train("quick/pis-kl-gmm9", target=gauss, dim=2, out=p), "differentiates"),
    "unknown key": (lambda p: lv.train("quick/pis-lv-gmm9", out=p, overrides={"train.stepz": 3}), "stepz"),
    "bad value": (lambda p: lv.train("quick/pis-lv-gmm9", out=p, overrides={"train.steps": -3}), "train.steps"),
    "unknown preset": (lambda p: lv.train("fast/pis-lv-gmm9", out=p), "unknown preset"),
    "bad row": (lambda p: lv.train("quick/pis", out=p), "expected <method>-<loss>-<target>"),
    "no such file": (lambda p: lv.train("nope.toml", out=p), "nope.toml"),
    "config type": (lambda p: lv.train(3, out=p), "config must be"),
    "wrong dim": (lambda p: lv.train("quick/pis-lv-gmm9", target=gauss, dim=0, out=p), "dim must be"),
    "bad override value": (lambda p: lv.train("quick/pis-lv-gmm9", out=p, overrides={"seed": object()}), "key `seed`"),
    "wrong output shape": (lambda p: lv.train("quick/pis-lv-gmm9", target=lambda x: x, dim=2, out=p,
                                              overrides=FAST, quiet=True), "expected"),
    "not a run folder": (lambda p: lv.sample(p, 10), "not a run folder"),
    "zero samples": (lambda p: lv.sample(p, 0), "-n must be"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_raises_value_error(case, tmp_path):
    f, msg = BAD[case]
    with pytest.raises(ValueError, match=msg):
        f(str(tmp_path / "run"))


def test_a_folder_holding_a_run_is_not_overwritten(tmp_path):
    out = str(tmp_path / "twice")
    lv.train("quick/pis-lv-gmm9", out=out, overrides=FAST, quiet=True)
    before = (tmp_path / "twice" / "results.json").read_text()
    with pytest.raises(ValueError, match="already holds a run"):
        lv.train("quick/pis-lv-gmm9", out=out, overrides=FAST, quiet=True)
    assert (tmp_path / "twice" / "results.json").read_text() == before


def test_import_refuses_another_torch_version():
    import subprocess
    import sys

    code = "import torch; torch.__version__ = '2.12.0+cpu'; import lv"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode != 0
    assert "ImportError: lv needs torch==2.13.0" in p.stderr
    assert "found torch 2.12.0+cpu" in p.stderr and "pip install torch==2.13.0" in p.stderr
