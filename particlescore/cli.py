"""Command line: ``particlescore run | info | plot | example`` (a thin layer over the library).

``run`` reads the TOML tables (a file, a packaged case by name, the file being resumed, or the
packaged default), applies the overrides to the tables, validates them once
(:mod:`particlescore.config`), builds the components through :mod:`particlescore.registry` and
calls :func:`particlescore.simulate`, which owns every check on the output file, resume and
overwrite. ``info`` and ``plot`` call :mod:`particlescore.plotting`. Errors print one line
``particlescore: error: <message>`` on stderr; the exit status is 2 for invalid input, 1 for a
failure during the run, 130 when interrupted. A file with a top-level ``[pic]`` table is a plasma
particle-in-cell case: ``run`` hands it to :func:`particlescore.pic.run_from_config`.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing
import time as _time
import warnings
from importlib import resources

from . import config as _config
from . import distributed, pic, pic_plots, registry
from ._version import __version__
from .plotting import describe_trajectory, plot_trajectory, summarize_run
from .solver import simulate
from .trajectory import check_output_path, open_trajectory, recorded_run_config

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

__all__ = ["main", "build_parser", "packaged_cases", "apply_overrides"]

PROG = "particlescore"
CASES = resources.files("particlescore") / "simulations"   # packaged run configurations (installed)
#: shorthand flags: --n 64 is --set run.n=64
SHORTHANDS = {"dim": "problem.dim", "n": "run.n", "dt": "run.dt", "t_end": "run.t_end", "seed": "run.seed",
              "adapt_steps": "estimator.adapt_steps", "device": "run.device", "threads": "run.threads"}


class UsageError(Exception):
    """Invalid command-line input (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors become one line (raised, printed by :func:`main`)."""

    def error(self, message):
        raise UsageError(message)


def packaged_cases() -> dict[str, str]:
    """``{name: first comment line}`` of the run configurations installed with the package."""
    cases = {}
    for entry in sorted(CASES.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            first = entry.read_text(encoding="utf-8").splitlines()[0]
            cases[entry.name[:-5]] = first.lstrip("# ").strip()
    return cases


# --------------------------------------------------------------------------- parser
def _epilog() -> str:
    cases = "\n".join(f"  {name:38s} {line}" for name, line in packaged_cases().items())
    return f"""examples:
  {PROG} run                                    the default case (anisotropic Maxwell, d=3, DiScoFormer) -> run.nc
  {PROG} run bkw_d2 --out bkw.nc                a packaged case, by name
  {PROG} run case.toml --estimator kde --n 1000 --set estimator.bandwidth=0.3 --out kde.nc
  {PROG} run --out run.nc --resume              continue an interrupted run (or extend it: --t-end 8)
  {PROG} example moving_trap                    copy a packaged case to moving_trap.toml to edit it
  {PROG} options                                every configuration key with its type and default
  {PROG} info run.nc | head                     what a file holds, how it was made, its size
  {PROG} plot run.nc -o run.png                 covariance, energy drift, entropy, snapshots

problems:   {', '.join(registry.names('problem'))}
estimators: {', '.join(registry.names('estimator'))}
integrators: {', '.join(registry.names('integrator'))}
Every option of a problem or estimator is its constructor's keyword argument: set it in the TOML
file or with --set section.key=value (e.g. --set estimator.warm_start=true --set problem.B=0.0625).
t_end is absolute time: BKW starts at its own t0 > 0, the Fokker-Planck problems at t0 = 0.5.

packaged cases ({PROG} run NAME, {PROG} example NAME):
{cases}"""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Score-based particle simulations of kinetic equations.",
                     epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="run a simulation (a TOML file, a packaged case, or the default case)",
                              description="Run a simulation; options override the configuration. Without CONFIG "
                                          "the packaged default case runs (anisotropic Maxwell relaxation, d=3, "
                                          "DiScoFormer).", epilog=_epilog(),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("config", nargs="?", metavar="CONFIG", help="a TOML file or a packaged case name")
    run.add_argument("--out", default="run.nc", metavar="FILE", help="trajectory file to write (default: run.nc)")
    run.add_argument("--set", action="append", default=[], dest="settings", metavar="SECTION.KEY=VALUE",
                     help="set any configuration key, e.g. estimator.adapt_steps=2 (repeatable; VALUE is TOML)")
    run.add_argument("--estimator", metavar="NAME", help="score estimator (drops the file's estimator options)")
    for flag, metavar, text in (("--dim", "D", "dimension"), ("--n", "N", "number of particles"),
                                ("--dt", "DT", "time step"), ("--t-end", "T", "final time (absolute)"),
                                ("--seed", "S", "random seed"),
                                ("--adapt-steps", "K", "DiScoFormer test-time adaptation steps per call"),
                                ("--threads", "K", "torch and numba threads (default: particlescore.runtime's rule)"),
                                ("--device", "DEVICE", "cpu | cuda | cuda:N")):
        key = flag[2:].replace("-", "_")
        run.add_argument(flag, dest=key, metavar=metavar, help=f"{text} (= --set {SHORTHANDS[key]}=...)")
    once = run.add_mutually_exclusive_group()
    once.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    once.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    run.add_argument("--no-progress", action="store_true", dest="no_progress", help="no progress bar")

    info = commands.add_parser("info", help="describe a trajectory file")
    info.add_argument("file", metavar="FILE")

    plot = commands.add_parser("plot", help="plot a trajectory file")
    plot.add_argument("file", metavar="FILE")
    plot.add_argument("-o", "--output", metavar="FIG.png", help="figure file (default: FILE with .png)")

    commands.add_parser("options", help="every TOML key: each component's options with types and defaults")

    example = commands.add_parser("example", help="copy a packaged case's TOML file out (no NAME: list them)")
    example.add_argument("name", nargs="?", metavar="NAME")
    example.add_argument("-o", "--output", metavar="FILE.toml", help="where to write it (default: NAME.toml)")
    return parser


def main(argv=None) -> int:
    """Entry point of the ``particlescore`` console script; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as err:
        return _fail(str(err), 2)
    except SystemExit as exit_:  # --help / --version
        return int(exit_.code or 0)
    formatwarning = warnings.formatwarning
    warnings.formatwarning = _one_line_warning   # warnings print as one line, as errors do
    try:
        if args.command is None:
            parser.print_help()
            status = 0
        else:
            status = {"run": _cmd_run, "info": _cmd_info, "plot": _cmd_plot, "example": _cmd_example,
                      "options": _cmd_options}[args.command](args)
        sys.stdout.flush()   # a closed pipe shows here, inside the handler below, not at exit
        return status
    except (UsageError, ValueError) as err:
        return _fail(str(err), 2)
    except BrokenPipeError:  # `particlescore info f | head`: the reader left; stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # and no error at exit's flush
        return 141
    except OSError as err:
        return _fail(str(err), 1)
    finally:
        warnings.formatwarning = formatwarning


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """``particlescore: warning: <message>`` on one line (no source file, line or code)."""
    return f"{PROG}: warning: {' '.join(str(message).split())}\n"


def _fail(message: str, status: int) -> int:
    line = " ".join(str(message).split())  # one line, whatever the message holds
    print(f"{PROG}: error: {line}", file=sys.stderr)
    return status


# --------------------------------------------------------------------------- run
def _value(text: str):
    """A command-line value read as a TOML value (``3``, ``0.5``, ``true``, ``"x"``), else the bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: dict, settings=(), *, estimator: str | None = None) -> dict:
    """A copy of the parsed tables ``data`` with ``estimator`` (a new name drops the old
    estimator's options) and each ``"section.key=value"`` of ``settings`` applied (not validated)."""
    data = {key: dict(value) if isinstance(value, dict) else value for key, value in data.items()}
    if estimator is not None and estimator != data.get("estimator", {}).get("name", _config.DEFAULT_ESTIMATOR):
        data["estimator"] = {"name": estimator}
    for setting in settings:
        key, sep, text = setting.partition("=")
        section, dot, name = key.strip().partition(".")
        if not (sep and dot and section and name):
            raise UsageError(f"--set expects section.key=value (e.g. estimator.adapt_steps=2), got {setting!r}")
        if not isinstance(data.setdefault(section, {}), dict):
            raise UsageError(f"--set {setting!r}: {section!r} is not a section")
        data[section][name] = _value(text.strip())
    return data


def _tables(args) -> tuple[dict, str]:
    """The TOML tables to run and where they came from."""
    if args.config is not None:
        name = args.config[:-5] if args.config.endswith(".toml") else args.config
        cases = packaged_cases()
        if os.path.isfile(args.config) or os.sep in args.config or name not in cases:
            if not os.path.isfile(args.config):
                raise ValueError(f"config file not found: {args.config!r}, and no packaged case has that name; "
                                 f"packaged cases: {', '.join(cases)}")
            return _config.read_toml(args.config), f"config file {args.config!r}"
        return tomllib.loads((CASES / f"{name}.toml").read_text(encoding="utf-8")), f"case {name!r}"
    if args.resume:
        recorded = recorded_run_config(args.out)
        if recorded is None:
            raise ValueError(f"{args.out!r} records no run configuration; pass the CONFIG.toml to resume")
        return recorded, f"the configuration recorded in {args.out!r}"
    return _config.read_toml(_config.DEFAULT_CASE), "the default case"


def _cmd_run_pic(args, data: dict, out: str, source: str) -> int:
    """A plasma particle-in-cell case (a top-level [pic] table): :func:`particlescore.pic.run_from_config`;
    ``--set pic.key=value`` edits the table, the particle-run shorthands do not apply."""
    unused = [f"--{key.replace('_', '-')}" for key in SHORTHANDS if key != "device" and getattr(args, key) is not None]
    if args.estimator or unused:
        raise ValueError(f"{source}: {', '.join(unused + ['--estimator'] * bool(args.estimator))} do not apply to "
                         f"a [pic] configuration; use --set pic.KEY=VALUE or edit the file")
    data = apply_overrides(data, args.settings)
    try:
        result = pic.run_from_config(data, out, overwrite=args.overwrite, resume=args.resume,
                                     device=args.device or "cpu")
    except KeyboardInterrupt:
        return _fail(f"interrupted; continue with `{PROG} run ... --out {out} --resume`", 130)
    except ValueError as err:
        return _fail(f"{source}: {err}", 2)
    cfg = result.config
    print(f"PIC ({source}): {cfg.n_particles} particles, {cfg.n_cells} cells, d_v = {cfg.dim}, dt = {cfg.dt}, "
          f"t_end = {cfg.t_end}: {result.wall_time:.1f} s -> {out}")
    return 0


def _cmd_run(args) -> int:
    out = check_output_path(args.out, overwrite=args.overwrite, resume=args.resume)   # early, cheap
    data, source = _tables(args)
    if "pic" in data:   # a 1D-x particle-in-cell run (particlescore.pic, issue 11)
        return _cmd_run_pic(args, data, out, source)
    settings = [f"{SHORTHANDS[key]}={getattr(args, key)}" for key in SHORTHANDS if getattr(args, key) is not None]
    data = apply_overrides(data, [*args.settings, *settings], estimator=args.estimator)
    try:
        cfg = _config.config_from_dict(data)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from err
    problem = _config.build_problem(cfg)
    estimator = _config.build_estimator(cfg, problem)
    integrator = _config.build_integrator(cfg)
    start = _time.perf_counter()
    try:
        solution = simulate(problem, estimator, n=cfg.run.n, dt=cfg.run.dt, t_end=cfg.run.t_end,
                            save_every=cfg.run.save_every, seed=cfg.run.seed, out=out, integrator=integrator,
                            progress=not args.no_progress, resume=args.resume, overwrite=args.overwrite,
                            config=_config.config_to_dict(cfg), device=cfg.run.device, threads=cfg.run.threads,
                            compress=cfg.output.compress, precision=cfg.output.precision)
    except KeyboardInterrupt:
        return _fail(f"interrupted; {out} keeps every complete record: continue with "
                     f"`{PROG} run ... --out {out} --resume`", 130)
    except ValueError as err:
        return _fail(str(err), 2)
    except Exception as err:  # a failure during the run: one line, not a traceback
        return _fail(f"run failed: {type(err).__name__}: {err}", 1)
    if args.resume and solution.new_records == 0:   # the run was already complete: the file is untouched
        print(f"nothing to do: {out} already reaches t_end = {cfg.run.t_end} (step {solution.steps[-1]}); "
              f"the file is unchanged")
    elif distributed.is_main():  # torchrun: rank 0 wrote the file and reports
        print(f"{cfg.problem.name} d={problem.dim}, estimator {cfg.estimator.name}, n={cfg.run.n}, dt={cfg.run.dt}, "
              f"t_end={cfg.run.t_end} ({source})")
        print(summarize_run(out, _time.perf_counter() - start))
    return 0


# --------------------------------------------------------------------------- info, plot, example
def _cmd_info(args) -> int:
    print(describe_trajectory(args.file))
    return 0


def _cmd_plot(args) -> int:
    output = args.output or os.path.splitext(args.file)[0] + ".png"
    if os.path.isdir(output) or not os.path.isdir(os.path.dirname(os.path.abspath(output))):
        raise ValueError(f"figure path not writable: {output!r}")
    with open_trajectory(args.file, load=False) as ds:
        is_pic = "electric_field" in ds.variables          # a PIC run (particlescore.pic): its own figure
    (pic_plots.plot_run if is_pic else plot_trajectory)(args.file, output)
    print(f"wrote {output}")
    return 0


def _options_line(cls) -> str:
    hints = typing.get_type_hints(cls)
    return ", ".join(f"{f.name}: {getattr(hints[f.name], '__name__', str(hints[f.name]))}"
                     + ("" if f.default is dataclasses.MISSING else f" = {f.default!r}")
                     for f in dataclasses.fields(cls)) or "(no options)"


def _cmd_options(args) -> int:
    """Every key of a configuration, read from the registry and simulate()'s signature."""
    lines = [f"[run]     {_options_line(_config.RunSettings)}", f"[output]  {_options_line(_config.OutputSettings)}"]
    for kind in ("problem", "estimator"):
        lines.append(f"[{kind}] name = one of:")
        lines += [f"  {entry.name:28s} {_options_line(entry.options)}" for entry in registry.entries(kind)]
    print("\n".join(lines))
    return 0


def _cmd_example(args) -> int:
    cases = packaged_cases()
    if args.name is None:
        print("\n".join(f"{name:38s} {line}" for name, line in cases.items()))
        return 0
    if args.name not in cases:
        raise ValueError(f"no packaged case {args.name!r}; packaged cases: {', '.join(cases)}")
    output = args.output or f"{args.name}.toml"
    if os.path.exists(output):
        raise ValueError(f"{output!r} already exists; choose another name with -o")
    with open(output, "x", encoding="utf-8") as handle:
        handle.write((CASES / f"{args.name}.toml").read_text(encoding="utf-8"))
    print(f"wrote {output}: edit it, then `{PROG} run {output}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
