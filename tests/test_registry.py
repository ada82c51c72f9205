"""The registry (issue 10.1): a new estimator is one class plus one ``register`` call and then works
from TOML and from the command line; every constructor option is a TOML key; one name per problem."""
import dataclasses
import math
import typing

import numpy as np
import pytest
import torch

import particlescore as ps
from particlescore import config as cfgmod
from particlescore import registry
from particlescore.cli import apply_overrides, main
from particlescore.trajectory import open_trajectory


class GaussianToy(ps.ScoreEstimator):
    """Toy estimator: the exact log-density and score of ``N(0, width² I)``, whatever the context."""

    def __init__(self, width: float = 1.0):
        self.width = float(width)

    def _evaluate(self, context, queries):
        w2 = self.width ** 2
        d = queries.shape[1]
        log_f = -0.5 * (queries * queries).sum(1) / w2 - 0.5 * d * math.log(2 * math.pi * w2)
        return log_f, -queries / w2


@pytest.fixture
def toy():
    registry.register("estimator", "gaussian_toy", GaussianToy)    # the one line a new estimator needs
    yield
    registry.unregister("estimator", "gaussian_toy")


OU = """\
[problem]
name = "ornstein_uhlenbeck"
dim = 2
[estimator]
name = "gaussian_toy"
{estimator_keys}
[run]
n = 30
dt = 0.1
t_end = 1.5
save_every = 5
seed = 3
"""


def _initial(n=30, dim=2, seed=3):
    problem = ps.OrnsteinUhlenbeck(dim)
    return problem.initial_state(n, generator=torch.Generator().manual_seed(seed)).numpy()


def test_toy_estimator_from_toml(toy, tmp_path, capsys):
    # OU: dx/dt = −x − s(x). With width 1 the toy's score is −x, so every particle stands still:
    # the last state equals the initial one exactly (Heun adds dt·0 terms).
    case = tmp_path / "toy.toml"
    case.write_text(OU.format(estimator_keys="width = 1.0"))
    assert main(["run", str(case), "--out", str(tmp_path / "toy.nc"), "--no-progress"]) == 0, capsys.readouterr().err
    ds = open_trajectory(tmp_path / "toy.nc")
    assert list(ds["step"].values) == [0, 5, 10]
    np.testing.assert_array_equal(ds["position"].values[-1], _initial())
    assert "GaussianToy" in str(ds.attrs["estimator"])


def test_toy_estimator_from_the_command_line(toy, tmp_path, capsys):
    # --estimator and --set reach the toy: width 2 gives s = −x/4, so dx/dt = −¾x, and Heun's step
    # multiplies x by 1 + a·dt + (a·dt)²/2 with a = −¾; 10 steps: (that factor)^10, to round-off
    # (1e-13 relative: ten float64 multiply-adds per coordinate).
    case = tmp_path / "kde.toml"
    case.write_text(OU.replace('name = "gaussian_toy"', 'name = "kde"').format(estimator_keys='bandwidth = "scott"'))
    out = tmp_path / "toy2.nc"
    status = main(["run", str(case), "--estimator", "gaussian_toy", "--set", "estimator.width=2",
                   "--t-end", "1.5", "--out", str(out), "--no-progress"])
    assert status == 0, capsys.readouterr().err
    a_dt = -0.75 * 0.1
    factor = (1 + a_dt + 0.5 * a_dt ** 2) ** 10
    np.testing.assert_allclose(open_trajectory(out)["position"].values[-1], factor * _initial(), rtol=1e-13, atol=0)
    # a misspelt option of the toy is named, with the toy's options listed
    status = main(["run", str(case), "--estimator", "gaussian_toy", "--set", "estimator.widht=2",
                   "--out", str(tmp_path / "x.nc")])
    err = capsys.readouterr().err
    assert status == 2 and "unknown key 'widht' in [estimator] for estimator 'gaussian_toy'; allowed keys: name, width" in err
    assert not (tmp_path / "x.nc").exists()


def test_toy_options_are_the_constructor_signature(toy):
    entry = registry.resolve("estimator", "gaussian_toy")
    (field,) = dataclasses.fields(entry.options)
    assert (field.name, field.type, field.default) == ("width", float, 1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.options().width = 3.0
    with pytest.raises(TypeError):                       # keyword-only
        entry.options(2.0)
    assert registry.create("estimator", "gaussian_toy", {"width": 0.5}).width == 0.5


def test_register_refuses_ambiguity():
    with pytest.raises(ValueError, match="already registered"):
        registry.register("estimator", "kde", GaussianToy)
    with pytest.raises(ValueError, match="unknown component kind"):
        registry.register("estimators", "toy", GaussianToy)

    class Swallows(ps.ScoreEstimator):
        def __init__(self, **options):
            pass
    with pytest.raises(ValueError, match="cannot be listed"):
        registry.register("estimator", "swallows", Swallows)
    assert "swallows" not in registry.names("estimator")


def test_every_discoformer_option_reaches_the_estimator():
    pytest.importorskip("particlescore.discoformer")
    tables = cfgmod.read_toml(cfgmod.DEFAULT_CASE)
    settings = {"adapt_steps": 2, "adapt_lr": 0.002, "warm_start": False, "proximal": 0.25, "max_drift": 0.75,
                "adapt_points": 64, "warm_iters": 1, "refit_every": 7, "search_patience": 0, "max_context": 512,
                "max_pairs": 2 ** 20, "bank_growth": 0.5, "moment_projection": True, "adapt_holdout": 32}
    names = {f.name for f in dataclasses.fields(registry.resolve("estimator", "discoformer").options)}
    assert names == set(settings)                        # every constructor option is a TOML key
    cfg = cfgmod.config_from_dict(apply_overrides(tables, [f"estimator.{k}={str(v).lower()}" for k, v in settings.items()]))
    est = cfgmod.build_estimator(cfg, cfgmod.build_problem(cfg))
    assert {key: getattr(est, key) for key in settings} == settings
    assert est.sha256 is not None                        # the shipped, checksum-verified weights


def test_warm_start_has_one_default():
    # the constructor's default is the TOML default; the packaged default case opts in explicitly
    pytest.importorskip("particlescore.discoformer")
    assert registry.resolve("estimator", "discoformer").options().warm_start is False
    cfg = cfgmod.config_from_dict({"problem": {"name": "bkw", "dim": 2}, "run": {"n": 10, "dt": 0.1, "t_end": 9.0}})
    assert cfg.estimator.name == "discoformer" and cfg.estimator.options.warm_start is False
    assert cfgmod.default_config().estimator.options.warm_start is True


@pytest.mark.parametrize("name", registry.names("problem"))
def test_each_problem_has_one_name(name):
    entry = registry.resolve("problem", name)
    required = {f.name: 2 for f in dataclasses.fields(entry.options) if f.default is dataclasses.MISSING}
    problem = entry.create(required)
    assert problem.name == name == problem.config()["problem"]
    rebuilt = ps.problem_from_config(problem.config())
    assert type(rebuilt) is type(problem) and rebuilt.config() == problem.config()
    # a file written before the names were unified records the class name: still readable
    legacy = dict(problem.config(), problem=type(problem).__name__)
    assert ps.problem_from_config(legacy).config() == problem.config()


def test_problem_and_physics_options_reach_the_objects():
    cfg = cfgmod.config_from_dict({"problem": {"name": "landau_coulomb", "regularization": 0.01,
                                               "random_batch_size": 10, "B": 1},
                                   "estimator": {"name": "kde"}, "run": {"n": 20, "dt": 0.1, "t_end": 1.0}})
    problem = cfgmod.build_problem(cfg)
    assert (problem.dim, problem.B, problem.physics.regularization, problem.physics.random_batch_size) == (3, 1.0, 0.01, 10)
    landau = registry.create("physics", "landau", {"gamma": -3.0})
    assert (landau.gamma, landau.B) == (-3.0, 1.0 / 24.0)
    assert isinstance(registry.create("integrator", "euler"), ps.Euler)


def test_one_validation_module():
    from particlescore._validation import check_float, check_int, check_type
    assert check_int("n", np.int64(3), minimum=2) == 3 and check_float("B", 1, positive=True) == 1.0
    for bad in (lambda: check_int("n", True), lambda: check_int("n", 1, minimum=2), lambda: check_int("n", 2.0),
                lambda: check_float("B", 0.0, positive=True), lambda: check_float("r", -1e-9, minimum=0.0),
                lambda: check_float("x", float("nan")), lambda: check_float("x", "1")):
        with pytest.raises(ValueError):
            bad()
    assert check_type(2, float, "run.dt") == 2.0 and isinstance(check_type(2, float, "run.dt"), float)
    assert check_type("scott", str | float, "estimator.bandwidth") == "scott"
    assert check_type(7, int | None, "run.threads") == 7
    with pytest.raises(ValueError, match=r"run.threads: expected int, got float \(1.5\)"):
        check_type(1.5, int | None, "run.threads")
    with pytest.raises(ValueError, match="expected bool, got int"):
        check_type(1, bool, "estimator.warm_start")
    with pytest.raises(ValueError, match="cannot be set from a configuration"):
        check_type(1.0, typing.Callable, "physics.drift")
