"""Issue 12, data safety (items 1–6 and 13): no good file lost, honest provenance, exact resume,
blow-ups stopped, files at scale. Each test fails on the code before the fix."""
import hashlib
import os

import netCDF4
import numpy as np
import pytest

from particlescore.cli import main
from particlescore.estimators import KDE, Blob
from particlescore.problems import AnisotropicMaxwell, BKWProblem, OrnsteinUhlenbeck
from particlescore.recording import SaveAt
from particlescore.sbtm import SBTM
from particlescore.solver import BlowUpError, simulate
from particlescore.trajectory import decode_attrs, open_trajectory

RUN = dict(n=30, dt=0.1, seed=2, progress=False)


def _digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _good_file(path, t_end=0.5):
    problem = AnisotropicMaxwell(2)
    sol = simulate(problem, KDE(), t_end=t_end, out=path, **RUN)
    assert len(sol.steps) == round(t_end / RUN["dt"]) + 1
    return problem, _digest(path)


class FailingKDE(KDE):
    """A KDE that raises at its ``fail_at``-th call (0: the very first score evaluation)."""

    def __init__(self, fail_at: int):
        super().__init__("scott")
        self.fail_at, self.calls = fail_at, 0

    def _evaluate(self, context, queries):
        self.calls += 1
        if self.calls > self.fail_at:
            raise ValueError("estimator failure (test)")
        return super()._evaluate(context, queries)


# --------------------------------------------------------------------------- 12.1 overwrite
def test_overwrite_keeps_the_good_file_until_the_new_run_has_a_record(tmp_path):
    path = tmp_path / "run.nc"
    problem, before = _good_file(path)
    with pytest.raises(ValueError, match="estimator failure"):
        simulate(problem, FailingKDE(0), t_end=0.5, out=path, overwrite=True, **RUN)
    assert _digest(path) == before                       # the complete file is untouched
    assert sorted(os.listdir(tmp_path)) == ["run.nc"]   # and no temporary file is left behind
    # Once the replacement has a synced record it takes the name (renamed atomically).
    with pytest.raises(ValueError, match="estimator failure"):
        simulate(problem, FailingKDE(5), t_end=0.5, out=path, overwrite=True, **RUN)   # Heun: 2 calls/step
    assert list(open_trajectory(path)["step"].values) == [0, 1, 2]     # the 6th call, step 2's predictor, failed
    assert sorted(os.listdir(tmp_path)) == ["run.nc"]


def test_cli_overwrite_with_an_invalid_n_keeps_the_file(tmp_path, capsys):
    """The issue's case: ``--n 3`` fails when DiScoFormer whitens d=3 data (needs n >= 4)."""
    pytest.importorskip("particlescore.discoformer")
    path = tmp_path / "run.nc"
    _good_file(path)
    before = _digest(path)
    assert main(["run", "--out", str(path), "--overwrite", "--n", "3", "--t-end", "0.04", "--no-progress"]) != 0
    capsys.readouterr()
    assert _digest(path) == before and sorted(os.listdir(tmp_path)) == ["run.nc"]


# --------------------------------------------------------------------------- 12.2 nothing left behind
def test_a_run_failing_before_its_first_record_leaves_nothing_and_a_retry_works(tmp_path):
    path = tmp_path / "run.nc"
    problem = AnisotropicMaxwell(2)
    with pytest.raises(ValueError, match="estimator failure"):
        simulate(problem, FailingKDE(0), t_end=0.5, out=path, **RUN)
    assert os.listdir(tmp_path) == []
    sol = simulate(problem, KDE(), t_end=0.5, out=path, **RUN)        # no "already exists"
    assert sol.new_records == 6 and open_trajectory(path).sizes["time"] == 6


# --------------------------------------------------------------------------- 12.3 provenance on resume
def test_resume_refuses_another_estimator_and_records_a_longer_t_end(tmp_path):
    path = tmp_path / "run.nc"
    problem, before = _good_file(path, t_end=0.3)
    with pytest.raises(ValueError, match="estimator"):
        simulate(problem, Blob(), t_end=0.6, out=path, resume=True, **RUN)
    with pytest.raises(ValueError, match="estimator"):
        simulate(problem, KDE("silverman"), t_end=0.6, out=path, resume=True, **RUN)   # other options
    assert _digest(path) == before
    sol = simulate(problem, KDE(), t_end=0.6, out=path, resume=True, **RUN)
    assert list(sol.steps) == list(range(7)) and sol.new_records == 3
    attrs = decode_attrs(open_trajectory(path).attrs)
    assert attrs["t_end"] == 0.6 and attrs["config"]["t_end"] == 0.6
    assert "resumed at step 3; t_end changed from 0.3 to 0.6" in attrs["history"]
    assert attrs["estimator"] == KDE().describe()


# --------------------------------------------------------------------------- 12.4 finished run
def test_resume_of_a_finished_run_changes_no_byte(tmp_path, capsys):
    path = tmp_path / "run.nc"
    problem, before = _good_file(path)
    sol = simulate(problem, KDE(), t_end=0.5, out=path, resume=True, **RUN)
    assert sol.new_records == 0 and list(sol.steps) == list(range(6))
    assert _digest(path) == before
    # The CLI says so instead of "wrote".
    case = tmp_path / "ou.toml"
    case.write_text('[problem]\nname = "ornstein_uhlenbeck"\ndim = 2\n[estimator]\nname = "kde"\n'
                    '[run]\nn = 20\ndt = 0.1\nt_end = 0.7\nsave_every = 1\n')
    out = tmp_path / "ou.nc"
    assert main(["run", str(case), "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    before = _digest(out)
    assert main(["run", str(case), "--out", str(out), "--resume", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "nothing to do" in printed and "wrote" not in printed
    assert _digest(out) == before


# --------------------------------------------------------------------------- 12.5 exact resume
class Interrupt(Exception):
    pass


def _interrupt_at(step):
    def progress(k, t, diagnostics):
        if k == step:
            raise Interrupt                      # after record `step` was written: a kill between records
    return progress


def _interrupted_and_resumed(tmp_path, problem, make_estimator, *, t_end, stop, **kwargs):
    full = simulate(problem, make_estimator(), t_end=t_end, out=tmp_path / "full.nc", **kwargs)
    with pytest.raises(Interrupt):
        simulate(problem, make_estimator(), t_end=t_end, out=tmp_path / "cut.nc",
                 **{**kwargs, "progress": _interrupt_at(stop)})
    assert open_trajectory(tmp_path / "cut.nc")["step"].values[-1] == stop
    resumed = simulate(problem, make_estimator(), t_end=t_end, out=tmp_path / "cut.nc", resume=True, **kwargs)
    return full, resumed


def test_resume_is_bitwise_for_discoformer_with_warm_started_adaptation(tmp_path):
    discoformer = pytest.importorskip("particlescore.discoformer")
    problem = AnisotropicMaxwell(2)
    make = lambda: discoformer.DiScoFormer.pretrained(2, adapt_steps=2, warm_start=True, refit_every=3)
    full, resumed = _interrupted_and_resumed(tmp_path, problem, make, t_end=0.25, stop=2,
                                             n=40, dt=0.05, seed=1, save_every=2, progress=False)
    assert list(resumed.steps) == [0, 2, 4, 5]
    np.testing.assert_array_equal(resumed.states, full.states)
    a, b = open_trajectory(tmp_path / "full.nc"), open_trajectory(tmp_path / "cut.nc")
    for name in ("velocity", "score", "log_density", "consistency_loss", "covariance"):
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


def test_resume_is_bitwise_for_sbtm(tmp_path):
    problem = BKWProblem(2)
    make = lambda: SBTM(hidden=8, steps_per_call=2, initial_fit_steps=10,
                        initial_score=problem.exact_distribution(problem.t0).score)
    full, resumed = _interrupted_and_resumed(tmp_path, problem, make, t_end=problem.t0 + 0.5, stop=3,
                                             n=30, dt=0.1, seed=0, progress=False)
    np.testing.assert_array_equal(resumed.states, full.states)
    np.testing.assert_array_equal(resumed.diagnostics["sbtm_loss"], full.diagnostics["sbtm_loss"])


# --------------------------------------------------------------------------- 12.6 blow-up
def test_a_blow_up_stops_with_a_clear_error_and_keeps_the_good_records(tmp_path):
    problem = AnisotropicMaxwell(3)
    path = tmp_path / "run.nc"
    with pytest.warns(RuntimeWarning, match="relaxation time"):              # dt = 25 τ: warned up front
        with pytest.raises(BlowUpError, match=r"blew up at step 1 .*energy.*dt = 50") as err:
            simulate(problem, KDE(), n=100, dt=50.0, t_end=500.0, out=path, progress=False)
    assert "every record up to step 0 is kept" in str(err.value)
    ds = open_trajectory(path)
    assert list(ds["step"].values) == [0] and np.isfinite(ds["velocity"].values).all()


class NaNAfter(KDE):
    """A KDE whose score turns NaN from its ``k``-th call on."""

    def __init__(self, k):
        super().__init__("scott")
        self.k, self.calls = k, 0

    def _evaluate(self, context, queries):
        self.calls += 1
        log_f, score = super()._evaluate(context, queries)
        return log_f, score * (np.nan if self.calls > self.k else 1.0)


def test_a_non_finite_state_stops_the_run_at_the_first_bad_step(tmp_path):
    problem = OrnsteinUhlenbeck(2)
    path = tmp_path / "run.nc"
    with pytest.raises(BlowUpError, match="step 3 .*no longer finite"):
        simulate(problem, NaNAfter(5), n=20, dt=0.05, t_end=1.0, out=path, progress=False)   # Heun: 2 calls/step
    ds = open_trajectory(path)
    assert list(ds["step"].values) == [0, 1, 2] and np.isfinite(ds["position"].values).all()


def test_normal_runs_pass_the_blow_up_guard():
    # A relaxing run at dt = τ/10 changes the energy by about 1 % per step, far inside the factor 2.
    problem = AnisotropicMaxwell(3)
    sol = simulate(problem, KDE(), n=60, dt=0.2, t_end=2.0, progress=False)
    energy = sol.diagnostics["energy"]
    assert np.all(np.abs(np.diff(energy)) / energy[:-1] < 0.05)


# --------------------------------------------------------------------------- 12.13 files at scale
def test_coordinates_compression_float32_and_chunks(tmp_path):
    problem = AnisotropicMaxwell(3)
    kwargs = dict(n=400, dt=0.1, seed=0, progress=False)
    storage = {"plain": {}, "zip": dict(compress=True), "f32": dict(precision="float32")}
    sizes = {}
    for name, options in storage.items():
        for t_end in (0.5, 1.0):                       # 6 and 11 records
            sol = simulate(problem, KDE(), t_end=t_end, out=tmp_path / f"{name}{t_end}.nc", **kwargs, **options)
            sizes[name, t_end] = os.path.getsize(tmp_path / f"{name}{t_end}.nc")
    ds = {name: open_trajectory(tmp_path / f"{name}1.0.nc") for name in storage}
    for d in ds.values():
        np.testing.assert_array_equal(d["particle"].values, np.arange(400))
        np.testing.assert_array_equal(d["dim"].values, np.arange(3))
        assert d["particle"].attrs["long_name"] and d["dim"].attrs["units"] == "1"
    np.testing.assert_array_equal(ds["zip"]["velocity"].values, sol.states)           # lossless
    np.testing.assert_array_equal(ds["plain"]["velocity"].values, sol.states)
    assert ds["f32"]["velocity"].dtype == np.float32
    np.testing.assert_array_equal(ds["f32"]["velocity"].values, sol.states.astype(np.float32))
    per_record = {name: (sizes[name, 1.0] - sizes[name, 0.5]) / 5 for name in storage}
    # A float64 record holds n·(2d + 1)·8 = 22400 bytes of state, score and log-density; float32 halves
    # that (diagnostics stay float64: a few hundred bytes); deflate gains a little on float64 noise.
    assert 22400 <= per_record["plain"] < 23500
    assert per_record["f32"] < 0.55 * per_record["plain"] and per_record["zip"] < per_record["plain"]
    with netCDF4.Dataset(tmp_path / "zip1.0.nc") as raw:
        var = raw["velocity"]
        assert var.chunking() == [1, 400, 3] and var.filters()["zlib"] and var.filters()["shuffle"]
    with netCDF4.Dataset(tmp_path / "plain1.0.nc") as raw:
        assert not raw["velocity"].filters()["zlib"] and raw["velocity"].dtype == np.float64
    with pytest.raises(ValueError, match="precision"):
        simulate(problem, KDE(), t_end=0.5, precision="float16", **kwargs)


def test_float32_files_still_resume_bitwise(tmp_path):
    problem = BKWProblem(2, random_batch_size=6)
    kwargs = dict(n=24, dt=0.05, seed=3, progress=False, precision="float32")
    full, resumed = _interrupted_and_resumed(tmp_path, problem, KDE, t_end=problem.t0 + 0.4, stop=5, **kwargs)
    np.testing.assert_array_equal(resumed.states[-1], full.states[-1])   # float64 restart copy, not the f32 record


def test_save_at_explicit_times():
    problem = OrnsteinUhlenbeck(2)
    sol = simulate(problem, KDE(), n=20, dt=0.1, t_end=1.0, saveat=SaveAt(times=[0.7, 0.5]), progress=False)
    assert list(sol.steps) == [0, 2, 5]
    with pytest.raises(ValueError, match="not a step of the grid"):
        simulate(problem, KDE(), n=20, dt=0.1, t_end=1.0, saveat=SaveAt(times=[0.55]), progress=False)
    with pytest.raises(ValueError, match="not both"):
        simulate(problem, KDE(), n=20, dt=0.1, t_end=1.0, saveat=SaveAt(every=2), save_every=3, progress=False)


KILLED_RUN = """
import os, signal, sys
import particlescore as ps

class KillAt:                       # a recorder ahead of the netCDF one: SIGKILL before record {stop} is written
    def append(self, record):
        if record.step == {stop}:
            os.kill(os.getpid(), signal.SIGKILL)
    def close(self):
        pass

est = ps.DiScoFormer.pretrained(2, adapt_steps=1, warm_start=True, refit_every=2)
ps.simulate(ps.AnisotropicMaxwell(2, random_batch_size=8), est, n=32, dt=0.05, t_end=0.3, seed=5,
            out=sys.argv[1], progress=False, recorders=[KillAt()])
"""


def test_kill_9_then_resume_is_bitwise(tmp_path):
    """A real SIGKILL mid-run (DiScoFormer with warm-started adaptation, random batches)."""
    import signal
    import subprocess
    import sys

    discoformer = pytest.importorskip("particlescore.discoformer")
    path = tmp_path / "cut.nc"
    proc = subprocess.run([sys.executable, "-c", KILLED_RUN.replace("{stop}", "4"), str(path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert list(open_trajectory(path)["step"].values) == [0, 1, 2, 3]
    problem = AnisotropicMaxwell(2, random_batch_size=8)
    make = lambda: discoformer.DiScoFormer.pretrained(2, adapt_steps=1, warm_start=True, refit_every=2)
    kwargs = dict(n=32, dt=0.05, t_end=0.3, seed=5, progress=False)
    resumed = simulate(problem, make(), out=path, resume=True, **kwargs)
    full = simulate(problem, make(), out=tmp_path / "full.nc", **kwargs)
    assert list(resumed.steps) == list(range(7))
    np.testing.assert_array_equal(resumed.states, full.states)
    np.testing.assert_array_equal(open_trajectory(path)["score"].values,
                                  open_trajectory(tmp_path / "full.nc")["score"].values)


def test_output_section_of_the_toml_reaches_the_file(tmp_path, capsys):
    case = tmp_path / "ou.toml"
    case.write_text('[problem]\nname = "ornstein_uhlenbeck"\ndim = 2\n[estimator]\nname = "kde"\n'
                    '[run]\nn = 20\ndt = 0.1\nt_end = 0.7\n[output]\ncompress = true\nprecision = "float32"\n')
    out = tmp_path / "ou.nc"
    assert main(["run", str(case), "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    with netCDF4.Dataset(out) as raw:
        assert raw["position"].dtype == np.float32 and raw["position"].filters()["zlib"]
