"""Plots and file descriptions from Python (issue 10.4) and the first-hour CLI items of issue 12:
item 11 (relative energy drift, a y-label on every panel, a title naming problem, estimator, n, d)
and item 12 (--help with examples, problems, packaged cases and absolute t_end; packaged cases
runnable by name and copied out by ``example``; ``info | head`` quiet; size per saved record)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import particlescore as ps
from particlescore.cli import main, packaged_cases

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

TINY_OU = """\
[problem]
name = "ornstein_uhlenbeck"
dim = 2
[estimator]
name = "kde"
[run]
n = 40
dt = 0.05
t_end = 0.8
save_every = 2
seed = 1
"""


@pytest.fixture(scope="module")
def trajectory(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plot")
    (tmp / "ou.toml").write_text(TINY_OU)
    out = tmp / "ou.nc"
    assert main(["run", str(tmp / "ou.toml"), "--out", str(out), "--no-progress"]) == 0
    return out


def test_plot_from_python_shows_relative_energy_drift(trajectory, tmp_path):
    ds = ps.open_trajectory(trajectory)
    fig = ps.plot_trajectory(ds)                               # a Dataset, from Python
    try:
        fig.canvas.draw()
        covariance, energy, entropy = fig.axes[:3]
        # the energy panel is (E(t) − E(t0))/|E(t0)| of the recorded energy, exactly
        e = ds["energy"].values
        np.testing.assert_array_equal(energy.lines[0].get_ydata(), (e - e[0]) / abs(e[0]))
        assert energy.lines[0].get_ydata()[0] == 0.0
        for ax in fig.axes:
            if ax.get_visible():
                assert ax.get_ylabel().strip(), f"panel {ax.get_title()!r} has no y-label"
                assert "+" not in ax.yaxis.get_offset_text().get_text(), f"offset axis on {ax.get_title()!r}"
        title = fig._suptitle.get_text()
        assert title == "ornstein_uhlenbeck, kde, n = 40, d = 2"
    finally:
        matplotlib.pyplot.close(fig)
    figure = tmp_path / "ou.png"
    ps.plot_trajectory(trajectory, figure)                    # a path, to a file
    assert figure.stat().st_size > 10_000


def test_energy_round_off_is_not_drawn_as_a_rise(tmp_path):
    # Energy constant to round-off (±1e-15 relative): the old plot showed "1e-8+1.50138" and a
    # visible staircase; the drift panel's values are of order 1e-15 and no additive offset is used.
    import xarray as xr
    ds = ps.open_trajectory(_tiny(tmp_path))
    energy = 1.50138 * (1 + 1e-15 * np.array([0, 1, -1, 2])[: ds.sizes["time"]])
    ds["energy"] = xr.DataArray(energy, dims=("time",))
    fig = ps.plot_trajectory(ds)
    try:
        fig.canvas.draw()
        drift = fig.axes[1].lines[0].get_ydata()
        assert np.max(np.abs(drift)) < 3e-15
        assert "+" not in fig.axes[1].yaxis.get_offset_text().get_text()   # a scale (1e−15) at most, no offset
    finally:
        matplotlib.pyplot.close(fig)


def _tiny(tmp_path):
    (tmp_path / "ou.toml").write_text(TINY_OU.replace("t_end = 0.8", "t_end = 0.65"))
    out = tmp_path / "tiny.nc"
    assert main(["run", str(tmp_path / "ou.toml"), "--out", str(out), "--no-progress"]) == 0
    return out


def test_info_reports_size_per_record(trajectory, capsys):
    assert main(["info", str(trajectory)]) == 0
    text = capsys.readouterr().out
    records = ps.open_trajectory(trajectory).sizes["time"]
    per_record = os.path.getsize(trajectory) / records
    line = next(line for line in text.splitlines() if line.startswith("size:"))
    assert "per saved record" in line and f"{per_record / 1000:.3g} kB per saved record" in line, line
    assert ps.describe_trajectory(trajectory) == text.rstrip("\n")


def test_info_into_a_closed_pipe_is_quiet(trajectory):
    # `particlescore info f | head`: the reader has gone before the writer writes.
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([sys.executable, "-m", "particlescore", "info", str(trajectory)], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert done.stderr == "", done.stderr
    assert done.returncode == 141                             # 128 + SIGPIPE, as cat | head


def test_help_lists_examples_problems_cases_and_absolute_time(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "particlescore run bkw_d2" in text
    for name in ps.registry.names("problem") + ps.registry.names("estimator"):
        assert name in text
    for case in packaged_cases():
        assert case in text
    assert "t_end is absolute time" in text
    assert main(["run", "--help"]) == 0
    assert "t_end is absolute time" in capsys.readouterr().out


def test_packaged_cases_are_installed_and_run_by_name(tmp_path, monkeypatch, capsys):
    import particlescore
    installed = Path(particlescore.__file__).parent / "simulations"
    assert set(packaged_cases()) >= {"bkw_d2", "bkw_d3", "landau_maxwell_anisotropic", "landau_maxwell_anisotropic_d10",
                                     "landau_coulomb", "ornstein_uhlenbeck", "pure_diffusion", "moving_trap"}
    monkeypatch.chdir(tmp_path)                               # no simulations/ directory here
    status = main(["run", "ornstein_uhlenbeck", "--estimator", "kde", "--n", "30", "--t-end", "0.6",
                   "--out", "ou.nc", "--no-progress"])
    assert status == 0, capsys.readouterr().err
    assert "case 'ornstein_uhlenbeck'" in capsys.readouterr().out
    assert ps.open_trajectory("ou.nc").sizes["particle"] == 30
    assert main(["example", "moving_trap"]) == 0
    assert Path("moving_trap.toml").read_text() == (installed / "moving_trap.toml").read_text()
    assert main(["example", "moving_trap"]) == 2              # never overwrites
    assert "already exists" in capsys.readouterr().err
    assert main(["example", "nope"]) == 2
    assert "packaged cases: bkw_d2" in capsys.readouterr().err


def test_packaged_cases_are_package_data():
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"simulations/*.toml"' in text
