"""Helpers shared by the benchmark scripts (``landau_covariance.py``, ``bkw.py``): the estimator
line-up, thread setting, run options, timing and table output. Scripts import it as a sibling
module (``python benchmarks/<script>.py`` puts this folder first on ``sys.path``); everything else
they use comes from the installed ``particlescore`` package.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch

import particlescore as ps
from particlescore.sbtm import SBTM
from particlescore.training.edit_config import parse_setting
from particlescore.training.evaluate import evaluation_problem

#: estimator keys accepted by ``--estimators`` and their display labels
#: test-time adaptation steps per call for the "discoformer-tta" rows (2 calls per Heun step,
#: warm-started, so the head keeps adapting from step to step)
TTA_STEPS = 2
#: held-out particles on which the "discoformer-tta-holdout" rows choose their head by
#: score matching (``DiScoFormer(adapt_holdout=...)``, docs/adaptation.md; at most n/4 held out)
TTA_HOLDOUT = 128

LABELS = {
    "discoformer-0": "DiScoFormer (0 TTA)",
    "discoformer-warm": "DiScoFormer (0 TTA, warm)",
    "discoformer-tta": f"DiScoFormer ({TTA_STEPS} TTA, warm)",
    "discoformer-tta-holdout": f"DiScoFormer ({TTA_STEPS} TTA, warm, held-out check)",
    "discoformer-proj": "DiScoFormer (warm, moment projection)",
    "kde": "Scott KDE",
    "elliptical_kde": "Elliptical KDE",
    "blob": "Blob",
    "sbtm": "SBTM",
    "exact": "Exact",
}


def set_threads(threads: int) -> None:
    """One knob for torch and numba (the numba kernels run ``prange`` loops)."""
    torch.set_num_threads(threads)
    try:
        import numba

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    except Exception:  # numba missing or not configurable: torch's setting still holds
        pass


def discoformer_for(dim: int, network: str = "per-dim", weights_dir: Path | None = None, *, adapt_steps: int = 0,
                    warm_start: bool = False, adapt_holdout: int = 0, moment_projection: bool = False):
    """The shipped DiScoFormer for ``dim`` (``network`` as in ``DiScoFormer.pretrained``), or with
    ``weights_dir`` the file ``discoformer_d{dim}.safetensors`` there: weights measured before
    they are shipped. The keyword options are ``DiScoFormer``'s."""
    options = dict(adapt_steps=adapt_steps, warm_start=warm_start, adapt_holdout=adapt_holdout,
                   moment_projection=moment_projection)
    if weights_dir is None:
        return ps.DiScoFormer.pretrained(dim=dim, network=network, **options)
    return ps.DiScoFormer.from_file(Path(weights_dir) / f"discoformer_d{dim}.safetensors", dim=dim, **options)


def add_config_edit_arguments(parser: argparse.ArgumentParser, dims: list[int], sizes: list[int]) -> None:
    """The options of the config-edit benchmarks (``config_switch.py``, ``config_cost.py``)."""
    parser.add_argument("--set", dest="settings", action="append", required=True, metavar="FIELD=VALUE")
    parser.add_argument("--dims", type=int, nargs="*", default=dims)
    parser.add_argument("--sizes", type=int, nargs="*", default=sizes)
    parser.add_argument("--network", choices=("per-dim", "equivariant"), default="per-dim")
    parser.add_argument("--weights-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)


def parsed_settings(parser: argparse.ArgumentParser, args) -> dict:
    """``--set FIELD=VALUE`` options as a dict (``edit_config``'s fields only); a bad one is a usage error."""
    try:
        return dict(parse_setting(s) for s in args.settings)
    except ValueError as err:
        parser.error(str(err))


def original_and_edited(dim: int, args, settings: dict):
    """Two estimators on the same weights (:func:`discoformer_for` with ``args.network`` and
    ``args.weights_dir``): the file's own config, and that config with ``settings`` applied."""
    original = discoformer_for(dim, args.network, args.weights_dir)
    edited = discoformer_for(dim, args.network, args.weights_dir)
    edited.net.config = dataclasses.replace(edited.net.config, **settings)
    return original, edited


def paired_score_row(d: int, n: int, mixtures: int, baseline, candidate) -> tuple[str, float]:
    """One markdown row ``| d | n | baseline % | candidate % | paired candidate − baseline ± s.e. |``
    over the score table's held-out mixtures (``evaluation_problem``; the same draws for both), and
    the seconds it took."""
    tic = time.perf_counter()
    errs = np.zeros((mixtures, 2))
    for i in range(mixtures):
        context, queries, _, score = evaluation_problem(d, n, i)
        for j, est in enumerate((baseline, candidate)):
            errs[i, j] = 100 * float(ps.relative_score_mse(est(context, queries)[1], score))
    diff = errs[:, 1] - errs[:, 0]
    return (f"| {d} | {n} | {errs[:, 0].mean():.2f} | {errs[:, 1].mean():.2f} | "
            f"{diff.mean():+.2f} ± {diff.std(ddof=1) / np.sqrt(len(diff)):.2f} |"), time.perf_counter() - tic


def make_estimator(key: str, dim: int, problem, seed: int, *, network: str = "auto", weights_dir: Path | None = None):
    """A fresh estimator for one run, or ``(None, reason)`` when it cannot be built.
    ``network`` chooses DiScoFormer's weights (``DiScoFormer.pretrained``'s argument);
    ``weights_dir``: the files there instead (:func:`discoformer_for`).

    SBTM gets the exact initial score of ``problem`` (``problem.initial_distribution().score``,
    i.e. ``−Σ0⁻¹v`` for the Gaussian start); Exact wraps ``problem.exact_distribution``.
    """
    if key in ("discoformer-0", "discoformer-warm", "discoformer-tta", "discoformer-tta-holdout"):
        steps = 0 if key in ("discoformer-0", "discoformer-warm") else TTA_STEPS
        holdout = TTA_HOLDOUT if key == "discoformer-tta-holdout" else 0
        try:
            return discoformer_for(dim, network, weights_dir, adapt_steps=steps, warm_start=key != "discoformer-0",
                                   adapt_holdout=holdout), None
        except ValueError as err:
            return None, f"skipped: {err}"
    if key == "discoformer-proj":
        try:
            return discoformer_for(dim, network, weights_dir, warm_start=True, moment_projection=True), None
        except ValueError as err:
            return None, f"skipped: {err}"
    if key == "kde":
        return ps.KDE("scott"), None
    if key == "elliptical_kde":
        return ps.EllipticalKDE(), None
    if key == "blob":
        return ps.Blob(), None
    if key == "sbtm":
        initial = problem.initial_distribution()
        return SBTM(initial_score=lambda x: initial.score(x), seed=seed), None
    if key == "exact":
        if problem.exact_distribution(problem.t0) is None:
            return None, "skipped: no exact score for this problem"
        return ps.Exact(problem.exact_distribution), None
    raise ValueError(f"unknown estimator {key!r}; known: {sorted(LABELS)}")


def warm_up(problem) -> None:
    """Compile / load the numba kernels (right-hand side, blob) outside the timed runs."""
    g = torch.Generator().manual_seed(12345)
    x = torch.randn(16, problem.dim, generator=g, dtype=torch.float64)
    problem.physics(problem.t0, x, -x)
    ps.Blob()(x)
    ps.KDE("scott")(x)


def save_every_for(n_steps: int, points: int) -> int:
    """Stride giving about ``points`` saved records (plus t0 and the last step)."""
    return max(1, int(round(n_steps / max(points, 1))))


def step_time(sol) -> float:
    """Mean wall time per step over the run (the solver records per-interval means)."""
    wall = sol.diagnostics["wall_time_per_step"]
    steps = np.diff(sol.steps)
    ok = np.isfinite(wall[1:])
    return float(np.sum(wall[1:][ok] * steps[ok]) / max(np.sum(steps[ok]), 1)) if ok.any() else math.nan


def best_time(fn, repeats: int = 3, budget: float = 2.0) -> float:
    """Best wall time of up to ``repeats`` calls of ``fn`` (fewer once ``budget`` seconds are spent)."""
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
        if sum(times) > budget:
            break
    return min(times)


def mean_se(values) -> tuple[float, float]:
    """Mean and its standard error (sample standard deviation / √count; 0 for one value)."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), (float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else 0.0)


def fmt(value, spec=".3e") -> str:
    return "—" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared with ``bkw.py``: particles, step, seed, saving, threads, output folder."""
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--dt", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-points", type=int, default=40, help="about this many saved times per run")
    parser.add_argument("--threads", type=int, default=1, help="torch/numba threads (default 1)")
    parser.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--network", choices=("auto", "per-dim", "per-dim-gmm", "equivariant"), default="auto",
                        help="DiScoFormer's weights (DiScoFormer.pretrained's network: auto, per-dim or the any-d network)")
    parser.add_argument("--weights-dir", type=Path, default=None,
                        help="DiScoFormer from discoformer_d{d}.safetensors in this folder instead of the shipped files")


def write_csv(path, rows, keys):
    """One line per row (shared with ``bkw.py``): the ``keys`` columns, in that order, quoted by
    the csv module where needed (estimator labels such as "DiScoFormer (2 TTA, warm)" hold commas)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(keys)
        writer.writerows([r[k] for k in keys] for r in rows)


def sklearn_bic_mixture(x: np.ndarray, max_k: int):
    """scikit-learn's ``GaussianMixture`` (full covariances, ``random_state=0``) for K = 1 … max_k,
    the one with the lowest BIC, and how many of the fits stopped at max_iter unconverged."""
    import warnings
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture
    best, best_bic, unconverged = None, math.inf, 0
    for k in range(1, max_k + 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            gm = GaussianMixture(k, covariance_type="full", random_state=0).fit(x)
        unconverged += not gm.converged_
        bic = gm.bic(x)
        if bic < best_bic:
            best, best_bic = gm, bic
    return best, unconverged


def gmm_score(gm, y: np.ndarray) -> np.ndarray:
    """Closed-form score of a fitted ``GaussianMixture`` at y (m,d):
    ``∇ log p(y) = −Σ_k r_k(y) Σ_k⁻¹(y − μ_k)``."""
    resp = gm.predict_proba(y)                                                 # (m, K)
    comp = -np.einsum("kij,mkj->mki", gm.precisions_, y[:, None, :] - gm.means_[None])  # (m, K, d)
    return (resp[..., None] * comp).sum(1)                                     # (m, d)


def write_report(lines: list[str], out: Path | None) -> None:
    """Print a markdown report and, with ``out``, write it there (parent folders created)."""
    text = "\n".join(lines)
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
