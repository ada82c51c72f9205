"""Run configurations: TOML files with strict validation (DESIGN §7).

A configuration has three sections::

    [problem]                      # which equation and initial data
    name = "landau_maxwell_anisotropic"
    dim = 3
    [estimator]                    # which score estimator
    name = "discoformer"
    adapt_steps = 0
    [run]                          # time stepping and output cadence
    n = 500
    dt = 0.01
    t_end = 4.0
    save_every = 10
    seed = 0
    integrator = "heun"

Every key is checked: unknown sections or keys, wrong types and unknown names raise a
``ValueError`` that names the key and lists what is allowed. Keys that only make sense for one
problem or estimator (``B``, ``t0``, ``adapt_steps``, ``bandwidth``…) are accepted only there.
The validated :class:`RunConfig` holds resolved values (defaults filled in), so
:func:`config_to_dict` records exactly what ran.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from importlib import resources

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

__all__ = [
    "RunConfig", "ProblemConfig", "EstimatorConfig", "RunSettings",
    "PROBLEM_NAMES", "ESTIMATOR_NAMES", "INTEGRATOR_NAMES",
    "load_config", "default_config", "config_from_dict", "config_to_dict", "apply_overrides",
    "build_problem", "build_estimator", "build_integrator",
]

PROBLEM_NAMES = ("bkw", "landau_maxwell_anisotropic", "landau_coulomb",
                 "ornstein_uhlenbeck", "pure_diffusion", "moving_trap")
ESTIMATOR_NAMES = ("discoformer", "kde", "blob", "exact", "sbtm")
INTEGRATOR_NAMES = ("euler", "heun")
SECTIONS = ("problem", "estimator", "run")

#: Keys each problem accepts in [problem] (besides ``name``).
PROBLEM_KEYS = {
    "bkw": ("dim", "B"),
    "landau_maxwell_anisotropic": ("dim", "B", "initial"),
    "landau_coulomb": ("dim", "B", "initial"),
    "ornstein_uhlenbeck": ("dim", "t0"),
    "pure_diffusion": ("dim", "D", "t0"),
    "moving_trap": ("dim", "a", "w", "alpha", "D", "initial_variance"),
}
#: Keys each estimator accepts in [estimator] (besides ``name``).
ESTIMATOR_KEYS = {
    "discoformer": ("adapt_steps", "adapt_lr", "warm_start"),
    "kde": ("bandwidth",),
    "blob": ("eps",),
    "exact": (),
    "sbtm": ("hidden", "layers", "steps_per_call", "lr", "initial_fit_steps", "loss", "hutchinson_probes"),
}
RUN_KEYS = ("n", "dt", "t_end", "save_every", "seed", "integrator", "device", "threads")
#: SBTM training losses (= ``particlescore.sbtm.LOSSES``; spelled out so this module needs no torch).
SBTM_LOSSES = ("denoising", "implicit")

#: Landau collision constant (DESIGN §4) and Fokker–Planck start time (DESIGN §5).
DEFAULT_B = 1.0 / 24.0
DEFAULT_T0 = 0.5
DEFAULT_D = 1.0


@dataclass(frozen=True)
class ProblemConfig:
    """[problem]: the equation and its initial data; keys a problem does not use are None."""
    name: str
    dim: int
    B: float | None = None
    initial: str | None = None
    t0: float | None = None
    D: float | None = None
    a: float | None = None
    w: float | None = None
    alpha: float | None = None
    initial_variance: float | None = None


@dataclass(frozen=True)
class EstimatorConfig:
    """[estimator]: the score estimator; keys the estimator does not use are None."""
    name: str = "discoformer"
    adapt_steps: int | None = None
    adapt_lr: float | None = None
    warm_start: bool | None = None
    bandwidth: str | float | None = None
    eps: float | None = None
    hidden: int | None = None
    layers: int | None = None
    steps_per_call: int | None = None
    lr: float | None = None
    initial_fit_steps: int | None = None
    loss: str | None = None
    hutchinson_probes: int | None = None


@dataclass(frozen=True)
class RunSettings:
    """[run]: particles, time stepping, output cadence, randomness."""
    n: int
    dt: float
    t_end: float
    save_every: int = 1
    seed: int = 0
    integrator: str = "heun"
    device: str = "cpu"                 # "cpu" | "cuda" | "cuda:N" (particlescore.runtime.resolve_device)
    threads: int | None = None          # None: particlescore.runtime.default_threads(n)


@dataclass(frozen=True)
class RunConfig:
    """A validated, resolved run configuration."""
    problem: ProblemConfig
    estimator: EstimatorConfig
    run: RunSettings


# --------------------------------------------------------------------------- value checks
def _describe(value) -> str:
    return f"{type(value).__name__} ({value!r})"


def _check_keys(table: dict, allowed, where: str) -> None:
    for key in table:
        if key not in allowed:
            raise ValueError(f"unknown key {key!r} in {where}; allowed keys: {', '.join(allowed)}")


def _get_int(table: dict, key: str, where: str, default=None, minimum: int | None = None):
    value = table.get(key, default)
    if value is None:
        raise ValueError(f"missing required key {where}.{key} (an integer)")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}.{key}: expected int, got {_describe(value)}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{where}.{key}: must be >= {minimum}, got {value}")
    return value


def _get_float(table: dict, key: str, where: str, default=None, positive: bool = False):
    value = table.get(key, default)
    if value is None:
        raise ValueError(f"missing required key {where}.{key} (a number)")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}.{key}: expected float, got {_describe(value)}")
    value = float(value)
    if not math.isfinite(value) or (positive and value <= 0):
        raise ValueError(f"{where}.{key}: must be a {'positive ' if positive else ''}finite number, got {value!r}")
    return value


def _get_bool(table: dict, key: str, where: str, default: bool) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"{where}.{key}: expected bool, got {_describe(value)}")
    return value


def _get_choice(table: dict, key: str, where: str, choices, default=None) -> str:
    value = table.get(key, default)
    if value is None:
        raise ValueError(f"missing required key {where}.{key}; one of: {', '.join(choices)}")
    if not isinstance(value, str):
        raise ValueError(f"{where}.{key}: expected str, got {_describe(value)}")
    if value not in choices:
        raise ValueError(f"unknown {where}.{key} {value!r}; allowed: {', '.join(choices)}")
    return value


def _get_table(data: dict, key: str, required: bool) -> dict:
    value = data.get(key)
    if value is None:
        if required:
            raise ValueError(f"missing required section [{key}]")
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"[{key}] must be a table (section), got {_describe(value)}")
    return value


# --------------------------------------------------------------------------- sections
def _problem_section(table: dict) -> ProblemConfig:
    name = _get_choice(table, "name", "problem", PROBLEM_NAMES)
    keys = PROBLEM_KEYS[name]
    _check_keys(table, ("name",) + keys, f"[problem] for problem {name!r}")
    if name == "moving_trap":
        dim = _get_int(table, "dim", "problem", default=2)
        if dim != 2:
            raise ValueError(f"problem.dim: the moving_trap problem is two-dimensional, got dim = {dim}")
        return ProblemConfig(name=name, dim=dim,
                             a=_get_float(table, "a", "problem", 2.0),
                             w=_get_float(table, "w", "problem", 1.0),
                             alpha=_get_float(table, "alpha", "problem", 0.5),
                             D=_get_float(table, "D", "problem", 0.25, positive=True),
                             initial_variance=_get_float(table, "initial_variance", "problem", 0.25, positive=True))
    if name == "landau_coulomb":
        dim = _get_int(table, "dim", "problem", default=3, minimum=2)
    elif name in ("bkw", "landau_maxwell_anisotropic"):
        dim = _get_int(table, "dim", "problem", minimum=2)
    else:
        dim = _get_int(table, "dim", "problem", minimum=1)
    return ProblemConfig(
        name=name, dim=dim,
        B=_get_float(table, "B", "problem", DEFAULT_B, positive=True) if "B" in keys else None,
        initial=_get_choice(table, "initial", "problem", ("gaussian", "mixture"), "gaussian") if "initial" in keys else None,
        t0=_get_float(table, "t0", "problem", DEFAULT_T0, positive=True) if "t0" in keys else None,
        D=_get_float(table, "D", "problem", DEFAULT_D, positive=True) if "D" in keys else None,
    )


def _bandwidth(table: dict) -> str | float:
    value = table.get("bandwidth", "scott")
    if isinstance(value, str):
        return _get_choice(table, "bandwidth", "estimator", ("scott", "silverman"), "scott")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"estimator.bandwidth: expected 'scott', 'silverman' or a positive float, "
                         f"got {_describe(value)}")
    return _get_float(table, "bandwidth", "estimator", positive=True)


def _estimator_section(table: dict) -> EstimatorConfig:
    name = _get_choice(table, "name", "estimator", ESTIMATOR_NAMES, "discoformer")
    _check_keys(table, ("name",) + ESTIMATOR_KEYS[name], f"[estimator] for estimator {name!r}")
    if name == "discoformer":
        return EstimatorConfig(name=name, adapt_steps=_get_int(table, "adapt_steps", "estimator", 0, minimum=0),
                               adapt_lr=_get_float(table, "adapt_lr", "estimator", 1e-3, positive=True),
                               warm_start=_get_bool(table, "warm_start", "estimator", True))
    if name == "kde":
        return EstimatorConfig(name=name, bandwidth=_bandwidth(table))
    if name == "blob":
        eps = _get_float(table, "eps", "estimator", positive=True) if "eps" in table else None
        return EstimatorConfig(name=name, eps=eps)
    if name == "sbtm":
        return EstimatorConfig(
            name=name,
            hidden=_get_int(table, "hidden", "estimator", 64, minimum=1),
            layers=_get_int(table, "layers", "estimator", 2, minimum=1),
            steps_per_call=_get_int(table, "steps_per_call", "estimator", 25, minimum=0),
            lr=_get_float(table, "lr", "estimator", 1e-3, positive=True),
            initial_fit_steps=_get_int(table, "initial_fit_steps", "estimator", 500, minimum=0),
            loss=_get_choice(table, "loss", "estimator", SBTM_LOSSES, "denoising"),
            hutchinson_probes=_get_int(table, "hutchinson_probes", "estimator", 0, minimum=0))
    return EstimatorConfig(name=name)


def _get_device(table: dict) -> str:
    """[run] device: "cpu", "cuda" or "cuda:N" (whether a GPU is there is checked when the run starts)."""
    value = table.get("device", "cpu")
    if not isinstance(value, str):
        raise ValueError(f"run.device: expected str, got {_describe(value)}")
    kind, _, index = value.partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind != "cuda" or not index.isdigit())):
        raise ValueError(f"unknown run.device {value!r}; allowed: cpu, cuda, cuda:N")
    return value


def _run_section(table: dict) -> RunSettings:
    _check_keys(table, RUN_KEYS, "[run]")
    settings = RunSettings(
        n=_get_int(table, "n", "run", minimum=2),
        dt=_get_float(table, "dt", "run", positive=True),
        t_end=_get_float(table, "t_end", "run", positive=True),
        save_every=_get_int(table, "save_every", "run", 1, minimum=1),
        seed=_get_int(table, "seed", "run", 0, minimum=0),
        integrator=_get_choice(table, "integrator", "run", INTEGRATOR_NAMES, "heun"),
        device=_get_device(table),
        threads=None if table.get("threads") is None else _get_int(table, "threads", "run", minimum=1),
    )
    if settings.t_end < settings.dt:
        raise ValueError(f"run.t_end ({settings.t_end}) is shorter than one time step run.dt ({settings.dt})")
    return settings


# --------------------------------------------------------------------------- public API
def config_from_dict(data: dict) -> RunConfig:
    """Validate a nested dict (as parsed from TOML) into a :class:`RunConfig`."""
    if not isinstance(data, dict):
        raise ValueError(f"a configuration must be a table of sections, got {_describe(data)}")
    _check_keys(data, SECTIONS, "the configuration (sections)")
    return RunConfig(
        problem=_problem_section(_get_table(data, "problem", required=True)),
        estimator=_estimator_section(_get_table(data, "estimator", required=False)),
        run=_run_section(_get_table(data, "run", required=True)),
    )


def load_config(path) -> RunConfig:
    """Read and validate a TOML run configuration; errors name the file and the key."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"config file not found: {path!r}")
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"config file {path!r} is not valid TOML: {err}") from err
    try:
        return config_from_dict(data)
    except ValueError as err:
        raise ValueError(f"config file {path!r}: {err}") from err


def default_config() -> RunConfig:
    """The packaged default case (``default_case.toml``: anisotropic Maxwell, d=3, DiScoFormer)."""
    text = resources.files("particlescore").joinpath("default_case.toml").read_text(encoding="utf-8")
    return config_from_dict(tomllib.loads(text))


def config_to_dict(cfg: RunConfig) -> dict:
    """Nested plain dict of the resolved configuration (None entries omitted); TOML/JSON-ready."""
    return {
        section.name: {key: value for key, value in dataclasses.asdict(getattr(cfg, section.name)).items()
                       if value is not None}
        for section in dataclasses.fields(cfg)
    }


def apply_overrides(cfg: RunConfig, *, estimator: str | None = None, dim: int | None = None,
                    n: int | None = None, dt: float | None = None, t_end: float | None = None,
                    seed: int | None = None, adapt_steps: int | None = None) -> RunConfig:
    """A new validated config with command-line overrides applied (None = keep).

    Changing the estimator drops the old estimator's own keys (they do not apply to the new
    one); ``adapt_steps`` applies to the discoformer estimator only.
    """
    data = config_to_dict(cfg)
    if estimator is not None and estimator != data["estimator"]["name"]:
        data["estimator"] = {"name": estimator}
    if adapt_steps is not None:
        if data["estimator"]["name"] != "discoformer":
            raise ValueError(f"adapt_steps (--adapt-steps) applies only to the discoformer estimator, "
                             f"not {data['estimator']['name']!r}")
        data["estimator"]["adapt_steps"] = adapt_steps
    if dim is not None:
        data["problem"]["dim"] = dim
    for key, value in (("n", n), ("dt", dt), ("t_end", t_end), ("seed", seed)):
        if value is not None:
            data["run"][key] = value
    return config_from_dict(data)


def build_problem(cfg: RunConfig):
    """The problem object named in [problem] (explicit name -> class mapping)."""
    from . import problems

    p = cfg.problem
    if p.name == "bkw":
        return problems.BKWProblem(p.dim, B=p.B)
    if p.name == "landau_maxwell_anisotropic":
        return problems.AnisotropicMaxwell(p.dim, B=p.B, initial=p.initial)
    if p.name == "landau_coulomb":
        return problems.CoulombRelaxation(dim=p.dim, B=p.B, initial=p.initial)
    if p.name == "ornstein_uhlenbeck":
        return problems.OrnsteinUhlenbeck(p.dim, t0=p.t0)
    if p.name == "pure_diffusion":
        return problems.PureDiffusion(p.dim, D=p.D, t0=p.t0)
    if p.name == "moving_trap":
        return problems.MovingTrap(a=p.a, w=p.w, alpha=p.alpha, D=p.D, initial_variance=p.initial_variance)
    raise ValueError(f"unknown problem {p.name!r}; allowed: {', '.join(PROBLEM_NAMES)}")


def build_estimator(cfg: RunConfig, problem):
    """The score estimator named in [estimator], set up for ``problem`` (explicit mapping).

    discoformer: the shipped weights for the problem's dimension (ValueError listing the
    available dimensions otherwise), warm-started between steps; exact: the problem's exact
    solution (ValueError when it has none); sbtm: a per-simulation network fitted first to the
    exact initial score, seeded with run.seed.
    """
    from . import estimators

    e = cfg.estimator
    if e.name == "discoformer":
        try:
            from .discoformer import DiScoFormer
        except ImportError as err:
            raise ValueError(f"the discoformer estimator is not available in this installation ({err})") from err
        return DiScoFormer.pretrained(dim=problem.dim, adapt_steps=e.adapt_steps, adapt_lr=e.adapt_lr,
                                      warm_start=e.warm_start)
    if e.name == "kde":
        return estimators.KDE(bandwidth=e.bandwidth)
    if e.name == "blob":
        return estimators.Blob(eps=e.eps)
    if e.name == "exact":
        return estimators.Exact(_exact_solution(cfg, problem))
    if e.name == "sbtm":
        from .sbtm import SBTM
        return SBTM(hidden=e.hidden, layers=e.layers, steps_per_call=e.steps_per_call, lr=e.lr,
                    initial_score=_initial_score(problem), initial_fit_steps=e.initial_fit_steps,
                    loss=e.loss, hutchinson_probes=e.hutchinson_probes, seed=cfg.run.seed)
    raise ValueError(f"unknown estimator {e.name!r}; allowed: {', '.join(ESTIMATOR_NAMES)}")


def _exact_solution(cfg: RunConfig, problem):
    solution = getattr(problem, "exact_distribution", None)
    if solution is None or (callable(solution) and not hasattr(solution, "score") and _probe_none(solution, problem)):
        raise ValueError(f"problem {cfg.problem.name!r} has no exact solution, so the 'exact' estimator "
                         f"cannot be used; choose one of: discoformer, kde, blob, sbtm")
    return solution


def _probe_none(family, problem) -> bool:
    """True when the time-dependent exact solution ``family(t)`` is None at the start time."""
    return family(float(getattr(problem, "t0", 0.0))) is None


def _initial_score(problem):
    """The exact score of the initial law (a callable ``x -> ∇log f0(x)``), or None if unknown."""
    try:
        return problem.initial_distribution().score
    except NotImplementedError:
        return None


def build_integrator(cfg: RunConfig):
    """The time integrator named in run.integrator."""
    from . import solver

    if cfg.run.integrator == "euler":
        return solver.Euler()
    if cfg.run.integrator == "heun":
        return solver.Heun()
    raise ValueError(f"unknown run.integrator {cfg.run.integrator!r}; allowed: {', '.join(INTEGRATOR_NAMES)}")
