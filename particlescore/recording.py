"""What :func:`particlescore.simulate` saves and where: a :class:`SaveAt` schedule and recorders.

As in diffrax, the saving policy is a value (``SaveAt(every=k)`` or ``SaveAt(times=[...])``) and
the sink is an object: each saved step becomes a :class:`Record` handed to every recorder's
``append``. :class:`MemoryRecorder` keeps the records and builds the :class:`Solution`;
:class:`NetCDFRecorder` writes a trajectory file (:mod:`particlescore.trajectory`) and touches
the file only at the first record, when the run has produced something worth keeping.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["SaveAt", "Record", "Recorder", "MemoryRecorder", "NetCDFRecorder", "Solution"]


# --------------------------------------------------------------------------- schedule
@dataclass(frozen=True)
class SaveAt:
    """Which steps of the grid ``t_k = t0 + k·dt`` are recorded.

    ``SaveAt(every=k)``: step 0, every ``k``-th step and the last. ``SaveAt(times=[...])``: the
    grid steps at the given absolute times (each within ``1e-6·dt`` of the grid, inside
    ``[t0, t_end]``) and the last step, so that a file always ends at ``t_end`` and can be
    resumed or extended.
    """

    every: int | None = 1
    times: tuple[float, ...] | None = None

    def __post_init__(self):
        if self.times is not None:
            times = tuple(float(t) for t in np.atleast_1d(np.asarray(self.times, dtype=np.float64)))
            if not times or not all(math.isfinite(t) for t in times):
                raise ValueError(f"SaveAt times must be a non-empty list of finite numbers, got {self.times!r}")
            object.__setattr__(self, "times", times)
            object.__setattr__(self, "every", None)
        elif isinstance(self.every, bool) or not isinstance(self.every, (int, np.integer)) or self.every < 1:
            raise ValueError(f"save_every must be an int >= 1, got {self.every!r}")

    def steps(self, t0: float, dt: float, n_steps: int):
        """The recorded step indices of an ``n_steps``-step run (a set-like object: ``k in steps``)."""
        if self.times is None:
            return _EverySteps(self.every, n_steps)
        steps = set()
        for t in self.times:
            k = round((t - t0) / dt)
            if not (0 <= k <= n_steps and abs(t0 + k * dt - t) <= 1e-6 * dt):
                raise ValueError(f"SaveAt time {t!r} is not a step of the grid t0 + k·dt "
                                 f"(t0 = {t0!r}, dt = {dt!r}, k = 0..{n_steps})")
            steps.add(k)
        return frozenset(steps | {n_steps})

    def describe(self) -> dict:
        return {"every": self.every} if self.times is None else {"times": list(self.times)}


@dataclass(frozen=True)
class _EverySteps:
    """``{0, every, 2·every, …} ∪ {n_steps}`` without storing it (runs may take millions of steps)."""

    every: int
    n_steps: int

    def __contains__(self, k) -> bool:
        return 0 <= k <= self.n_steps and (k % self.every == 0 or k == self.n_steps)

    def __iter__(self):
        yield from range(0, self.n_steps, self.every)
        yield self.n_steps


# --------------------------------------------------------------------------- records
@dataclass
class Record:
    """One saved step: numpy float64 arrays ``state`` (n, d), ``score`` (n, d),
    ``log_density`` (n,), ``diagnostics`` (name -> scalar, (d,) or (d, d)) and the estimator's
    ``state_dict()`` taken before the step's first evaluation (what a resume restores)."""

    step: int
    time: float
    state: np.ndarray
    score: np.ndarray
    log_density: np.ndarray
    diagnostics: dict[str, np.ndarray]
    estimator_state: dict = field(default_factory=dict)


@runtime_checkable
class Recorder(Protocol):
    """Where records go: ``append(record)`` at each saved step, ``close()`` once at the end
    (also after an error)."""

    def append(self, record: Record) -> None: ...

    def close(self) -> None: ...


@dataclass
class Solution:
    """Saved records of a run: ``times`` (T,), ``steps`` (T,), ``states`` (T, n, d),
    ``diagnostics`` (name -> array stacked over saved times), the trajectory ``path`` (or
    None), the resolved ``config`` and ``new_records``, the number of records this call added
    (0 when a resumed run was already complete)."""

    times: np.ndarray
    states: np.ndarray
    diagnostics: dict[str, np.ndarray]
    path: str | None
    config: dict
    steps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    new_records: int = 0


class MemoryRecorder:
    """Keeps states and diagnostics in memory (no scores: they would double the footprint)."""

    def __init__(self):
        self.times: list[float] = []
        self.steps: list[int] = []
        self.states: list[np.ndarray] = []
        self.diagnostics: dict[str, list[np.ndarray]] = {}
        self.new_records = 0

    @classmethod
    def from_file(cls, path, state_name: str, *, upto_step: int) -> "MemoryRecorder":
        """The complete records of a trajectory file up to step ``upto_step`` (a resume's past)."""
        from .trajectory import open_trajectory

        ds = open_trajectory(path)
        keep = np.asarray(ds["step"].values) <= upto_step
        memory = cls()
        memory.times = [float(t) for t in ds["time"].values[keep]]
        memory.steps = [int(s) for s in ds["step"].values[keep]]
        memory.states = list(np.asarray(ds[state_name].values, dtype=np.float64)[keep])
        skip = {"time", "step", "score", "log_density", state_name}
        memory.diagnostics = {name: list(np.asarray(ds[name].values, dtype=np.float64)[keep])
                              for name in ds.data_vars if name not in skip and ds[name].dims[:1] == ("time",)}
        return memory

    def append(self, record: Record) -> None:
        self.times.append(float(record.time))
        self.steps.append(int(record.step))
        self.states.append(record.state)
        count = len(self.times)
        for key, value in record.diagnostics.items():   # a new key reads NaN at earlier records
            self.diagnostics.setdefault(key, [np.full(np.shape(value), np.nan)] * (count - 1)).append(value)
        for values in self.diagnostics.values():         # a key missing from this record reads NaN
            if len(values) < count:
                values.append(np.full(np.shape(values[-1]), np.nan))
        self.new_records += 1

    def close(self) -> None:
        pass

    def solution(self, *, n: int, dim: int, path, config: dict) -> Solution:
        diagnostics = {key: np.stack([np.asarray(v, dtype=np.float64) for v in values])
                       for key, values in self.diagnostics.items()}
        return Solution(times=np.asarray(self.times, dtype=np.float64),
                        states=np.stack(self.states) if self.states else np.zeros((0, n, dim)),
                        diagnostics=diagnostics, path=None if path is None else os.fspath(path), config=config,
                        steps=np.asarray(self.steps, dtype=np.int64), new_records=self.new_records)


class NetCDFRecorder:
    """Writes records to a netCDF trajectory at ``path``; nothing touches ``path`` before the
    first record. A new file is created beside ``path`` and renamed over it once that record is
    synced (:meth:`TrajectoryWriter.create`); a resumed file (``resume=True``) is reopened for
    appending then, with ``note`` added to its history and ``attrs`` updated."""

    def __init__(self, path, *, state_name: str, n: int, dim: int, attrs: dict, resume: bool = False,
                 overwrite: bool = False, note: str = "", compress: bool = False, precision: str = "float64"):
        self.path = os.fspath(path)
        self._open_args = dict(state_name=state_name, n_particles=n, dim=dim, attrs=attrs, overwrite=overwrite,
                               compress=compress, precision=precision)
        self._resume, self._note = resume, note
        self._writer = None

    def append(self, record: Record) -> None:
        from .trajectory import TrajectoryWriter

        if self._writer is None:
            if self._resume:
                self._writer, _ = TrajectoryWriter.open_for_resume(self.path, note=self._note,
                                                                   attrs=self._open_args["attrs"])
            else:
                self._writer = TrajectoryWriter.create(self.path, **self._open_args)
        self._writer.append(step=record.step, time=record.time, state=record.state, score=record.score,
                            log_density=record.log_density, diagnostics=record.diagnostics,
                            estimator_state=record.estimator_state)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
