"""Command line: ``particlescore run | info | plot`` (DESIGN §7).

``particlescore run [CONFIG.toml] --out run.nc`` validates everything (configuration, estimator,
output path) before any work, then runs the simulation with a progress bar and prints a summary.
``particlescore info FILE`` says what a trajectory holds and how it was made;
``particlescore plot FILE -o fig.png`` draws covariance, energy, entropy / Fisher information and
particle snapshots. Errors print one line ``particlescore: error: <message>`` on stderr; the exit
status is 2 for invalid input, 1 for a failure during the run, 130 when interrupted.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time as _time

import numpy as np

from . import config as _config
from ._version import __version__
from .trajectory import check_output_path, decode_attrs, open_trajectory, recorded_run_config

__all__ = ["main", "build_parser"]

PROG = "particlescore"


class UsageError(Exception):
    """Invalid command-line input (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors become one line (raised, printed by :func:`main`)."""

    def error(self, message):
        raise UsageError(message)


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Score-based particle simulations of kinetic equations.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="run a simulation from a TOML configuration",
                              description="Run a simulation; options override the configuration file. "
                                          "Without CONFIG the packaged default case runs "
                                          "(anisotropic Maxwell relaxation, d=3, DiScoFormer).")
    run.add_argument("config", nargs="?", metavar="CONFIG.toml", help="run configuration (default: packaged default case)")
    run.add_argument("--out", default="run.nc", metavar="FILE", help="trajectory file to write (default: run.nc)")
    run.add_argument("--estimator", choices=_config.ESTIMATOR_NAMES, help="score estimator")
    run.add_argument("--dim", type=int, metavar="D", help="dimension")
    run.add_argument("--n", type=int, metavar="N", help="number of particles")
    run.add_argument("--dt", type=float, metavar="DT", help="time step")
    run.add_argument("--t-end", type=float, metavar="T", dest="t_end", help="final time")
    run.add_argument("--seed", type=int, metavar="S", help="random seed")
    run.add_argument("--adapt-steps", type=int, metavar="K", dest="adapt_steps",
                     help="DiScoFormer test-time adaptation steps per call")
    run.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    run.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    run.add_argument("--no-progress", action="store_true", dest="no_progress", help="no progress bar")
    run.add_argument("--threads", type=int, default=None, metavar="K",
                     help="torch and numba threads (default: [run] threads, else 1 below 2048 particles and "
                          "every core from there on, capped by OMP_NUM_THREADS; the same rule as ps.simulate)")
    run.add_argument("--device", metavar="DEVICE", help="cpu | cuda | cuda:N (default: [run] device, else cpu)")

    info = commands.add_parser("info", help="describe a trajectory file")
    info.add_argument("file", metavar="FILE")

    plot = commands.add_parser("plot", help="plot a trajectory file")
    plot.add_argument("file", metavar="FILE")
    plot.add_argument("-o", "--output", metavar="FIG.png", help="figure file (default: FILE with .png)")
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
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "info":
            return _cmd_info(args)
        return _cmd_plot(args)
    except (UsageError, ValueError) as err:
        return _fail(str(err), 2)
    except OSError as err:
        return _fail(str(err), 1)


def _fail(message: str, status: int) -> int:
    line = " ".join(str(message).split())  # one line, whatever the message holds
    print(f"{PROG}: error: {line}", file=sys.stderr)
    return status


# --------------------------------------------------------------------------- run
def _resolve_config(args) -> _config.RunConfig:
    if args.config is not None:
        cfg = _config.load_config(args.config)
    elif args.resume:
        cfg = _config_from_trajectory(args.out)
    else:
        cfg = _config.default_config()
    return _config.apply_overrides(cfg, estimator=args.estimator, dim=args.dim, n=args.n, dt=args.dt,
                                   t_end=args.t_end, seed=args.seed, adapt_steps=args.adapt_steps)


def _run_config_of(attrs: dict) -> dict | None:
    """The TOML run configuration recorded by ``particlescore run`` (None if absent)."""
    recorded = attrs.get("config")
    if isinstance(recorded, dict) and isinstance(recorded.get("run_config"), dict):
        return recorded["run_config"]
    return None


def _config_from_trajectory(path) -> _config.RunConfig:
    run_config = recorded_run_config(path)
    if run_config is None:
        raise ValueError(f"{path!r} records no run configuration; pass the CONFIG.toml to resume")
    return _config.config_from_dict(run_config)


def _cmd_run(args) -> int:
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    out = check_output_path(args.out, overwrite=args.overwrite, resume=args.resume)
    cfg = _resolve_config(args)
    problem = _config.build_problem(cfg)
    estimator = _config.build_estimator(cfg, problem)
    integrator = _config.build_integrator(cfg)
    if not cfg.run.t_end > problem.t0:
        raise ValueError(f"run.t_end = {cfg.run.t_end} must be after the problem's start time t0 = {problem.t0:.6g} "
                         f"(t_end is absolute time)")
    from . import distributed, runtime
    from .solver import simulate
    device = runtime.resolve_device(args.device or cfg.run.device)   # checked before any output
    threads = runtime.resolve_threads(args.threads if args.threads is not None else cfg.run.threads, cfg.run.n)
    print(f"{PROG}: {cfg.problem.name} d={cfg.problem.dim}, estimator {cfg.estimator.name}, n={cfg.run.n}, "
          f"dt={cfg.run.dt}, t_end={cfg.run.t_end} -> {out}", file=sys.stderr)
    start = _time.perf_counter()
    try:
        solution = simulate(problem, estimator, n=cfg.run.n, dt=cfg.run.dt, t_end=cfg.run.t_end,
                 save_every=cfg.run.save_every, seed=cfg.run.seed, out=out, integrator=integrator,
                 progress=not args.no_progress, resume=args.resume, config=_config.config_to_dict(cfg),
                 overwrite=args.overwrite, device=device, threads=threads)
    except KeyboardInterrupt:
        return _fail(f"interrupted; {out} keeps every complete record: continue with "
                     f"`{PROG} run ... --out {out} --resume`", 130)
    except ValueError as err:
        return _fail(str(err), 2)
    except Exception as err:  # a failure during the run: one line, not a traceback
        return _fail(f"run failed: {type(err).__name__}: {err}", 1)
    wall = _time.perf_counter() - start
    if args.resume and solution.new_records == 0:   # the run was already complete: the file is untouched
        print(f"nothing to do: {out} already reaches t_end = {cfg.run.t_end} (step {solution.steps[-1]}); "
              f"the file is unchanged")
        return 0
    if distributed.is_main():  # torchrun: rank 0 wrote the file and reports
        print(_summary(out, wall))
    return 0


def _summary(path: str, wall: float) -> str:
    """Records, steps, times and the final diagnostics (exact-solution errors where known)."""
    with open_trajectory(path, load=False) as ds:  # reads only the small variables below
        lines = [f"wrote {path}: {ds.sizes['time']} records, steps {_range(ds['step'].values)}, "
                 f"t = {_range(ds['time'].values)}, wall time {wall:.1f} s"]
        if ds.sizes["time"]:
            last = ds.isel(time=-1)
            for name in ("energy", "entropy", "fisher_information", "consistency_loss",
                         "covariance_error", "mean_error", "score_error"):
                if name in ds and np.isfinite(last[name].values).all():
                    lines.append(f"  final {name}: {_format_value(last[name].values)}")
            if "covariance" in ds:
                lines.append(f"  final covariance diagonal: {_format_value(np.diagonal(last['covariance'].values))}")
    return "\n".join(lines)


def _range(values: np.ndarray) -> str:
    if len(values) == 0:
        return "none"
    return f"{_format_value(values[0])}..{_format_value(values[-1])}"


def _format_value(value) -> str:
    arr = np.asarray(value)
    if arr.ndim == 0:
        return f"{arr.item():.6g}" if arr.dtype.kind == "f" else str(arr.item())
    return "[" + ", ".join(f"{v:.4g}" for v in arr.ravel()) + "]"


# --------------------------------------------------------------------------- info
def _cmd_info(args) -> int:
    print(describe_trajectory(args.file))
    return 0


def describe_trajectory(path) -> str:
    """Human-readable description of a trajectory file (what ``particlescore info`` prints)."""
    import netCDF4

    with open_trajectory(path, load=False) as ds:  # checks that this is a trajectory
        attrs = decode_attrs(ds.attrs)
        complete = ds.sizes["time"]
        times, steps = ds["time"].values, ds["step"].values
        names = ["time"] + [name for name in ds.variables if name != "time"]
        variables = [(name, ds[name].dims, ds[name].attrs.get("units", ""), ds[name].attrs.get("long_name", ""))
                     for name in names]
        sizes = dict(ds.sizes)
    with netCDF4.Dataset(os.fspath(path)) as raw:
        stored = len(raw.dimensions["time"])
    lines = [f"file: {os.fspath(path)}",
             f"state: {attrs.get('state_variable')} of {sizes.get('particle')} particles in dimension {sizes.get('dim')}",
             f"dimensions: " + ", ".join(f"{k}={v}" for k, v in sizes.items()),
             f"saved steps: {complete} complete" + (f" ({stored - complete} incomplete trailing record ignored)"
                                                   if stored > complete else ""),
             f"steps: {_range(steps)}; time: {_range(times)}",
             "variables:"]
    for name, dims, units, long_name in variables:
        lines.append(f"  {name} ({', '.join(dims)}) [{units}] {long_name}")
    lines.append("how it was made:")
    for key in ("source", "title", "Conventions"):
        if key in attrs:
            lines.append(f"  {key}: {attrs[key]}")
    for key, value in attrs.items():
        if key in ("source", "title", "Conventions", "history", "config", "json_attributes", "state_variable"):
            continue
        lines.append(f"  {key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")
    recorded = attrs.get("config")
    if isinstance(recorded, dict):
        lines.append("  config:")
        for key, value in recorded.items():
            if key != "run_config":
                lines.append(f"    {key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")
        if isinstance(recorded.get("run_config"), dict):
            lines.append("  run configuration (TOML):")
            lines.extend("    " + line for line in _toml_lines(recorded["run_config"]))
    elif recorded is not None:
        lines.append(f"  config: {recorded}")
    if "history" in attrs:
        lines.append("  history:")
        lines.extend("    " + line for line in str(attrs["history"]).splitlines())
    return "\n".join(lines)


def _toml_lines(config: dict) -> list[str]:
    lines = []
    ordered = [key for key in _config.SECTIONS if key in config] + [key for key in config if key not in _config.SECTIONS]
    for section in ordered:
        table = config[section]
        if isinstance(table, dict):
            lines.append(f"[{section}]")
            lines.extend(f"{key} = {json.dumps(value)}" for key, value in table.items())
        else:
            lines.append(f"{section} = {json.dumps(table)}")
    return lines


# --------------------------------------------------------------------------- plot
def _cmd_plot(args) -> int:
    output = args.output or os.path.splitext(args.file)[0] + ".png"
    if os.path.isdir(output) or not os.path.isdir(os.path.dirname(os.path.abspath(output))):
        raise ValueError(f"figure path not writable: {output!r}")
    plot_trajectory(args.file, output)
    print(f"wrote {output}")
    return 0


def plot_trajectory(path, output) -> None:
    """Covariance diagonal (exact dashed where known), energy, entropy / Fisher information
    and particle snapshots (first two dimensions at three times) -> ``output`` (PNG)."""
    ds = open_trajectory(path)
    if ds.sizes["time"] == 0:
        raise ValueError(f"{os.fspath(path)!r} holds no complete record to plot")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attrs = decode_attrs(ds.attrs)
    state = np.asarray(ds[attrs["state_variable"]].values)               # (T, n, d)
    times = np.asarray(ds["time"].values)
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5))
    _plot_covariance(axes[0, 0], ds, state, times, _exact_covariance_curve(attrs, times))
    _plot_energy(axes[0, 1], ds, state, times)
    _plot_entropy_fisher(axes[0, 2], ds, times)
    indices = _snapshot_indices(len(times))
    limits = _snapshot_limits(state[indices])
    for ax, index in zip(axes[1], indices):
        _plot_snapshot(ax, state[index], times[index], attrs["state_variable"], limits)
    for ax in axes[1][len(indices):]:
        ax.set_visible(False)
    title = attrs.get("problem", "") if isinstance(attrs.get("problem"), str) else ""
    fig.suptitle(f"{os.path.basename(os.fspath(path))} {title}".strip())
    fig.tight_layout()
    fig.savefig(output, dpi=110)
    plt.close(fig)


def _snapshot_indices(count: int) -> list[int]:
    return sorted({0, count // 2, count - 1}) if count > 2 else list(range(count))


def _covariances(ds, state: np.ndarray) -> np.ndarray:
    if "covariance" in ds and np.isfinite(ds["covariance"].values).all():
        return np.asarray(ds["covariance"].values)
    centred = state - state.mean(axis=1, keepdims=True)
    return np.einsum("tni,tnj->tij", centred, centred) / max(state.shape[1] - 1, 1)


def _plot_covariance(ax, ds, state, times, exact) -> None:
    cov = _covariances(ds, state)
    d = cov.shape[1]
    for i in range(min(d, 10)):
        line, = ax.plot(times, cov[:, i, i], label=f"Σ_{i + 1}{i + 1}")
        if exact is not None:
            ax.plot(times, exact[:, i, i], "--", color=line.get_color(), lw=1)
    ax.set_title("covariance diagonal" + (" (exact dashed)" if exact is not None else ""))
    ax.set_xlabel("t")
    ax.legend(fontsize=7)


def _exact_covariance_curve(attrs: dict, times: np.ndarray):
    """Exact Σ(t) on ``times`` when the recorded problem can be rebuilt and knows it; else None."""
    try:
        problem = _rebuild_problem(attrs)
        if problem is None or not hasattr(problem, "exact_covariance"):
            return None
        values = [problem.exact_covariance(float(t)) for t in times]
        if any(v is None for v in values):
            return None
        return np.stack([np.asarray(v.detach().cpu() if hasattr(v, "detach") else v, dtype=float) for v in values])
    except Exception:  # a curve for reference only: never fail the plot over it
        return None


def _rebuild_problem(attrs: dict):
    from . import problems

    recorded = attrs.get("config")
    if isinstance(recorded, dict) and isinstance(recorded.get("problem"), dict):
        return problems.problem_from_config(recorded["problem"])
    run_config = _run_config_of(attrs)
    if run_config is not None:
        return _config.build_problem(_config.config_from_dict(run_config))
    return None


def _plot_energy(ax, ds, state, times) -> None:
    if "energy" in ds:
        ax.plot(times, ds["energy"].values)
        ax.set_title("energy")
    else:
        ax.plot(times, 0.5 * (state ** 2).sum(-1).mean(-1))
        ax.set_title("energy ½⟨|v|²⟩ (from particles)")
    ax.set_xlabel("t")


def _plot_entropy_fisher(ax, ds, times) -> None:
    entropy = ds["entropy"].values if "entropy" in ds else ds["log_density"].mean("particle").values
    ax.plot(times, entropy, color="C0", label="entropy" if "entropy" in ds else "⟨log f⟩")
    ax.set_xlabel("t")
    ax.set_ylabel("entropy", color="C0")
    fisher = ds["fisher_information"].values if "fisher_information" in ds else (ds["score"] ** 2).sum("dim").mean("particle").values
    twin = ax.twinx()
    twin.plot(times, fisher, color="C3", label="Fisher information")
    twin.set_ylabel("Fisher information", color="C3")
    ax.set_title("entropy and Fisher information")


def _snapshot_limits(snapshots: np.ndarray) -> tuple[float, float]:
    """One symmetric-ish range for both axes of every snapshot (first two components)."""
    values = snapshots[..., :2]
    low, high = float(np.min(values)), float(np.max(values))
    pad = 0.05 * (high - low) if high > low else 1.0
    return low - pad, high + pad


def _plot_snapshot(ax, points: np.ndarray, t: float, state_name: str, limits) -> None:
    y = points[:, 1] if points.shape[1] > 1 else np.zeros(len(points))
    ax.scatter(points[:, 0], y, s=4, alpha=0.6)
    ax.set_title(f"{state_name} at t = {t:.3g}")
    ax.set_xlabel("component 1")
    ax.set_ylabel("component 2" if points.shape[1] > 1 else "")
    ax.set_xlim(limits)
    ax.set_ylim(limits)
    ax.set_aspect("equal")


if __name__ == "__main__":
    sys.exit(main())
