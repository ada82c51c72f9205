"""Time stepping of score-based particle systems: :func:`simulate`.

Each step asks the score estimator for ``(log f, s)`` at the current particles and advances
them with the problem's right-hand side ``dx/dt = physics(t, x, s)`` (the deterministic
particle method: Carrillo, Hu, Wang & Wu 2020 for Landau, Boffi & Vanden-Eijnden 2023 for
Fokker–Planck) using an explicit integrator (:class:`Euler`, :class:`Heun`). As in diffrax,
what is saved is a :class:`~particlescore.recording.SaveAt` value and where it goes are
recorder objects (:mod:`particlescore.recording`); diagnostics are a list of callables
(:mod:`particlescore.diagnostics`). The capabilities the loop uses are explicit protocols:
:class:`TimeDependent` estimators, :class:`Stochastic` physics, :class:`Stateful` estimators.

Data safety (docs/trajectory.md): every check, the estimator's first evaluation included,
runs before the output file is touched; a new or replacement file appears atomically at its
first record; a resumed run restores the estimator state saved with the record and is bitwise
identical to an uninterrupted one; a run whose state stops being finite or whose energy changes
by more than a factor ``1 + max_energy_change`` in one step stops with :class:`BlowUpError`,
keeping every good record.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time as _time
import warnings
from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable

import numpy as np
import torch

from . import distributed, registry, runtime
from ._validation import seeded_generator
from ._version import __version__
from .diagnostics import DEFAULT_DIAGNOSTICS, Snapshot
from .recording import MemoryRecorder, NetCDFRecorder, Record, Recorder, SaveAt, Solution
from .trajectory import PRECISIONS, check_output_path, read_last_record

__all__ = ["Euler", "Heun", "Solution", "SaveAt", "simulate", "step_generator", "BlowUpError",
           "TimeDependent", "Stochastic", "Stateful", "MAX_ENERGY_CHANGE", "DT_WARNING_RATIO"]

ScoreFn = Callable[[float, torch.Tensor], torch.Tensor]

#: Default blow-up threshold: stop when one step multiplies or divides the energy ½·mean|x|² by
#: more than ``1 + MAX_ENERGY_CHANGE`` (it doubles or halves). A stable step of a relaxing
#: problem changes it by O(dt/τ); an unstable explicit step by a growing factor each step.
MAX_ENERGY_CHANGE = 1.0
#: Warn up front when ``dt`` exceeds this many relaxation times ``problem.relaxation_time()``
#: (explicit steps on a decay of rate 1/τ lose accuracy near dt = τ and stability at dt = 2τ).
DT_WARNING_RATIO = 1.0


# --------------------------------------------------------------------------- protocols
@runtime_checkable
class TimeDependent(Protocol):
    """An estimator whose answer depends on time (the exact score of a known solution,
    :class:`~particlescore.estimators.Exact`): the solver evaluates ``at_time(t)``."""

    def at_time(self, t: float): ...


@runtime_checkable
class Stochastic(Protocol):
    """Physics with per-step randomness (random batch Landau): when ``stochastic`` is True the
    solver calls ``at_step(generator)`` with the generator of ``(seed, step)`` each step."""

    stochastic: bool

    def at_step(self, generator: torch.Generator): ...


@runtime_checkable
class Stateful(Protocol):
    """An estimator carrying state between calls (warm starts, adapted weights, a trained
    network): ``state_dict()`` (str -> tensor) is saved with each record and restored with
    ``load_state_dict`` on resume, so a resumed run is bitwise identical."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class BlowUpError(RuntimeError):
    """The state stopped being finite or the energy jumped: the step ``dt`` is too large."""


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


# --------------------------------------------------------------------------- helpers
def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator for step ``step``'s random draws: :func:`seeded_generator` ``(seed, step)``
    (a resumed run replays the same draws)."""
    return seeded_generator(seed, step)


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


def _check_callables(name: str, items, what: str) -> tuple:
    items = tuple(items)
    for item in items:
        if not callable(item):
            raise ValueError(f"{name} must be callables {what}, got {item!r}")
    return items


@dataclass
class _Run:
    """Everything :func:`simulate` resolved and checked before any work."""

    problem: object
    estimator: object
    n: int
    dim: int
    dt: float
    t0: float
    n_steps: int
    seed: int
    integrator: object
    record_steps: object           # the saved steps (supports `k in record_steps`)
    diagnostics: tuple
    hooks: tuple
    progress: object
    max_energy_change: float | None
    device: torch.device
    threads: int
    follower: bool                 # a torchrun rank > 0: computes, never writes
    time_dependent: bool
    stochastic: bool
    stateful: bool
    resolved: dict                 # the run as plain data (recorded in files)
    attrs: dict                    # global attributes of a new trajectory file


def _setup(problem, estimator, *, n, dt, t_end, save_every, seed, out, saveat, integrator, progress, resume,
           overwrite, save_hooks, diagnostics, recorders, config, compress, precision, max_energy_change,
           device, threads) -> _Run:
    """Validate every argument (ValueError naming it) and resolve the run; touches no file."""
    for attr in ("dim", "t0", "physics", "state_name", "initial_state", "config"):
        if not hasattr(problem, attr):
            raise ValueError(f"problem must be a particlescore Problem (missing {attr!r}), got {type(problem).__name__}")
    if not callable(estimator):
        raise ValueError(f"estimator must be a score estimator est(x) -> (log_density, score), got {type(estimator).__name__}")
    n, seed = _check_int("n", n, 2), _check_int("seed", seed, 0)
    dt, t_end, t0 = _check_real("dt", dt), _check_real("t_end", t_end), float(problem.t0)
    if not dt > 0:
        raise ValueError(f"dt must be positive, got {dt!r}")
    if not t_end > t0:
        raise ValueError(f"t_end must be greater than the problem's start time t0 = {t0!r}, got {t_end!r} "
                         f"(t_end is absolute time)")
    n_steps = int(round((t_end - t0) / dt))
    if n_steps < 1:
        raise ValueError(f"dt = {dt!r} is larger than t_end − t0 = {t_end - t0!r}: no step to take")
    if saveat is not None and not isinstance(saveat, SaveAt):
        raise ValueError(f"saveat must be a SaveAt(every=k) or SaveAt(times=[...]), got {saveat!r}")
    if saveat is not None and save_every != 1:
        raise ValueError("give save_every or saveat, not both")
    saveat = SaveAt(every=save_every) if saveat is None else saveat
    record_steps = saveat.steps(t0, dt, n_steps)
    integrator = Heun() if integrator is None else integrator
    if not (hasattr(integrator, "step") and hasattr(integrator, "order")):
        raise ValueError(f"integrator must be an integrator such as Euler() or Heun(), got {integrator!r}")
    if not (isinstance(progress, bool) or callable(progress)):
        raise ValueError(f"progress must be True, False or a callable (step, t, diagnostics), got {progress!r}")
    save_hooks = _check_callables("save_hooks", save_hooks, "hook(step, t, state, score, diagnostics)")
    diagnostics = _check_callables("diagnostics", diagnostics, "diag(snapshot) -> dict")
    for recorder in recorders:
        if not isinstance(recorder, Recorder):
            raise ValueError(f"recorders must have append(record) and close(), got {recorder!r}")
    if max_energy_change is not None and not _check_real("max_energy_change", max_energy_change) > 0:
        raise ValueError(f"max_energy_change must be positive or None, got {max_energy_change!r}")
    if not isinstance(compress, bool):
        raise ValueError(f"compress must be True or False, got {compress!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}")
    if out is not None and not isinstance(out, (str, os.PathLike)):
        raise ValueError(f"out must be a file path or None, got {type(out).__name__}")
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other")
    if resume and out is None:
        raise ValueError("resume=True needs out= (the trajectory file to continue)")
    if out is not None:
        check_output_path(out, overwrite=overwrite, resume=resume)
    if config is not None and not isinstance(config, dict):
        raise ValueError(f"config must be a dict of plain data or None, got {type(config).__name__}")
    device, threads = runtime.resolve_device(device), runtime.resolve_threads(threads, n)
    runtime.move_estimator(estimator, device)
    follower = distributed.setup(device) and not distributed.is_main()
    tau = getattr(problem, "relaxation_time", lambda: None)()
    if tau is not None and dt > DT_WARNING_RATIO * tau:
        warnings.warn(f"dt = {dt:g} is {dt / tau:.3g} times the relaxation time τ = {tau:.3g} of "
                      f"{getattr(problem, 'name', type(problem).__name__)}: explicit steps this large are "
                      f"inaccurate and may blow up; take dt ≲ {tau / 10:.3g}", RuntimeWarning, stacklevel=3)
    resolved = json.loads(json.dumps({
        "problem": problem.config(), "state_name": problem.state_name, "n": n, "dt": dt, "t_end": t_end,
        "save_every": saveat.every, "seed": seed, "integrator": type(integrator).__name__,
        "estimator": estimator.describe() if hasattr(estimator, "describe") else {"estimator": type(estimator).__name__},
        "run_config": config, **({} if saveat.times is None else {"saveat": saveat.describe()}),
    }, default=str))
    attrs = {"config": json.dumps(resolved, sort_keys=True), "particlescore_version": __version__, "seed": seed,
             "problem": getattr(problem, "name", type(problem).__name__),
             "estimator": json.dumps(resolved["estimator"], sort_keys=True), "integrator": resolved["integrator"],
             "n_particles": n, "dt": dt, "t0": t0, "t_end": t_end,
             **({"save_every": saveat.every} if saveat.times is None else {"save_times": list(saveat.times)})}
    return _Run(problem, estimator, n, int(problem.dim), dt, t0, n_steps, seed, integrator, record_steps,
                diagnostics, save_hooks, progress=False if follower and progress is True else progress,
                max_energy_change=max_energy_change, device=device, threads=threads, follower=follower,
                time_dependent=isinstance(estimator, TimeDependent),
                stochastic=isinstance(problem.physics, Stochastic) and bool(problem.physics.stochastic),
                stateful=isinstance(estimator, Stateful), resolved=resolved, attrs=attrs)


def _start(run: _Run, out, resume: bool) -> tuple[torch.Tensor, int, MemoryRecorder, str]:
    """The initial state, or the last record of the file being resumed (checked against this
    run, the estimator state restored). Returns ``(x, first step, past records, history note)``."""
    if not resume:
        x = run.problem.initial_state(run.n, generator=torch.Generator().manual_seed(run.seed)).to(torch.float64)
        if tuple(x.shape) != (run.n, run.dim):
            raise ValueError(f"problem.initial_state returned shape {tuple(x.shape)}, expected {(run.n, run.dim)}")
        return x.to(run.device), 0, MemoryRecorder(), ""
    path = os.fspath(out)
    last = read_last_record(path)
    stored = last["attrs"].get("config")
    if not isinstance(stored, dict):
        raise ValueError(f"cannot resume {path!r}: it holds no particlescore run configuration")
    if stored.get("estimator") != run.resolved["estimator"]:
        raise ValueError(f"cannot resume {path!r}: it was written with estimator {stored.get('estimator')}, this "
                         f"call uses {run.resolved['estimator']}; a trajectory holds one estimator's run: "
                         f"write a new file (or overwrite this one)")
    for key in ("problem", "state_name", "n", "dt", "seed", "integrator", "save_every", "saveat"):
        if stored.get(key) != run.resolved.get(key):
            raise ValueError(f"cannot resume {path!r}: stored {key} = {stored.get(key)!r} "
                             f"differs from this call's {key} = {run.resolved.get(key)!r}")
    if last["step"] > run.n_steps:
        raise ValueError(f"cannot resume {path!r}: it already reaches step {last['step']} "
                         f"(t = {last['time']!r}), beyond t_end = {run.resolved['t_end']!r} (step {run.n_steps})")
    if last["state"].shape != (run.n, run.dim):
        raise ValueError(f"cannot resume {path!r}: stored state has shape {last['state'].shape}, "
                         f"expected {(run.n, run.dim)}")
    memory = MemoryRecorder.from_file(path, run.problem.state_name, upto_step=last["step"])
    if last["step"] < run.n_steps and run.stateful:
        if last["estimator_state"] is not None:
            run.estimator.load_state_dict(last["estimator_state"])
            runtime.move_estimator(run.estimator, run.device)
        elif run.estimator.state_dict():
            warnings.warn(f"{path!r} stores no estimator state for step {last['step']}: the estimator restarts "
                          f"from its present state, so the resumed run is not bitwise identical", RuntimeWarning,
                          stacklevel=3)
    distributed.barrier()          # every rank has read the file before rank 0 appends to it
    old_t_end = stored.get("t_end")
    note = "" if old_t_end == run.resolved["t_end"] else f"; t_end changed from {old_t_end} to {run.resolved['t_end']}"
    return torch.from_numpy(last["state"]).to(run.device), last["step"], memory, note


class _Clock:
    """Wall time of estimator calls and steps; ``lap()`` = mean per step since the last lap."""

    def __init__(self):
        self.elapsed, self.steps = 0.0, 0

    def __enter__(self):
        self._tic = _time.perf_counter()

    def __exit__(self, *exc):
        self.elapsed += _time.perf_counter() - self._tic

    def lap(self) -> float:
        mean = self.elapsed / self.steps if self.steps else math.nan
        self.elapsed, self.steps = 0.0, 0
        return mean


class _Progress:
    """A tqdm bar (``progress=True``), a callback ``progress(step, t, diagnostics)``, or nothing."""

    def __init__(self, progress, total: int, initial: int, desc: str):
        self.callback = None if isinstance(progress, bool) else progress
        self.bar = None
        if progress is True and initial < total:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", desc=desc)

    def record(self, step: int, t: float, diagnostics: dict) -> None:
        if self.bar is not None:
            post = {"t": f"{t:.4g}"}
            post.update({k: f"{float(v):.4g}" for k, v in diagnostics.items()
                         if np.ndim(v) == 0 and k != "wall_time_per_step"})
            self.bar.set_postfix(post, refresh=False)
        elif self.callback is not None:
            self.callback(step, t, diagnostics)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@contextlib.contextmanager
def _running(run: _Run, sinks: list, start: int):
    """Thread limit and sharding for the loop; the progress display; every sink closed at the end."""
    progress = _Progress(run.progress, run.n_steps, start, getattr(run.problem, "name", "simulate"))
    with contextlib.ExitStack() as stack:
        stack.callback(progress.close)
        for sink in sinks:
            stack.callback(sink.close)
        stack.enter_context(runtime.thread_limit(run.threads))
        stack.enter_context(distributed.sharding())
        yield progress


def _record(run: _Run, k: int, t: float, x, log_density, score, est_t, est_state: dict, wall: float) -> Record:
    """Diagnostics and save hooks at a saved step, as a :class:`Record` of numpy float64 arrays."""
    snap = Snapshot(k, t, x.detach().cpu(), score.detach().cpu(), log_density.detach().cpu(), run.problem, est_t)
    diag = {}
    for diagnostic in run.diagnostics:
        diag.update(diagnostic(snap))
    diag["wall_time_per_step"] = np.float64(wall)
    state = snap.state.numpy().copy()
    score_np = snap.score.to(torch.float64).numpy()
    for hook in run.hooks:
        for key, value in (hook(k, t, state, score_np, dict(diag)) or {}).items():
            diag[key] = np.float64(value)
    return Record(k, t, state, score_np, snap.log_density.to(torch.float64).numpy(), diag, est_state)


def _energy(x: torch.Tensor) -> float:
    return float(0.5 * (x * x).sum(1).mean())


def _check_step(run: _Run, k: int, x: torch.Tensor, energy_before: float, memory: MemoryRecorder, out) -> float:
    """Raise :class:`BlowUpError` when step ``k``'s state is not finite or its energy changed by more
    than a factor ``1 + max_energy_change``; return its energy."""
    energy = _energy(x) if bool(torch.isfinite(x).all()) else math.nan
    limit = run.max_energy_change
    jumped = limit is not None and energy_before > 0 and not (
        1.0 / (1.0 + limit) <= energy / energy_before <= 1.0 + limit)
    if math.isfinite(energy) and not jumped:
        return energy
    what = ("the particle state is no longer finite" if not math.isfinite(energy) else
            f"the energy ½·mean|x|² went from {energy_before:.4g} to {energy:.4g} in one step (beyond a factor "
            f"1 + max_energy_change = {1 + limit:g})")
    tau = getattr(run.problem, "relaxation_time", lambda: None)()
    kept = f"every record up to step {memory.steps[-1]} is kept" if memory.steps else "no record was written"
    raise BlowUpError(f"the run blew up at step {k} (t = {run.t0 + k * run.dt:.6g}): {what}; dt = {run.dt:g} is "
                      f"too large for this problem" + (f" (relaxation time τ = {tau:.3g})" if tau else "") +
                      f"; {kept}" + (f" in {os.fspath(out)}" if out is not None and memory.steps else ""))


# --------------------------------------------------------------------------- entry point
def simulate(problem, estimator, *, n: int, dt: float, t_end: float, save_every: int = 1, seed: int = 0, out=None,
             saveat: SaveAt | None = None, integrator=None, progress=True, resume: bool = False,
             overwrite: bool = False, save_hooks=(), diagnostics=DEFAULT_DIAGNOSTICS, recorders=(),
             config: dict | None = None, compress: bool = False, precision: str = "float64",
             max_energy_change: float | None = MAX_ENERGY_CHANGE, device="cpu", threads: int | None = None) -> Solution:
    """Run ``n`` particles of ``problem`` from ``problem.t0`` to the absolute time ``t_end``.

    Grid ``t_k = t0 + k·dt``, ``k = 0..N = round((t_end − t0)/dt)``; step ``k`` evaluates the
    estimator at ``x_k`` (``at_time(t_k)`` if :class:`TimeDependent`) and advances with
    ``integrator`` (default :class:`Heun`). Initial state from ``torch.Generator().manual_seed(seed)``,
    per-step draws from :func:`step_generator` ``(seed, k)``. Records the steps of ``saveat``
    (default ``SaveAt(every=save_every)``) with the ``diagnostics`` callables
    (:mod:`particlescore.diagnostics`), ``wall_time_per_step`` and the scalars of each
    ``save_hooks`` ``hook(step, t, state, score, diagnostics)``, into a :class:`Solution`, the
    ``recorders`` and, with ``out``, a netCDF trajectory (``compress``, ``precision``:
    :mod:`particlescore.trajectory`); ``overwrite=True`` replaces an existing file at the first
    record. ``resume=True`` continues ``out`` from its last record: same problem, estimator,
    ``n``, ``dt``, ``seed``, integrator and schedule; ``t_end`` may change (history says so);
    a finished run returns ``new_records = 0`` and leaves the file unchanged. Stops with
    :class:`BlowUpError` (``max_energy_change``; None disables the energy test). ``progress``:
    True (tqdm), False or ``progress(step, t, diagnostics)``. ``config``: plain data recorded in
    the file. ``device``/``threads``: :mod:`particlescore.runtime`; under torchrun rank 0 writes.
    """
    run = _setup(**locals())                                          # every check, before any work
    x, start, memory, note = _start(run, out, resume)
    if resume and start == run.n_steps:                               # nothing to do: the file stays as it is
        return memory.solution(n=run.n, dim=run.dim, path=out, config=run.resolved)
    sinks = [memory, *recorders]
    if out is not None and not run.follower:
        sinks.append(NetCDFRecorder(out, state_name=problem.state_name, n=run.n, dim=run.dim, resume=resume,
                                    attrs={k: run.attrs[k] for k in ("config", "t_end")} if resume else run.attrs,
                                    overwrite=overwrite, note=note, compress=compress, precision=precision))
    at_time = (lambda t: estimator.at_time(t)) if run.time_dependent else (lambda t: estimator)
    score_fn = lambda t, y: distributed.estimate(at_time(t), y)[1]   # noqa: E731
    clock, energy = _Clock(), _energy(x)
    with _running(run, sinks, start) as shown:
        for k in range(start, run.n_steps + 1):
            t = run.t0 + k * run.dt
            est_t = at_time(t)
            save = k in run.record_steps and not (resume and k == start)
            est_state = estimator.state_dict() if save and run.stateful else {}   # what a resume restores
            with clock:
                log_density, score = distributed.estimate(est_t, x)
            if save:
                record = _record(run, k, t, x, log_density, score, est_t, est_state, clock.lap())
                for sink in sinks:
                    sink.append(record)
                shown.record(k, t, record.diagnostics)
            if k == run.n_steps:
                break
            physics = problem.physics.at_step(step_generator(run.seed, k)) if run.stochastic else problem.physics
            with clock:
                x_next = run.integrator.step(physics, t, x, run.dt, score_fn, score=score)
            energy = _check_step(run, k + 1, x_next, energy, memory, out)   # BlowUpError keeps the records
            x, clock.steps = x_next, clock.steps + 1
            shown.advance()
    return memory.solution(n=run.n, dim=run.dim, path=out, config=run.resolved)


registry.register("integrator", "euler", Euler)
registry.register("integrator", "heun", Heun)
