"""Run configurations (config.py) and the command line (cli.py): validation errors are one line
with exit status 2; run / info / plot end to end on a tiny case.

Doubles as a plotting script: set PARTICLESCORE_TEST_PLOTS=<dir> to keep the figures.
"""
import os
from pathlib import Path

import pytest

from particlescore import config as cfgmod
from particlescore.cli import main
from particlescore.trajectory import open_trajectory

SIMULATIONS = sorted((Path(__file__).resolve().parents[1] / "simulations").glob("*.toml"))

TINY_OU = """\
[problem]
name = "ornstein_uhlenbeck"
dim = 2
[estimator]
name = "kde"
bandwidth = "scott"
[run]
n = 40
dt = 0.05
t_end = 0.8
save_every = 2
seed = 1
integrator = "heun"
"""


def _write(tmp_path, text, name="case.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _one_error_line(capsys, status, expected_status=2):
    err = capsys.readouterr().err
    assert status == expected_status, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("particlescore: error: "), err
    assert "Traceback" not in err
    return lines[0]


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize("path", SIMULATIONS, ids=lambda p: p.name)
def test_shipped_configurations_validate(path):
    cfg = cfgmod.load_config(path)
    problem = cfgmod.build_problem(cfg)
    assert cfg.run.t_end > problem.t0
    assert problem.dim == cfg.problem.dim
    assert path.read_text().startswith("#")  # comment header says what it shows


def test_simulation_set_is_complete():
    names = {p.stem for p in SIMULATIONS}
    assert {"bkw_d2", "bkw_d3", "landau_maxwell_anisotropic", "landau_maxwell_anisotropic_d10",
            "landau_coulomb", "ornstein_uhlenbeck", "pure_diffusion", "moving_trap"} <= names


def test_default_config_and_round_trip():
    cfg = cfgmod.default_config()
    assert (cfg.problem.name, cfg.problem.dim, cfg.estimator.name) == ("landau_maxwell_anisotropic", 3, "discoformer")
    assert (cfg.run.n, cfg.run.dt, cfg.run.t_end, cfg.run.save_every) == (500, 0.02, 4.0, 5)
    assert cfgmod.config_from_dict(cfgmod.config_to_dict(cfg)) == cfg


def test_overrides():
    cfg = cfgmod.apply_overrides(cfgmod.default_config(), estimator="kde", n=64, dt=0.02, t_end=1.0, seed=5, dim=2)
    assert cfg.estimator == cfgmod.EstimatorConfig(name="kde", bandwidth="scott")   # discoformer keys dropped
    assert (cfg.run.n, cfg.run.dt, cfg.run.t_end, cfg.run.seed, cfg.problem.dim) == (64, 0.02, 1.0, 5, 2)
    assert cfgmod.apply_overrides(cfgmod.default_config(), adapt_steps=4).estimator.adapt_steps == 4
    with pytest.raises(ValueError, match="only to the discoformer"):
        cfgmod.apply_overrides(cfg, adapt_steps=2)
    with pytest.raises(ValueError, match="run.n: must be >= 2"):
        cfgmod.apply_overrides(cfg, n=1)


def test_build_estimators(tmp_path):
    cfg = cfgmod.load_config(_write(tmp_path, TINY_OU))
    problem = cfgmod.build_problem(cfg)
    assert type(cfgmod.build_estimator(cfg, problem)).__name__ == "KDE"
    for name in ("blob", "exact", "sbtm"):
        est = cfgmod.build_estimator(cfgmod.apply_overrides(cfg, estimator=name), problem)
        assert type(est).__name__.lower() == name
    assert cfgmod.build_estimator(cfgmod.apply_overrides(cfg, estimator="sbtm"), problem).initial_score is not None
    implicit = cfgmod.load_config(_write(tmp_path, TINY_OU.replace('name = "kde"\nbandwidth = "scott"',
                                                                  'name = "sbtm"\nloss = "implicit"\nhutchinson_probes = 3')))
    sbtm = cfgmod.build_estimator(implicit, problem)
    assert (sbtm.loss, sbtm.hutchinson_probes) == ("implicit", 3)
    from particlescore.sbtm import LOSSES
    assert cfgmod.SBTM_LOSSES == LOSSES
    maxwell = cfgmod.apply_overrides(cfgmod.default_config(), estimator="exact")
    with pytest.raises(ValueError, match="has no exact solution"):
        cfgmod.build_estimator(maxwell, cfgmod.build_problem(maxwell))


# --------------------------------------------------------------------------- one-line errors
BAD_CONFIGS = {
    "unknown key": (TINY_OU.replace("seed = 1", "sed = 1"),
                    ["unknown key 'sed'", "allowed keys: n, dt, t_end, save_every, seed, integrator"]),
    "unknown section": (TINY_OU + "[output]\npath = 'x'\n", ["unknown key 'output'", "problem, estimator, run"]),
    "key of another estimator": (TINY_OU.replace('bandwidth = "scott"', "adapt_steps = 2"),
                                 ["unknown key 'adapt_steps'", "for estimator 'kde'", "bandwidth"]),
    "wrong type": (TINY_OU.replace("n = 40", 'n = "40"'), ["run.n: expected int, got str ('40')"]),
    "wrong float type": (TINY_OU.replace("dt = 0.05", "dt = true"), ["run.dt: expected float, got bool"]),
    "unknown estimator": (TINY_OU.replace('name = "kde"', 'name = "kdee"'),
                          ["unknown estimator.name 'kdee'", "discoformer, kde, blob, exact, sbtm"]),
    "unknown problem": (TINY_OU.replace("ornstein_uhlenbeck", "heat"),
                        ["unknown problem.name 'heat'", "bkw, landau_maxwell_anisotropic"]),
    "bad TOML": ("[run\nn = 1", ["not valid TOML"]),
    "start time": (TINY_OU.replace("t_end = 0.8", "t_end = 0.3"), ["start time t0 = 0.5"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_config_errors_are_one_line(case, tmp_path, capsys):
    text, fragments = BAD_CONFIGS[case]
    status = main(["run", _write(tmp_path, text), "--out", str(tmp_path / "out.nc"), "--no-progress"])
    line = _one_error_line(capsys, status)
    for fragment in fragments:
        assert fragment in line, line
    assert not (tmp_path / "out.nc").exists()


@pytest.mark.parametrize("argv, fragment", [
    (["--estimator", "foo"], "invalid choice: 'foo'"),
    (["--n", "many"], "invalid int value"),
    (["--adapt-steps", "3"], "only to the discoformer"),
    (["--estimator", "exact", "--dim", "3", "--t-end", "0.2"], "start time"),
    (["--resume", "--overwrite"], "exclude each other"),
])
def test_command_line_errors_are_one_line(argv, fragment, tmp_path, capsys):
    status = main(["run", _write(tmp_path, TINY_OU), "--out", str(tmp_path / "o.nc")] + argv)
    assert fragment in _one_error_line(capsys, status)


def test_output_path_errors(tmp_path, capsys):
    case = _write(tmp_path, TINY_OU)
    line = _one_error_line(capsys, main(["run", case, "--out", str(tmp_path / "nowhere" / "o.nc")]))
    assert "output path not writable" in line and "nowhere" in line
    line = _one_error_line(capsys, main(["run", case, "--out", str(tmp_path)]))
    assert "output path not writable" in line and "directory" in line
    (tmp_path / "exists.nc").write_bytes(b"")
    line = _one_error_line(capsys, main(["run", case, "--out", str(tmp_path / "exists.nc")]))
    assert "already exists" in line and "--overwrite" in line
    line = _one_error_line(capsys, main(["run", str(tmp_path / "missing.toml"), "--out", str(tmp_path / "o.nc")]))
    assert "config file not found" in line


def test_dimension_without_weights(tmp_path, capsys):
    discoformer = pytest.importorskip("particlescore.discoformer")
    available = tuple(discoformer.available_dims())
    dim = next(d for d in range(2, 64) if d not in available)
    status = main(["run", "--dim", str(dim), "--out", str(tmp_path / "o.nc")])
    line = _one_error_line(capsys, status)
    assert f"dim={dim}" in line and "available dims" in line
    for d in available:
        assert str(d) in line


def test_no_subcommand_prints_help(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "run" in out and "info" in out and "plot" in out


def test_info_and_plot_errors(tmp_path, capsys):
    line = _one_error_line(capsys, main(["info", str(tmp_path / "missing.nc")]))
    assert "not found" in line
    (tmp_path / "x.nc").write_text("not netcdf")
    assert "not a netCDF file" in _one_error_line(capsys, main(["plot", str(tmp_path / "x.nc")]))


# --------------------------------------------------------------------------- end to end
def test_run_info_plot_resume(tmp_path, capsys):
    pytest.importorskip("particlescore.solver")
    case = _write(tmp_path, TINY_OU)
    out = tmp_path / "ou.nc"
    assert main(["run", case, "--out", str(out), "--t-end", "0.7", "--no-progress"]) == 0
    summary = capsys.readouterr().out
    assert "wrote" in summary and "score_error" in summary and "wall time" in summary
    ds = open_trajectory(out)
    assert list(ds["step"].values) == [0, 2, 4]
    assert ds["position"].shape == (3, 40, 2) and "covariance_error" in ds

    # continue the same run to a later time: the records of the first part are kept
    assert main(["run", case, "--out", str(out), "--resume", "--no-progress"]) == 0
    capsys.readouterr()
    ds = open_trajectory(out)
    assert list(ds["step"].values) == [0, 2, 4, 6]
    assert ds["time"].values[-1] == pytest.approx(0.8)

    # resuming without the TOML file takes the configuration recorded in the trajectory
    assert main(["run", "--out", str(out), "--resume", "--t-end", "0.9", "--no-progress"]) == 0
    capsys.readouterr()
    assert list(open_trajectory(out)["step"].values) == [0, 2, 4, 6, 8]

    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    for fragment in ("position of 40 particles in dimension 2", "saved steps: 5 complete", "covariance (time, dim, dim2)",
                     "ornstein_uhlenbeck", "seed: 1", "KDE", "history", "resumed at step 4"):
        assert fragment in info, fragment

    figures = Path(os.environ.get("PARTICLESCORE_TEST_PLOTS", tmp_path))
    figures.mkdir(parents=True, exist_ok=True)
    figure = figures / "ou_kde_tiny.png"
    assert main(["plot", str(out), "-o", str(figure)]) == 0
    assert figure.stat().st_size > 10_000

    # the same file again needs --overwrite
    assert main(["run", case, "--out", str(out), "--no-progress"]) == 2
    assert main(["run", case, "--out", str(out), "--overwrite", "--no-progress", "--estimator", "blob"]) == 0
    assert open_trajectory(out).sizes["time"] == 4
