"""Issue 12.1/12.2 for every writer: the temporary file of a run killed (kill -9) before its
first record is cleaned up by the next run, and PIC files are written as atomically as
trajectories (an overwrite keeps the good file until the new run has a record; a run failing
before its first record leaves nothing behind)."""
import hashlib
import os
import signal
import subprocess
import sys

import pytest

import particlescore as ps
from particlescore import pic
from particlescore import trajectory as tmod
from particlescore.estimators import KDE
from particlescore.problems import OrnsteinUhlenbeck
from particlescore.solver import simulate

RUN = dict(n=20, dt=0.1, t_end=0.8, seed=0, progress=False)   # t0 = 0.5: 4 records
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}

# A run SIGKILLed after its first record went into the temporary file and before the rename.
KILLED_BEFORE_RENAME = """
import os, signal, sys
import particlescore as ps
from particlescore import trajectory
trajectory.commit_pending = lambda pending, path: os.kill(os.getpid(), signal.SIGKILL)
ps.simulate(ps.OrnsteinUhlenbeck(2), ps.KDE(), n=20, dt=0.1, t_end=0.8, seed=0, progress=False, out=sys.argv[1],
            overwrite=len(sys.argv) > 2)
"""


def _digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _partials(directory):
    return sorted(name for name in os.listdir(directory) if name.endswith(".partial"))


def _dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def _killed_run(path, *extra):
    proc = subprocess.run([sys.executable, "-c", KILLED_BEFORE_RENAME, str(path), *extra],
                          capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def test_kill_9_before_the_first_record_then_a_retry_leaves_one_clean_file(tmp_path):
    path = tmp_path / "run.nc"
    _killed_run(path)
    left = _partials(tmp_path)
    assert os.listdir(tmp_path) == left and len(left) == 1           # only the hidden temporary file
    assert left[0].startswith(f".run.nc.{tmod._host_tag()}-")
    sol = simulate(OrnsteinUhlenbeck(2), KDE(), out=path, **RUN)    # the retry: no "already exists"
    assert sol.new_records == 4
    assert sorted(os.listdir(tmp_path)) == ["run.nc"]               # and the killed run's file is gone


def test_kill_9_of_an_overwrite_keeps_the_good_file_and_the_next_overwrite_cleans_up(tmp_path):
    path = tmp_path / "run.nc"
    simulate(OrnsteinUhlenbeck(2), KDE(), out=path, **RUN)
    before = _digest(path)
    _killed_run(path, "--overwrite")
    assert _digest(path) == before and len(_partials(tmp_path)) == 1
    simulate(OrnsteinUhlenbeck(2), KDE(), out=path, overwrite=True, **RUN)
    assert sorted(os.listdir(tmp_path)) == ["run.nc"]


def test_only_temporary_files_of_dead_processes_on_this_machine_are_removed(tmp_path):
    host = tmod._host_tag()
    dead, alive = _dead_pid(), os.getppid()
    names = {"dead": f".run.nc.{host}-{dead}.abc123.partial",
             "alive": f".run.nc.{host}-{alive}.abc123.partial",            # a run still going
             "other host": f".run.nc.{host}x-{dead}.abc123.partial",       # another machine on a shared disk
             "other file": f".other.nc.{host}-{dead}.abc123.partial",      # another target
             "not ours": f".run.nc.{host}-{dead}.abc123.tmp"}
    for name in names.values():
        (tmp_path / name).write_bytes(b"")
    removed = tmod.remove_stale_pending(tmp_path / "run.nc")
    assert removed == [str(tmp_path / names["dead"])]
    assert sorted(os.listdir(tmp_path)) == sorted(v for k, v in names.items() if k != "dead")


# --------------------------------------------------------------------------- PIC files
def _tiny_pic(**over):
    data = {"n_particles": 400, "n_cells": 8, "dim": 2, "dt": 0.1, "t_end": 0.4, "save_every": 2,
            "particle_save_every": 2}
    data.update(over)
    return {"pic": data}


REAL_DIAGNOSTICS = pic.diagnostics


def _failing_diagnostics(monkeypatch, fail_at):
    real, calls = REAL_DIAGNOSTICS, {"n": 0}

    def diagnostics(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > fail_at:
            raise RuntimeError("diagnostics failure (test)")
        return real(*args, **kwargs)

    monkeypatch.setattr(pic, "diagnostics", diagnostics)


def test_pic_overwrite_keeps_the_good_file_until_the_new_run_has_a_record(tmp_path, monkeypatch):
    path = tmp_path / "pic.nc"
    pic.run_from_config(_tiny_pic(), path)
    before = _digest(path)
    _failing_diagnostics(monkeypatch, 0)                             # fails at record 0
    with pytest.raises(RuntimeError, match="diagnostics failure"):
        pic.run_from_config(_tiny_pic(seed=1), path, overwrite=True)
    assert _digest(path) == before and sorted(os.listdir(tmp_path)) == ["pic.nc"]
    _failing_diagnostics(monkeypatch, 1)                             # record 0 written, fails at record 1
    with pytest.raises(RuntimeError, match="diagnostics failure"):
        pic.run_from_config(_tiny_pic(seed=1), path, overwrite=True)
    ds = ps.open_trajectory(path)
    assert ds["step"].values.tolist() == [0] and tmod.decode_attrs(ds.attrs)["seed"] == 1   # the new run took the name
    assert sorted(os.listdir(tmp_path)) == ["pic.nc"]


def test_pic_run_failing_before_its_first_record_leaves_nothing_and_a_retry_works(tmp_path, monkeypatch):
    path = tmp_path / "pic.nc"
    (tmp_path / f".pic.nc.{tmod._host_tag()}-{_dead_pid()}.abc123.partial").write_bytes(b"")   # a killed run's
    _failing_diagnostics(monkeypatch, 0)
    with pytest.raises(RuntimeError, match="diagnostics failure"):
        pic.run_from_config(_tiny_pic(), path)
    assert os.listdir(tmp_path) == []
    monkeypatch.undo()
    result = pic.run_from_config(_tiny_pic(), path)
    assert ps.open_trajectory(path)["step"].values.tolist() == [0, 2, 4] and result.path == str(path)
    assert sorted(os.listdir(tmp_path)) == ["pic.nc"]
