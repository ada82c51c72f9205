"""Run configurations: TOML tables checked by one generic validator (docs/configuration.md).

``[problem]``/``[estimator]``: ``name`` (a registered component, :mod:`particlescore.registry`) and
the fields of its options dataclass; ``[run]``/``[output]``: :func:`~particlescore.solver.simulate`'s
keyword arguments (``t_end`` is absolute time) and ``integrator`` by name. Every default lives once,
in a signature. Unknown or missing keys and wrong types raise a ``ValueError`` naming the key;
values are checked by the component that uses them. Overrides edit the tables before validation.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass
from importlib import resources

from . import registry
from ._validation import check_type
from .solver import simulate

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

__all__ = ["RunConfig", "Component", "RunSettings", "OutputSettings", "validate_section", "read_toml", "load_config",
           "DEFAULT_CASE", "default_config", "config_from_dict", "config_to_dict", "build_problem", "build_estimator"]

DEFAULT_ESTIMATOR = "discoformer"
DEFAULT_CASE = resources.files("particlescore") / "default_case.toml"   # anisotropic Maxwell, d=3, DiScoFormer
_Run = registry.options_class(simulate, "_Run", include=("n", "dt", "t_end", "save_every", "seed", "device", "threads"))
OutputSettings = registry.options_class(simulate, "OutputSettings", include=("compress", "precision"))


@dataclass(frozen=True, kw_only=True)
class RunSettings(_Run):
    """[run]: simulate()'s particles, time stepping, cadence, seed, device, threads + the integrator."""
    integrator: str = "heun"


@dataclass(frozen=True)
class Component:
    """[problem] or [estimator]: a registered name and its options dataclass."""
    name: str
    options: object


@dataclass(frozen=True)
class RunConfig:
    """A validated configuration with every default filled in."""
    problem: Component
    estimator: Component
    run: RunSettings
    output: OutputSettings


def validate_section(table: dict, cls: type, where: str, context: str = "", skip=()):
    """The one validator: ``table``'s keys against ``dataclasses.fields(cls)``, types from its annotations."""
    fields, hints = {f.name: f for f in dataclasses.fields(cls)}, typing.get_type_hints(cls)
    for key in table:
        if key not in fields and key not in skip:
            raise ValueError(f"unknown key {key!r} in [{where}]{context}; allowed keys: {', '.join([*skip, *fields])}")
    values = {}
    for name, field in fields.items():
        if name in table:
            values[name] = check_type(table[name], hints[name], f"{where}.{name}")
        elif field.default is dataclasses.MISSING:
            raise ValueError(f"missing required key {where}.{name}{context}")
    return cls(**values)


def _component(kind: str, table: dict, default: str | None = None) -> Component:
    if (name := table.get("name", default)) is None:
        raise ValueError(f"missing required key {kind}.name; one of: {', '.join(registry.names(kind))}")
    entry = registry.resolve(kind, name)
    return Component(name, validate_section(table, entry.options, kind, f" for {kind} {name!r}", skip=("name",)))


def _table(data: dict, key: str, required: bool) -> dict:
    if not isinstance(value := data.get(key, None if required else {}), dict):
        raise ValueError(f"missing required section [{key}]" if value is None
                         else f"[{key}] must be a table (section), got {type(value).__name__} ({value!r})")
    return value


def config_from_dict(data: dict) -> RunConfig:
    """Validate a nested dict (as parsed from TOML) into a :class:`RunConfig`."""
    if not isinstance(data, dict):
        raise ValueError(f"a configuration must be a table of sections, got {type(data).__name__}")
    if unknown := [key for key in data if key not in ("problem", "estimator", "run", "output")]:
        raise ValueError(f"unknown key {unknown[0]!r} in the configuration (sections); allowed keys: problem, estimator, run, output")
    run = validate_section(_table(data, "run", True), RunSettings, "run")
    registry.resolve("integrator", run.integrator)                  # a known name (ValueError listing them)
    return RunConfig(problem=_component("problem", _table(data, "problem", True)),
                     estimator=_component("estimator", _table(data, "estimator", False), DEFAULT_ESTIMATOR),
                     run=run, output=validate_section(_table(data, "output", False), OutputSettings, "output"))


def config_to_dict(cfg: RunConfig) -> dict:
    """Nested plain dict of the resolved configuration (None omitted: TOML has none); TOML-ready."""
    def plain(obj, **first):
        return {**first, **{k: v for k, v in dataclasses.asdict(obj).items() if v is not None}}
    return {"problem": plain(cfg.problem.options, name=cfg.problem.name), "run": plain(cfg.run),
            "estimator": plain(cfg.estimator.options, name=cfg.estimator.name), "output": plain(cfg.output)}


def read_toml(path) -> dict:
    """The tables of a TOML file (ValueError naming the file when missing or malformed)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"config file not found: {path!r}")
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"config file {path!r} is not valid TOML: {err}") from err


def load_config(path) -> RunConfig:
    """Read and validate a TOML run configuration; errors name the file and the key."""
    data = read_toml(path)
    try:
        return config_from_dict(data)
    except ValueError as err:
        raise ValueError(f"config file {os.fspath(path)!r}: {err}") from err


def default_config() -> RunConfig:
    """The packaged default case (``particlescore run`` without a file)."""
    return load_config(DEFAULT_CASE)


def _create(kind: str, section: Component, **context):
    """The component of a validated section; its own value checks' errors name the section."""
    try:
        return registry.resolve(kind, section.name).create(section.options, **context)
    except ValueError as err:
        raise ValueError(f"[{kind}] {section.name}: {err}") from err


def build_problem(cfg: RunConfig):
    return _create("problem", cfg.problem)


def build_estimator(cfg: RunConfig, problem):
    return _create("estimator", cfg.estimator, problem=problem, seed=cfg.run.seed)


def build_integrator(cfg: RunConfig):
    return registry.create("integrator", cfg.run.integrator)
