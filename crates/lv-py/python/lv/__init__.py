"""lv: diffusion samplers for unnormalised densities, trained with the log-variance loss.

The Rust library lv (Richter & Berner, "Improved sampling via learned diffusions", ICLR 2024,
and the later PIS/DIS/DDS/bridge/CMCD/SCLD methods) from Python:

- ``lv.targets.get(name)``: the registry targets (log-density, score, dimension, log Z,
  reference samples) on torch tensors;
- ``lv.train(config, target=None, dim=None, out=None, overrides=None)``: one training run of
  the library driver in this process, with its progress bar and run folder, from a TOML file,
  a dict, or a preset row shipped in the wheel (``"quick/pis-lv-gmm9"``); ``target`` may be a
  PyTorch callable ``log_prob(x: Tensor[n, d]) -> Tensor[n]``;
- ``lv.sample(run_dir, n)``, ``lv.evaluate(run_dir)``, ``lv.resume(run_dir)``.

The extension links the libtorch of ``torch==2.13.0`` (the version tch 0.26 is built
against); importing ``lv`` imports torch first, so that its libraries are the ones the
extension uses, and checks the version.
"""

import json
import os

import torch

TORCH_VERSION = "2.13.0"

_found = torch.__version__.split("+")[0]
if _found != TORCH_VERSION:
    raise ImportError(
        f"lv needs torch=={TORCH_VERSION} (the libtorch its extension links), found torch "
        f"{torch.__version__} at {os.path.dirname(torch.__file__)}. "
        f"Fix: pip install torch=={TORCH_VERSION}"
    )

from . import _bridge  # noqa: E402
from . import _lv  # noqa: E402
from . import targets  # noqa: E402

__version__ = _lv.__version__

__all__ = ["Result", "targets", "train", "resume", "sample", "evaluate", "show_config"]


class Result:
    """The final evaluation of a run (its ``results.json``).

    Attributes: ``log_z_is`` (log Ẑ by importance sampling, with the Itô term), ``log_z_elbo``
    (the ELBO), ``ess`` (normalised effective sample size of the weights), ``log_z_ref`` (the
    target's log Z where known), ``log_z_error_is`` and ``log_z_error_elbo`` (|estimate − log Z|),
    ``metrics`` (the sample metrics, keys of ``lv metrics --json``), ``run_dir``, and ``raw``
    (every field of results.json).
    """

    _METRICS = (
        "w2",
        "sinkhorn_sde",
        "sinkhorn_div",
        "mmd_median",
        "mmd_unbiased",
        "w2_geometric",
        "metric_sizes",
        "avg_marginal_stddev",
        "avg_stddev",
        "mode_coverage",
        "periodic",
        "smc",
    )

    def __init__(self, run_dir, raw):
        self.run_dir = run_dir
        self.raw = raw
        nan = float("nan")
        self.log_z_is = _num(raw.get("log_z_is"), nan)
        self.log_z_elbo = _num(raw.get("log_z_elbo"), nan)
        self.ess = _num(raw.get("ess"), nan)
        self.log_z_ref = raw.get("log_z_ref")
        self.log_z_error_is = raw.get("log_z_error_is")
        self.log_z_error_elbo = raw.get("log_z_error_elbo")
        self.seconds = raw.get("seconds")
        self.metrics = {k: raw[k] for k in self._METRICS if raw.get(k) is not None}

    def __repr__(self):
        return (
            f"lv.Result(run_dir={self.run_dir!r}, log_z_is={self.log_z_is:.6g}, "
            f"log_z_elbo={self.log_z_elbo:.6g}, ess={self.ess:.4g}, log_z_ref={self.log_z_ref!r})"
        )


def _num(v, default):
    return default if v is None else float(v)


def _register(target, dim, name, score, log_z, domain):
    """The registry name of ``target``: a name as is, a callable registered as ``py:<name>``."""
    if target is None:
        return None, False
    if isinstance(target, str):
        return target, False
    if not callable(target):
        raise ValueError("target must be a registry name (str) or a callable log_prob(x) -> Tensor")
    if dim is None:
        raise ValueError("a target given as a callable needs dim=")
    name = name or getattr(target, "__name__", None) or type(target).__name__
    if name == "<lambda>":
        name = "lambda"
    full = "py:" + "".join(c if c.isalnum() or c in "_.+" else "_" for c in name)
    _lv.register_target(full, int(dim), target, _bridge, score=score, log_z=log_z, domain=domain)
    return full, True


def train(
    config,
    target=None,
    dim=None,
    out=None,
    overrides=None,
    *,
    row=None,
    name=None,
    score=None,
    log_z=None,
    domain=None,
    quiet=False,
):
    """Trains one run in this process and returns its :class:`Result` (or ``None`` if the
    run stopped early).

    ``config``: a dict (a full run config, the keys of ``lv config show``), a path to a TOML
    run config (or a preset file, with ``row=``), or a preset row shipped in the wheel,
    ``"<preset>/<method>-<loss>-<target>"`` such as ``"quick/pis-lv-gmm9"``.

    ``target``: a registry name, or a callable ``log_prob(x)`` on ``[n, d]`` tensors returning
    ``[n]`` (unnormalised log-density; then ``dim`` is required; ``score`` an optional callable
    for ∇ log ρ, else autograd; ``log_z`` the known log Z if any, for the errors; ``domain`` a
    list of ``(lo, hi)`` per coordinate for plots, default ±10). It is registered as
    ``py:<name>`` (``name`` or the callable's ``__name__``) and called with batches whose memory
    is libtorch's (no copy); it must not modify them in place. Losses that differentiate
    log ρ through the trajectory (``kl``) are refused for such targets.

    ``out``: the run folder (default ``runs/<method>-<loss>-<target>-seed<seed>``).
    ``overrides``: dotted keys, e.g. ``{"train.steps": 300, "seed": 2}``.

    Ctrl-C stops at the end of the current step with a valid checkpoint (``lv.resume``) and
    raises ``KeyboardInterrupt``. Note that the run config's ``threads`` (default 1) sets
    torch's intra-op threads of this process.
    """
    reg, python_target = _register(target, dim, name, score, log_z, domain)
    ov = dict(overrides or {})
    if reg is not None:
        ov["target"] = reg
        if python_target:
            ov["dim"] = int(dim)
    run_dir, text = _lv.train(
        config, out=out, row=row, overrides=ov, quiet=quiet, python_target=python_target
    )
    return None if text is None else Result(run_dir, json.loads(text))


def resume(run_dir, *, target=None, dim=None, name=None, score=None, log_z=None, domain=None, quiet=False):
    """Continues the run in ``run_dir`` from its checkpoint; a run on a Python target needs
    the same ``target`` (and ``dim``, ``name``) again."""
    _register(target, dim, name, score, log_z, domain)
    text = _lv.resume(str(run_dir), quiet=quiet)
    return None if text is None else Result(str(run_dir), json.loads(text))


def evaluate(run_dir, *, target=None, dim=None, name=None, score=None, log_z=None, domain=None):
    """Evaluates the run's EMA weights again (``lv eval``), rewrites its results.json and
    returns the :class:`Result`."""
    _register(target, dim, name, score, log_z, domain)
    return Result(str(run_dir), json.loads(_lv.evaluate(str(run_dir))))


def sample(run_dir, n, *, seed=None, target=None, dim=None, name=None, score=None, log_z=None, domain=None):
    """``n`` terminal samples of the run (``lv sample``), a float32 tensor ``[n, d]``."""
    _register(target, dim, name, score, log_z, domain)
    x = _lv.sample(str(run_dir), int(n), seed=seed)
    return torch.from_numpy(x).to(torch.float32)


def show_config(config):
    """The resolved run config of a dict, TOML file or shipped preset row, as TOML text."""
    return _lv.show_config(config)
