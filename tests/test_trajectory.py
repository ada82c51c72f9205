"""Trajectory files: round trip, incomplete records and resume, path checks (docs/trajectory.md)."""
import os
import shutil

import netCDF4
import numpy as np
import pytest
import torch

from particlescore._version import __version__
from particlescore.trajectory import TrajectoryWriter, check_output_path, decode_attrs, open_trajectory

N, D = 7, 3


def _record(k: int) -> dict:
    rng = np.random.default_rng(k)
    return dict(step=10 * k, time=0.5 + 0.1 * k, state=rng.normal(size=(N, D)),
                score=rng.normal(size=(N, D)), log_density=rng.normal(size=N))


def _write(path, records: int, **create):
    attrs = {"config": {"run": {"n": N}}, "seed": 3, "dt": 0.01, "estimator": "KDE"}
    writer = TrajectoryWriter.create(path, state_name="velocity", n_particles=N, dim=D, attrs=attrs, **create)
    with writer:
        for k in range(records):
            diagnostics = {"energy": float(k), "mean": np.full(D, k), "wall_time_per_step": 0.25}
            if k >= 1:  # a diagnostic that appears later: earlier records read as NaN
                diagnostics["covariance"] = np.eye(D) * k
            writer.append(diagnostics=diagnostics, **_record(k))
    return writer


def test_round_trip_values_dims_attrs_units(tmp_path):
    path = tmp_path / "run.nc"
    writer = _write(path, 3)
    assert writer.closed and writer.n_records == 3
    ds = open_trajectory(path)
    assert dict(ds.sizes) == {"time": 3, "particle": N, "dim": D, "dim2": D}
    assert ds["velocity"].dims == ("time", "particle", "dim")
    assert ds["score"].dims == ("time", "particle", "dim")
    assert ds["log_density"].dims == ("time", "particle")
    assert ds["covariance"].dims == ("time", "dim", "dim2")
    assert ds["mean"].dims == ("time", "dim") and ds["energy"].dims == ("time",)
    for k in range(3):
        expected = _record(k)
        np.testing.assert_array_equal(ds["velocity"].values[k], expected["state"])
        np.testing.assert_array_equal(ds["score"].values[k], expected["score"])
        np.testing.assert_array_equal(ds["log_density"].values[k], expected["log_density"])
    np.testing.assert_allclose(ds["time"].values, [0.5, 0.6, 0.7])
    assert ds["time"].dtype == np.float64                       # no datetime decoding
    assert ds["step"].dtype == np.int64 and list(ds["step"].values) == [0, 10, 20]
    assert np.isnan(ds["covariance"].values[0]).all()
    np.testing.assert_array_equal(ds["covariance"].values[2], 2 * np.eye(D))
    np.testing.assert_array_equal(ds["energy"].values, [0.0, 1.0, 2.0])
    # CF metadata
    for name in ("time", "step", "velocity", "score", "log_density", "energy", "mean", "covariance"):
        assert "units" in ds[name].attrs and ds[name].attrs["long_name"], name
    assert ds["wall_time_per_step"].attrs["units"] == "s"
    assert ds.attrs["Conventions"] == "CF-1.10"
    assert ds.attrs["source"] == f"particlescore {__version__}"
    assert ds.attrs["title"] and ds.attrs["history"][:4].isdigit()
    attrs = decode_attrs(ds.attrs)
    assert attrs["config"] == {"run": {"n": N}}
    assert attrs["seed"] == 3 and attrs["dt"] == 0.01 and attrs["estimator"] == "KDE"


def test_torch_inputs_and_shape_errors(tmp_path):
    with TrajectoryWriter.create(tmp_path / "t.nc", state_name="position", n_particles=N, dim=D, attrs={}) as w:
        x = torch.ones(N, D, dtype=torch.float32)
        w.append(step=0, time=0.0, state=x, score=x, log_density=torch.zeros(N), diagnostics={})
        with pytest.raises(ValueError, match=r"position must have shape \(7, 3\)"):
            w.append(step=1, time=0.1, state=np.ones((N, D + 1)), score=x, log_density=np.zeros(N), diagnostics={})
        with pytest.raises(ValueError, match="diagnostic 'bad'"):
            w.append(step=1, time=0.1, state=x, score=x, log_density=np.zeros(N), diagnostics={"bad": np.ones(N)})
    ds = open_trajectory(tmp_path / "t.nc")
    assert ds.sizes["time"] == 1 and "position" in ds


def _cut_short(path, index: int) -> None:
    """What a kill mid-append leaves: the state of record ``index`` written, not its time."""
    with netCDF4.Dataset(path, "a") as ds:
        ds["step"][index] = 999
        ds["velocity"][index] = np.full((N, D), 123.0)


def test_incomplete_record_dropped_and_resume_overwrites_it(tmp_path):
    path = tmp_path / "run.nc"
    _write(path, 3)
    _cut_short(path, 3)
    with netCDF4.Dataset(path) as raw:
        assert len(raw.dimensions["time"]) == 4
    ds = open_trajectory(path)
    assert ds.sizes["time"] == 3 and list(ds["step"].values) == [0, 10, 20]

    writer, last = TrajectoryWriter.open_for_resume(path)
    with writer:
        assert last["step"] == 20 and last["time"] == pytest.approx(0.7)
        np.testing.assert_array_equal(last["state"], _record(2)["state"])
        assert last["attrs"]["config"] == {"run": {"n": N}} and last["attrs"]["seed"] == 3
        assert writer.n_records == 3
        writer.append(diagnostics={"energy": 3.0}, **_record(3))
    ds = open_trajectory(path)
    assert ds.sizes["time"] == 4 and list(ds["step"].values) == [0, 10, 20, 30]
    np.testing.assert_array_equal(ds["velocity"].values[3], _record(3)["state"])
    assert "resumed at step 20" in ds.attrs["history"]


def test_resume_without_complete_record_or_trajectory(tmp_path):
    path = tmp_path / "empty.nc"
    writer = TrajectoryWriter.create(path, state_name="velocity", n_particles=N, dim=D, attrs={})
    assert not path.exists()                    # the file appears at its first record (issue 12.2)
    shutil.copy(writer._pending, path)          # what particlescore < 0.2 left after an early failure
    writer.close()
    assert sorted(os.listdir(tmp_path)) == ["empty.nc"]          # closing before a record leaves nothing
    with pytest.raises(ValueError, match="no complete record"):
        TrajectoryWriter.open_for_resume(path)
    assert check_output_path(path) == os.fspath(path)            # a retry may reuse a file without records
    plain = tmp_path / "plain.nc"
    with netCDF4.Dataset(plain, "w") as ds:
        ds.createDimension("x", 2)
    for opener in (open_trajectory, TrajectoryWriter.open_for_resume):
        with pytest.raises(ValueError, match="not a particlescore trajectory"):
            opener(plain)
    text = tmp_path / "notes.nc"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a netCDF file"):
        open_trajectory(text)
    with pytest.raises(ValueError, match="not found"):
        open_trajectory(tmp_path / "missing.nc")


def test_output_path_checks(tmp_path):
    create = dict(state_name="velocity", n_particles=N, dim=D, attrs={})
    with pytest.raises(ValueError, match="output path not writable: .*does not exist"):
        TrajectoryWriter.create(tmp_path / "no" / "such" / "run.nc", **create)
    with pytest.raises(ValueError, match="output path not writable: .*is a directory"):
        TrajectoryWriter.create(tmp_path, **create)
    path = tmp_path / "run.nc"
    _write(path, 1)
    with pytest.raises(ValueError, match="already exists.*overwrite"):
        TrajectoryWriter.create(path, **create)
    _write(path, 2, overwrite=True)
    assert open_trajectory(path).sizes["time"] == 2
    with pytest.raises(ValueError, match="cannot resume"):
        check_output_path(tmp_path / "other.nc", resume=True)
    assert check_output_path(path, resume=True) == os.fspath(path)


def test_unwritable_directory(tmp_path):
    if os.geteuid() == 0:  # root writes anywhere except on special file systems
        target = "/proc/particlescore-test.nc"
        if not os.path.isdir("/proc"):
            pytest.skip("no unwritable directory available as root")
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        target = locked / "run.nc"
    with pytest.raises(ValueError, match="output path not writable"):
        TrajectoryWriter.create(target, state_name="velocity", n_particles=N, dim=D, attrs={})


def test_estimator_state_and_float32_restart_copy_round_trip(tmp_path):
    from particlescore.trajectory import read_last_record

    path = tmp_path / "f32.nc"
    state = {"adapted.0": torch.arange(5, dtype=torch.float64) / 3, "calls": torch.tensor(7)}
    with TrajectoryWriter.create(path, state_name="velocity", n_particles=N, dim=D, attrs={},
                                 precision="float32", compress=True) as writer:
        for k in range(3):
            writer.append(estimator_state={**state, "calls": torch.tensor(k)}, **_record(k))
    last = read_last_record(path)
    assert last["index"] == 2 and last["step"] == 20
    np.testing.assert_array_equal(last["state"], _record(2)["state"])        # float64 copy, bit for bit
    assert open_trajectory(path)["velocity"].dtype == np.float32
    assert torch.equal(last["estimator_state"]["adapted.0"], state["adapted.0"])
    assert int(last["estimator_state"]["calls"]) == 2
    # A record cut short after its float64 copy was written: the previous record's copy is intact.
    with netCDF4.Dataset(path, "a") as ds:
        ds["step"][3] = 30
        ds["resume"]["state_float64"][3 % 2] = np.full((N, D), 9.0)
    np.testing.assert_array_equal(read_last_record(path)["state"], _record(2)["state"])
    # Written without an estimator state (a plain writer, or an older file): None, not an empty state.
    _write(tmp_path / "plain.nc", 2)
    assert read_last_record(tmp_path / "plain.nc")["estimator_state"] is None
