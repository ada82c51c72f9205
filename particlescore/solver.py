"""Time stepping of score-based particle systems: :func:`simulate` (DESIGN §4, §7, §8).

Each step asks the score estimator for ``(log f, s)`` at the current particles and advances
them with the problem's right-hand side ``dx/dt = physics(t, x, s)`` using an explicit
integrator (:class:`Euler`, :class:`Heun`). Trajectories go to netCDF through
:class:`particlescore.trajectory.TrajectoryWriter` while the run goes, so an interrupted run
keeps every record written and can be resumed.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time as _time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from . import distributed, runtime
from ._version import __version__
from .metrics import relative_score_mse

__all__ = ["Euler", "Heun", "Solution", "simulate", "step_generator"]

ScoreFn = Callable[[float, torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------- integrators
class Euler:
    """Forward Euler, order 1: ``x_{k+1} = x_k + dt·F(t_k, x_k, s(t_k, x_k))``."""

    order = 1

    def step(self, physics, t: float, x: torch.Tensor, dt: float, score_fn: ScoreFn,
             score: torch.Tensor | None = None) -> torch.Tensor:
        """One step. ``score_fn(t, x) -> s``; ``score`` is ``s(t, x)`` if already known."""
        if score is None:
            score = score_fn(t, x)
        return x + dt * physics(t, x, score)

    def __repr__(self) -> str:
        return "Euler()"


class Heun:
    """Heun's method (explicit trapezoidal rule), order 2; the score is re-estimated at the
    predictor, so the estimator runs twice per step:

    ``x̃ = x_k + dt·F(t_k, x_k, s_k)``, ``x_{k+1} = x_k + dt/2·(F(t_k, x_k, s_k) + F(t_{k+1}, x̃, s(t_{k+1}, x̃)))``.
    """

    order = 2

    def step(self, physics, t: float, x: torch.Tensor, dt: float, score_fn: ScoreFn,
             score: torch.Tensor | None = None) -> torch.Tensor:
        """One step. ``score_fn(t, x) -> s``; ``score`` is ``s(t, x)`` if already known."""
        if score is None:
            score = score_fn(t, x)
        k1 = physics(t, x, score)
        predictor = x + dt * k1
        k2 = physics(t + dt, predictor, score_fn(t + dt, predictor))
        return x + (0.5 * dt) * (k1 + k2)

    def __repr__(self) -> str:
        return "Heun()"


# --------------------------------------------------------------------------- results
@dataclass
class Solution:
    """Saved records of a run: ``times`` (T,), ``steps`` (T,), ``states`` (T, n, d),
    ``diagnostics`` (name -> array stacked over saved times), the trajectory ``path`` (or
    None) and the resolved ``config``."""

    times: np.ndarray
    states: np.ndarray
    diagnostics: dict[str, np.ndarray]
    path: str | None
    config: dict
    steps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator for step ``step``'s random draws: seeded from ``(seed, step)`` through
    ``numpy.random.SeedSequence`` (so a resumed run replays the same draws)."""
    words = np.random.SeedSequence([int(seed), int(step)]).generate_state(2, dtype=np.uint32)
    value = (int(words[0]) << 31) ^ int(words[1])           # < 2^63
    return torch.Generator().manual_seed(value)


# --------------------------------------------------------------------------- validation
def _check_real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _json_plain(value):
    """A JSON round trip: what the trajectory file will give back."""
    return json.loads(json.dumps(value, default=str))


# --------------------------------------------------------------------------- diagnostics
def _diagnostics(problem, estimator, t: float, x: torch.Tensor, log_density: torch.Tensor,
                 score: torch.Tensor) -> dict[str, np.ndarray]:
    x, score, log_density = x.detach().cpu(), score.detach().cpu(), log_density.detach().cpu()
    xn = x.to(torch.float64).numpy()
    sn = score.to(torch.float64).numpy()
    ln = log_density.to(torch.float64).numpy()
    n = xn.shape[0]
    mean = xn.mean(0)
    centred = xn - mean
    diag = {
        "mean": mean,
        "covariance": centred.T @ centred / n,               # population covariance (1/n)
        "energy": np.float64(0.5 * np.mean(np.sum(xn * xn, axis=1))),
        "entropy": np.float64(-np.mean(ln)) if np.all(np.isfinite(ln)) else np.float64(np.nan),
        "fisher_information": np.float64(np.mean(np.sum(sn * sn, axis=1))),
    }
    for key, value in estimator.diagnostics().items():
        diag[key] = np.asarray(value, dtype=np.float64)
    exact_cov = problem.exact_covariance(t)
    if exact_cov is not None:
        diag["covariance_error"] = np.float64(np.max(np.abs(diag["covariance"] - exact_cov.numpy())))
    exact_mean = problem.exact_mean(t)
    if exact_mean is not None:
        diag["mean_error"] = np.float64(np.max(np.abs(mean - exact_mean.numpy())))
    exact = problem.exact_distribution(t)
    if exact is not None:
        true_score = exact.score(x.detach().to(torch.float64)).to(torch.float64)
        diag["score_error"] = np.float64(relative_score_mse(score.detach(), true_score))
    return diag


def _scalar_postfix(step: int, t: float, diagnostics: dict) -> dict:
    post = {"t": f"{t:.4g}"}
    for key, value in diagnostics.items():
        if np.ndim(value) == 0 and key != "wall_time_per_step":
            post[key] = f"{float(value):.4g}"
    return post


def _previous_records(path: str, state_name: str) -> dict:
    """Complete records already in a trajectory file: times, steps, states, diagnostics."""
    from .trajectory import open_trajectory

    ds = open_trajectory(path)
    skip = {"time", "step", "score", "log_density", state_name}
    return {
        "times": np.asarray(ds["time"].values, dtype=np.float64),
        "steps": np.asarray(ds["step"].values, dtype=np.int64),
        "states": np.asarray(ds[state_name].values, dtype=np.float64),
        "diagnostics": {name: np.asarray(ds[name].values, dtype=np.float64)
                        for name in ds.data_vars if name not in skip and ds[name].dims[:1] == ("time",)},
    }


# --------------------------------------------------------------------------- entry point
def simulate(problem, estimator, *, n: int, dt: float, t_end: float, save_every: int = 1, seed: int = 0,
             out=None, integrator=None, progress=True, resume: bool = False, save_hooks=(),
             config: dict | None = None, overwrite: bool = False, device="cpu", threads: int | None = None) -> Solution:
    """Run ``n`` particles of ``problem`` from ``problem.t0`` to ``t_end`` with step ``dt``.

    Time grid ``t_k = t0 + k·dt``, ``k = 0..N``, ``N = round((t_end − t0)/dt)`` (``t_end`` is
    absolute time). Step ``k`` calls ``estimator(x_k)`` (``estimator.at_time(t_k)`` for a
    time-dependent :class:`~particlescore.estimators.Exact`) for ``(log f, s)``, then advances
    with ``integrator`` (default :class:`Heun`; it calls the estimator again at its stages).
    Stateful estimators (DiScoFormer with ``warm_start=True``, SBTM) carry their state between
    calls themselves.

    Records ``k = 0``, every ``save_every``-th step and the last one, with diagnostics:
    ``mean`` (d,), ``covariance`` (d, d) (population, 1/n), ``energy = ½·mean|x|²``,
    ``entropy = −mean log f̂`` at the particles (NaN if not finite, e.g. SBTM),
    ``fisher_information = mean|s|²``, every key of ``estimator.diagnostics()``,
    ``wall_time_per_step`` (mean over the steps since the previous record; NaN at the first),
    and where exact answers exist ``covariance_error`` and ``mean_error`` (max abs deviation)
    and ``score_error`` (relative score MSE). ``save_hooks``: callables
    ``hook(step, t, state, score, diagnostics) -> dict[str, float]`` (numpy arrays in) whose
    scalars join the diagnostics.

    Randomness: the initial state comes from ``torch.Generator().manual_seed(seed)``; per-step
    draws (random batches) from :func:`step_generator` ``(seed, k)``.

    ``out``: netCDF trajectory path, written after each record (``overwrite=True`` replaces an
    existing file). ``resume=True`` continues ``out`` from its last complete record; the
    stored problem, ``n``, ``dt``, ``seed`` and integrator must match this call (``t_end``
    may grow). For a stateless estimator the result equals an uninterrupted run bit for bit.
    ``progress``: True (tqdm bar), False, or ``progress(step, t, diagnostics)`` called at each
    record. ``config``: extra plain data recorded in the file (e.g. the run's TOML settings).

    ``device``: ``"cpu"`` or ``"cuda"`` (``"cuda:N"``): the state, the estimator (moved with its
    ``.to(device)``) and the physics all stay there; records are copied to the CPU.
    ``threads``: torch and numba CPU threads for the run (None: :func:`particlescore.runtime.default_threads`,
    the same default as the CLI); restored afterwards. Under ``torchrun`` (``WORLD_SIZE > 1``) the
    score queries and Landau pair sums are sharded across the ranks (:mod:`particlescore.distributed`)
    and rank 0 alone writes ``out``.
    """
    # ---- validation at the edge
    for attr in ("dim", "t0", "physics", "state_name", "initial_state", "config"):
        if not hasattr(problem, attr):
            raise ValueError(f"problem must be a particlescore Problem (missing {attr!r}), got {type(problem).__name__}")
    if not callable(estimator):
        raise ValueError(f"estimator must be a score estimator est(x) -> (log_density, score), got {type(estimator).__name__}")
    n = _check_int("n", n, 2)
    dt = _check_real("dt", dt)
    if not dt > 0:
        raise ValueError(f"dt must be positive, got {dt!r}")
    t_end = _check_real("t_end", t_end)
    t0 = float(problem.t0)
    if not t_end > t0:
        raise ValueError(f"t_end must be greater than the problem's start time t0 = {t0!r}, got {t_end!r}")
    save_every = _check_int("save_every", save_every, 1)
    seed = _check_int("seed", seed, 0)
    n_steps = int(round((t_end - t0) / dt))
    if n_steps < 1:
        raise ValueError(f"dt = {dt!r} is larger than t_end − t0 = {t_end - t0!r}: no step to take")
    integrator = Heun() if integrator is None else integrator
    if not (hasattr(integrator, "step") and hasattr(integrator, "order")):
        raise ValueError(f"integrator must be an integrator such as Euler() or Heun(), got {integrator!r}")
    if not (isinstance(progress, bool) or callable(progress)):
        raise ValueError(f"progress must be True, False or a callable (step, t, diagnostics), got {progress!r}")
    save_hooks = tuple(save_hooks)
    for hook in save_hooks:
        if not callable(hook):
            raise ValueError(f"save_hooks must be callables hook(step, t, state, score, diagnostics), got {hook!r}")
    if out is not None and not isinstance(out, (str, os.PathLike)):
        raise ValueError(f"out must be a file path or None, got {type(out).__name__}")
    if resume and out is None:
        raise ValueError("resume=True needs out= (the trajectory file to continue)")
    if config is not None and not isinstance(config, dict):
        raise ValueError(f"config must be a dict of plain data or None, got {type(config).__name__}")
    device = runtime.resolve_device(device)
    threads = runtime.resolve_threads(threads, n)
    runtime.move_estimator(estimator, device)
    follower = distributed.setup(device) and not distributed.is_main()   # a rank > 0: computes, never writes
    if follower and progress is True:
        progress = False

    dim = int(problem.dim)
    resolved = _json_plain({
        "problem": problem.config(), "state_name": problem.state_name, "n": n, "dt": dt, "t_end": t_end,
        "save_every": save_every, "seed": seed, "integrator": type(integrator).__name__,
        "estimator": estimator.describe() if hasattr(estimator, "describe") else {"estimator": type(estimator).__name__},
        "run_config": config,
    })

    # ---- initial state, or the last record of the file being resumed
    times, steps, states, records = [], [], [], {}
    writer = None
    start_step = 0
    if resume and follower:  # read the last record before rank 0 reopens the file for append
        from .trajectory import check_output_path

        prev = _previous_records(check_output_path(out, resume=True), problem.state_name)
        start_step = int(prev["steps"][-1])
        x = torch.from_numpy(np.array(prev["states"][-1], dtype=np.float64))
        times, steps, states = list(prev["times"]), list(prev["steps"]), list(prev["states"])
        records = {key: list(values) for key, values in prev["diagnostics"].items()}
    distributed.barrier()
    if resume and not follower:
        from .trajectory import TrajectoryWriter, check_output_path

        path = check_output_path(out, resume=True)
        prev = _previous_records(path, problem.state_name)   # read before reopening for append
        writer, last = TrajectoryWriter.open_for_resume(path)
        try:
            stored = last["attrs"].get("config")
            stored = json.loads(stored) if isinstance(stored, str) else stored
            if not isinstance(stored, dict):
                raise ValueError(f"cannot resume {path!r}: it holds no particlescore run configuration")
            for key in ("problem", "n", "dt", "seed", "integrator"):
                if stored.get(key) != resolved[key]:
                    raise ValueError(f"cannot resume {path!r}: stored {key} = {stored.get(key)!r} "
                                     f"differs from this call's {key} = {resolved[key]!r}")
            start_step = int(last["step"])
            if start_step > n_steps:
                raise ValueError(f"cannot resume {path!r}: it already reaches step {start_step} "
                                 f"(t = {last['time']!r}), beyond t_end = {t_end!r} (step {n_steps})")
            x = torch.from_numpy(np.array(last["state"], dtype=np.float64))
            if tuple(x.shape) != (n, dim):
                raise ValueError(f"cannot resume {path!r}: stored state has shape {tuple(x.shape)}, "
                                 f"expected {(n, dim)}")
        except Exception:
            writer.close()
            raise
        keep = prev["steps"] <= start_step
        times, steps = list(prev["times"][keep]), list(prev["steps"][keep])
        states = list(prev["states"][keep])
        records = {key: list(values[keep]) for key, values in prev["diagnostics"].items()}
    elif not resume:
        x = problem.initial_state(n, generator=torch.Generator().manual_seed(seed)).to(torch.float64)
        if tuple(x.shape) != (n, dim):
            raise ValueError(f"problem.initial_state returned shape {tuple(x.shape)}, expected {(n, dim)}")
        if out is not None and not follower:
            from .trajectory import TrajectoryWriter

            attrs = {
                "config": json.dumps(resolved, sort_keys=True),
                "particlescore_version": __version__,
                "seed": seed,
                "problem": getattr(problem, "name", type(problem).__name__),
                "estimator": json.dumps(resolved["estimator"], sort_keys=True),
                "integrator": resolved["integrator"],
                "n_particles": n, "dt": dt, "t0": t0, "t_end": t_end, "save_every": save_every,
            }
            writer = TrajectoryWriter.create(out, state_name=problem.state_name, n_particles=n, dim=dim,
                                             attrs=attrs, overwrite=overwrite)

    x = x.to(device)
    time_dependent = bool(getattr(estimator, "time_dependent", False))

    def estimator_at(t: float):
        return estimator.at_time(t) if time_dependent else estimator

    def score_fn(t: float, y: torch.Tensor) -> torch.Tensor:
        return distributed.estimate(estimator_at(t), y)[1]

    bar = None
    if progress is True and start_step < n_steps:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_steps, initial=start_step, unit="step", desc=getattr(problem, "name", "simulate"))
    elapsed, counted = 0.0, 0
    scope = contextlib.ExitStack()
    try:
        scope.enter_context(runtime.thread_limit(threads))
        scope.enter_context(distributed.sharding())
        for k in range(start_step, n_steps + 1):
            t = t0 + k * dt
            est_t = estimator_at(t)
            tic = _time.perf_counter()
            log_density, score = distributed.estimate(est_t, x)
            elapsed += _time.perf_counter() - tic
            is_record = k == 0 or k % save_every == 0 or k == n_steps
            if is_record and not (resume and k == start_step):
                diag = _diagnostics(problem, est_t, t, x, log_density, score)
                diag["wall_time_per_step"] = np.float64(elapsed / counted if counted else np.nan)
                elapsed, counted = 0.0, 0
                state_np = x.detach().cpu().numpy().copy()
                score_np = score.detach().cpu().to(torch.float64).numpy()
                for hook in save_hooks:
                    extra = hook(k, t, state_np, score_np, dict(diag))
                    for key, value in (extra or {}).items():
                        diag[key] = np.float64(value)
                if writer is not None:
                    writer.append(step=k, time=t, state=state_np, score=score_np,
                                  log_density=log_density.detach().cpu().to(torch.float64).numpy(), diagnostics=diag)
                times.append(t)
                steps.append(k)
                states.append(state_np)
                for key, value in diag.items():
                    records.setdefault(key, [np.full(np.shape(value), np.nan)] * (len(times) - 1)).append(value)
                for key in records:
                    if len(records[key]) < len(times):
                        records[key].append(np.full(np.shape(records[key][-1]), np.nan))
                if bar is not None:
                    bar.set_postfix(_scalar_postfix(k, t, diag), refresh=False)
                elif callable(progress):
                    progress(k, t, diag)
            if k == n_steps:
                break
            physics = problem.physics.at_step(step_generator(seed, k)) if getattr(problem.physics, "stochastic", False) \
                else problem.physics
            tic = _time.perf_counter()
            x = integrator.step(physics, t, x, dt, score_fn, score=score)
            elapsed += _time.perf_counter() - tic
            counted += 1
            if bar is not None:
                bar.update(1)
    finally:
        scope.close()
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()

    diagnostics = {key: np.stack([np.asarray(v, dtype=np.float64) for v in values]) for key, values in records.items()}
    return Solution(times=np.asarray(times, dtype=np.float64), states=np.stack(states) if states else
                    np.zeros((0, n, dim)), diagnostics=diagnostics,
                    path=None if out is None else os.fspath(out), config=resolved,
                    steps=np.asarray(steps, dtype=np.int64))
