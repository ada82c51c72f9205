"""Run configurations (config.py) and the command line (cli.py): validation errors are one line
with exit status 2; run / info / plot end to end on a tiny case.

Doubles as a plotting script: set PARTICLESCORE_TEST_PLOTS=<dir> to keep the figures.
"""
import os
from pathlib import Path

import pytest

from particlescore import config as cfgmod
from particlescore import pic
from particlescore.cli import apply_overrides, main
from particlescore.trajectory import open_trajectory

SIMULATIONS = sorted(p for p in (Path(__file__).resolve().parents[1] / "particlescore" / "simulations").glob("*.toml")
                     if "\n[pic]" not in p.read_text())   # [pic] cases: particlescore.pic, tests/test_pic.py

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
    assert path.read_text().startswith("#")  # comment header says what it shows
    if "pic" in cfgmod.read_toml(path):      # a particle-in-cell case: particlescore.pic validates it
        pic.config_from_dict(cfgmod.read_toml(path)["pic"])
        return
    cfg = cfgmod.load_config(path)
    problem = cfgmod.build_problem(cfg)
    assert cfg.run.t_end > problem.t0
    assert problem.dim == cfg.problem.options.dim
    assert path.read_text().startswith("#")  # comment header says what it shows


def test_simulation_set_is_complete():
    names = {p.stem for p in SIMULATIONS}
    assert {"bkw_d2", "bkw_d3", "landau_maxwell_anisotropic", "landau_maxwell_anisotropic_d10",
            "landau_coulomb", "ornstein_uhlenbeck", "pure_diffusion", "moving_trap"} <= names


def test_default_config_and_round_trip():
    cfg = cfgmod.default_config()
    assert (cfg.problem.name, cfg.problem.options.dim, cfg.estimator.name) == ("landau_maxwell_anisotropic", 3, "discoformer")
    assert cfg.estimator.options.warm_start is True       # the case sets it; the constructor default is False
    assert (cfg.run.n, cfg.run.dt, cfg.run.t_end, cfg.run.save_every) == (500, 0.02, 4.0, 5)
    assert cfgmod.config_from_dict(cfgmod.config_to_dict(cfg)) == cfg


def _default_tables():
    return cfgmod.read_toml(cfgmod.DEFAULT_CASE)


def test_overrides_edit_the_tables_before_validation():
    data = apply_overrides(_default_tables(), ["run.n=64", "run.dt=0.02", "run.t_end=1", "run.seed=5", "problem.dim=2"],
                           estimator="kde")
    cfg = cfgmod.config_from_dict(data)
    assert (cfg.estimator.name, cfg.estimator.options.bandwidth) == ("kde", "scott")   # discoformer keys dropped
    assert (cfg.run.n, cfg.run.dt, cfg.run.t_end, cfg.run.seed, cfg.problem.options.dim) == (64, 0.02, 1.0, 5, 2)
    assert _default_tables()["run"]["n"] == 500                     # the parsed tables are not modified
    cfg = cfgmod.config_from_dict(apply_overrides(_default_tables(), ["estimator.adapt_steps=4"]))
    assert cfg.estimator.options.adapt_steps == 4
    with pytest.raises(ValueError, match="unknown key 'adapt_steps' in .estimator. for estimator 'kde'"):
        cfgmod.config_from_dict(apply_overrides(data, ["estimator.adapt_steps=2"]))
    with pytest.raises(ValueError, match=r"run.n: expected int, got str \('many'\)"):
        cfgmod.config_from_dict(apply_overrides(data, ["run.n=many"]))
    # a value is read as TOML: numbers, booleans, quoted strings; anything else is a bare string
    cfg = cfgmod.config_from_dict(apply_overrides(_default_tables(), [
        "estimator.warm_start=false", "estimator.proximal=0.5", "estimator.max_drift=2", "estimator.adapt_points=64",
        'run.device="cpu"', "run.integrator=euler"]))
    assert (cfg.estimator.options.warm_start, cfg.estimator.options.proximal, cfg.estimator.options.max_drift,
            cfg.estimator.options.adapt_points, cfg.run.integrator) == (False, 0.5, 2.0, 64, "euler")


def test_build_estimators(tmp_path):
    tables = cfgmod.read_toml(_write(tmp_path, TINY_OU))
    cfg = cfgmod.config_from_dict(tables)
    problem = cfgmod.build_problem(cfg)
    assert type(cfgmod.build_estimator(cfg, problem)).__name__ == "KDE"
    for name in ("blob", "exact", "sbtm"):
        est = cfgmod.build_estimator(cfgmod.config_from_dict(apply_overrides(tables, estimator=name)), problem)
        assert type(est).__name__.lower() == name
    sbtm_cfg = cfgmod.config_from_dict(apply_overrides(tables, estimator="sbtm"))
    sbtm = cfgmod.build_estimator(sbtm_cfg, problem)
    assert sbtm.initial_score is not None and sbtm.seed == cfg.run.seed == 1      # the run supplies both
    implicit = cfgmod.load_config(_write(tmp_path, TINY_OU.replace('name = "kde"\nbandwidth = "scott"',
                                                                  'name = "sbtm"\nloss = "implicit"\nhutchinson_probes = 3')))
    sbtm = cfgmod.build_estimator(implicit, problem)
    assert (sbtm.loss, sbtm.hutchinson_probes) == ("implicit", 3)
    bad_loss = cfgmod.config_from_dict(apply_overrides(tables, ["estimator.loss=score"], estimator="sbtm"))
    with pytest.raises(ValueError, match=r"\[estimator\] sbtm: loss must be one of 'denoising', 'implicit'"):
        cfgmod.build_estimator(bad_loss, problem)               # the value is checked once, by SBTM itself
    maxwell = cfgmod.config_from_dict(apply_overrides(_default_tables(), estimator="exact"))
    with pytest.raises(ValueError, match="has no exact solution"):
        cfgmod.build_estimator(maxwell, cfgmod.build_problem(maxwell))


# --------------------------------------------------------------------------- one-line errors
BAD_CONFIGS = {
    "unknown key": (TINY_OU.replace("seed = 1", "sed = 1"),
                    ["unknown key 'sed'", "allowed keys: n, dt, t_end, save_every, seed, device, threads, integrator"]),
    "unknown section": (TINY_OU + "[outputs]\npath = 'x'\n", ["unknown key 'outputs'", "problem, estimator, run, output"]),
    "unknown output key": (TINY_OU + "[output]\npath = 'x'\n", ["unknown key 'path' in [output]", "compress, precision"]),
    "key of another estimator": (TINY_OU.replace('bandwidth = "scott"', "adapt_steps = 2"),
                                 ["unknown key 'adapt_steps'", "for estimator 'kde'", "bandwidth, isotropic"]),
    "wrong type": (TINY_OU.replace("n = 40", 'n = "40"'), ["run.n: expected int, got str ('40')"]),
    "wrong float type": (TINY_OU.replace("dt = 0.05", "dt = true"), ["run.dt: expected float, got bool"]),
    "unknown estimator": (TINY_OU.replace('name = "kde"', 'name = "kdee"'),
                          ["unknown estimator.name 'kdee'; allowed: ", "kde", "blob", "exact", "discoformer", "sbtm"]),
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
    (["--estimator", "foo"], "unknown estimator.name 'foo'"),
    (["--n", "many"], "run.n: expected int, got str ('many')"),
    (["--adapt-steps", "3"], "unknown key 'adapt_steps' in [estimator] for estimator 'kde'"),
    (["--set", "estimator.bandwidth=-1"], "bandwidth must be a positive finite float"),
    (["--set", "estimator"], "--set expects section.key=value"),
    (["--estimator", "exact", "--dim", "3", "--t-end", "0.2"], "start time"),
    (["--resume", "--overwrite"], "not allowed with argument"),
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
    supported = discoformer.supported_dims()
    dim = max(supported) + 1
    status = main(["run", "--dim", str(dim), "--out", str(tmp_path / "o.nc")])
    line = _one_error_line(capsys, status)
    assert f"dim={dim}" in line and "supported dims" in line
    assert discoformer._describe_dims(supported) in line


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


def test_packaged_pic_case_runs_by_name_with_set_and_plots(tmp_path, capsys):
    # the [pic] hook: `particlescore run two_stream` hands the (edited) table to particlescore.pic
    out = tmp_path / "pic.nc"
    status = main(["run", "two_stream", "--set", "pic.n_particles=2000", "--set", "pic.t_end=0.3",
                   "--out", str(out)])
    assert status == 0, capsys.readouterr().err
    assert "PIC (case 'two_stream'): 2000 particles" in capsys.readouterr().out
    ds = open_trajectory(out)
    assert ds.sizes["particle"] == 2000 and ds["time"].values[-1] == pytest.approx(0.3)
    assert main(["plot", str(out), "-o", str(tmp_path / "pic.png")]) == 0     # the PIC figure
    assert (tmp_path / "pic.png").stat().st_size > 10_000
    line = _one_error_line(capsys, main(["run", "two_stream", "--n", "10", "--out", str(tmp_path / "x.nc")]))
    assert "--n do not apply to a [pic] configuration" in line and not (tmp_path / "x.nc").exists()


def test_warnings_print_as_one_line(tmp_path):
    """The up-front dt warning (issue 12.6) prints as one ``particlescore: warning:`` line, not as
    Python's two-line ``file:line: RuntimeWarning`` plus source code; a subprocess, because pytest
    records warnings instead of printing them."""
    import subprocess
    import sys

    case = _write(tmp_path, TINY_OU.replace("dt = 0.05", "dt = 5.0").replace("t_end = 0.8", "t_end = 10.0"))
    done = subprocess.run([sys.executable, "-m", "particlescore", "run", case, "--out", str(tmp_path / "o.nc"),
                           "--no-progress"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"})
    lines = done.stderr.strip().splitlines()
    warning = [line for line in lines if line.startswith("particlescore: warning")]
    assert len(warning) == 1 and warning[0].startswith("particlescore: warning: dt = 5 is 10 times the relaxation"), \
        done.stderr
    assert all(line.startswith("particlescore: ") for line in lines), done.stderr     # no source line, no path
    assert "RuntimeWarning" not in done.stderr and "cli.py" not in done.stderr
