"""Look at a trajectory file from Python or the CLI: :func:`plot_trajectory`, :func:`describe_trajectory`.

``ps.plot_trajectory(ds_or_path, "fig.png")`` draws the covariance diagonal (exact curve dashed
where known), the relative energy drift, entropy and Fisher information, and particle snapshots;
``ps.describe_trajectory(path)`` says what a file holds, how it was made and what it costs on
disk per saved record (``particlescore plot`` / ``particlescore info`` print these).
"""
from __future__ import annotations

import json
import os

import numpy as np

from . import problems
from .trajectory import decode_attrs, open_trajectory

__all__ = ["plot_trajectory", "describe_trajectory", "summarize_run", "title_of"]


# --------------------------------------------------------------------------- describe
def describe_trajectory(path) -> str:
    """Human-readable description of a trajectory file (what ``particlescore info`` prints)."""
    import netCDF4

    path = os.fspath(path)
    with open_trajectory(path, load=False) as ds:  # checks that this is a trajectory
        attrs = decode_attrs(ds.attrs)
        complete, sizes = ds.sizes["time"], dict(ds.sizes)
        times, steps = ds["time"].values, ds["step"].values
        names = ["time"] + [name for name in ds.variables if name != "time"]
        variables = [(name, ds[name].dims, ds[name].attrs.get("units", ""), ds[name].attrs.get("long_name", ""))
                     for name in names]
    state_name = attrs.get("state_variable")
    with netCDF4.Dataset(path) as raw:
        stored = len(raw.dimensions["time"])
        state = raw.variables.get(state_name)
        storage = "" if state is None else (f"state stored as {state.dtype}"
                                            + (", zlib-compressed" if state.filters().get("zlib") else ", uncompressed"))
    size = os.path.getsize(path)
    per_record = f", {_bytes(size / complete)} per saved record" if complete else ""
    lines = [f"file: {path}",
             f"size: {_bytes(size)}{per_record}" + (f" ({storage})" if storage else ""),
             f"state: {state_name} of {sizes.get('particle')} particles in dimension {sizes.get('dim')}",
             "dimensions: " + ", ".join(f"{k}={v}" for k, v in sizes.items()),
             f"saved steps: {complete} complete" + (f" ({stored - complete} incomplete trailing record ignored)"
                                                   if stored > complete else ""),
             f"steps: {_range(steps)}; time: {_range(times)}",
             "variables:"]
    lines += [f"  {name} ({', '.join(dims)}) [{units}] {long_name}" for name, dims, units, long_name in variables]
    lines.append("how it was made:")
    lines += [f"  {key}: {attrs[key]}" for key in ("source", "title", "Conventions") if key in attrs]
    skip = ("source", "title", "Conventions", "history", "config", "json_attributes", "state_variable")
    lines += [f"  {key}: {_plain(value)}" for key, value in attrs.items() if key not in skip]
    recorded = attrs.get("config")
    if isinstance(recorded, dict):
        lines.append("  config:")
        lines += [f"    {key}: {_plain(value)}" for key, value in recorded.items() if key != "run_config"]
        if isinstance(recorded.get("run_config"), dict):
            lines.append("  run configuration (TOML):")
            lines += ["    " + line for line in _toml_lines(recorded["run_config"])]
    elif recorded is not None:
        lines.append(f"  config: {recorded}")
    if "history" in attrs:
        lines.append("  history:")
        lines += ["    " + line for line in str(attrs["history"]).splitlines()]
    return "\n".join(lines)


def summarize_run(path, wall: float) -> str:
    """Records, steps, times and the final diagnostics (exact-solution errors where known)."""
    with open_trajectory(path, load=False) as ds:  # reads only the small variables below
        lines = [f"wrote {os.fspath(path)}: {ds.sizes['time']} records, steps {_range(ds['step'].values)}, "
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


def _bytes(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.3g} {unit}"
        size /= 1000


def _plain(value) -> str:
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def _range(values: np.ndarray) -> str:
    if len(values) == 0:
        return "none"
    return f"{_format_value(values[0])}..{_format_value(values[-1])}"


def _format_value(value) -> str:
    arr = np.asarray(value)
    if arr.ndim == 0:
        return f"{arr.item():.6g}" if arr.dtype.kind == "f" else str(arr.item())
    return "[" + ", ".join(f"{v:.4g}" for v in arr.ravel()) + "]"


def _toml_lines(config: dict) -> list[str]:
    lines = []
    for section, table in config.items():
        if isinstance(table, dict):
            lines.append(f"[{section}]")
            lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
        else:
            lines.append(f"{section} = {json.dumps(table)}")
    return lines


# --------------------------------------------------------------------------- plot
def title_of(attrs: dict, sizes: dict) -> str:
    """``problem, estimator, n = …, d = …`` from a trajectory's attributes and sizes."""
    recorded = attrs.get("config") if isinstance(attrs.get("config"), dict) else {}
    run_config = recorded.get("run_config") if isinstance(recorded.get("run_config"), dict) else {}
    problem = run_config.get("problem", {}).get("name") or attrs.get("problem", "?")
    estimator = run_config.get("estimator", {}).get("name")
    if estimator is None:
        described = attrs.get("estimator")
        estimator = described.get("estimator", "?") if isinstance(described, dict) else str(described or "?")
    return f"{problem}, {estimator}, n = {sizes.get('particle')}, d = {sizes.get('dim')}"


def plot_trajectory(trajectory, output=None):
    """Covariance diagonal (exact dashed where known), relative energy drift
    ``(E(t) − E(t0))/|E(t0)|``, entropy and Fisher information, and particle snapshots (first two
    components at three times) of a trajectory (an ``xarray.Dataset`` from
    :func:`~particlescore.open_trajectory`, or a file path). Saves a PNG to ``output`` when given;
    returns the matplotlib ``Figure``.
    """
    import matplotlib
    if output is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds = open_trajectory(trajectory) if isinstance(trajectory, (str, os.PathLike)) else trajectory
    if ds.sizes["time"] == 0:
        raise ValueError(f"{trajectory!r} holds no complete record to plot" if isinstance(trajectory, (str, os.PathLike))
                         else "the trajectory holds no complete record to plot")
    attrs = decode_attrs(ds.attrs)
    state = np.asarray(ds[attrs["state_variable"]].values)               # (T, n, d)
    times = np.asarray(ds["time"].values)                                # (T,)
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5))
    _plot_covariance(axes[0, 0], ds, state, times, _exact_covariance_curve(attrs, times))
    _plot_energy(axes[0, 1], ds, state, times)
    _plot_entropy_fisher(axes[0, 2], ds, times)
    indices = sorted({0, len(times) // 2, len(times) - 1})
    limits = _snapshot_limits(state[indices])
    for ax, index in zip(axes[1], indices):
        _plot_snapshot(ax, state[index], times[index], attrs["state_variable"], limits)
    for ax in axes[1][len(indices):]:
        ax.set_visible(False)
    for ax in fig.axes:
        ax.ticklabel_format(axis="y", useOffset=False)                  # no "1e-8+1.5": values as they are
    fig.suptitle(title_of(attrs, dict(ds.sizes)))
    fig.tight_layout()
    if output is not None:
        fig.savefig(output, dpi=110)
        plt.close(fig)
    return fig


def _plot_covariance(ax, ds, state, times, exact) -> None:
    if "covariance" in ds and np.isfinite(ds["covariance"].values).all():
        cov = np.asarray(ds["covariance"].values)                        # (T, d, d)
    else:
        centred = state - state.mean(axis=1, keepdims=True)
        cov = np.einsum("tni,tnj->tij", centred, centred) / max(state.shape[1] - 1, 1)
    for i in range(min(cov.shape[1], 10)):
        line, = ax.plot(times, cov[:, i, i], label=f"Σ_{i + 1}{i + 1}")
        if exact is not None:
            ax.plot(times, exact[:, i, i], "--", color=line.get_color(), lw=1)
    ax.set_title("covariance diagonal" + (" (exact dashed)" if exact is not None else ""))
    ax.set_xlabel("t")
    ax.set_ylabel("Σ_ii")
    ax.legend(fontsize=7)


def _exact_covariance_curve(attrs: dict, times: np.ndarray):
    """Exact Σ(t) on ``times`` when the recorded problem can be rebuilt and knows it; else None."""
    recorded = attrs.get("config")
    if not (isinstance(recorded, dict) and isinstance(recorded.get("problem"), dict)):
        return None
    try:
        problem = problems.problem_from_config(recorded["problem"])
    except ValueError:            # a problem this installation does not know: no reference curve
        return None
    values = [problem.exact_covariance(float(t)) for t in times]
    if any(v is None for v in values):
        return None
    return np.stack([np.asarray(v.detach().cpu(), dtype=float) for v in values])


def _plot_energy(ax, ds, state, times) -> None:
    energy = np.asarray(ds["energy"].values) if "energy" in ds else 0.5 * (state ** 2).sum(-1).mean(-1)
    ax.plot(times, (energy - energy[0]) / abs(energy[0]) if energy[0] != 0 else energy - energy[0])
    ax.set_title("energy ½⟨|x|²⟩: relative drift")
    ax.set_xlabel("t")
    ax.set_ylabel("(E(t) − E(t0)) / |E(t0)|")


def _plot_entropy_fisher(ax, ds, times) -> None:
    entropy = ds["entropy"].values if "entropy" in ds else ds["log_density"].mean("particle").values
    ax.plot(times, entropy, color="C0")
    ax.set_xlabel("t")
    ax.set_ylabel("entropy" if "entropy" in ds else "⟨log f⟩", color="C0")
    fisher = (ds["fisher_information"].values if "fisher_information" in ds
              else (ds["score"] ** 2).sum("dim").mean("particle").values)
    twin = ax.twinx()
    twin.plot(times, fisher, color="C3")
    twin.set_ylabel("Fisher information ⟨|s|²⟩", color="C3")
    ax.set_title("entropy and Fisher information")


def _snapshot_limits(snapshots: np.ndarray) -> tuple[float, float]:
    """One range for both axes of every snapshot (first two components)."""
    values = snapshots[..., :2]
    low, high = float(np.min(values)), float(np.max(values))
    pad = 0.05 * (high - low) if high > low else 1.0
    return low - pad, high + pad


def _plot_snapshot(ax, points: np.ndarray, t: float, state_name: str, limits) -> None:
    ax.set_title(f"{state_name} at t = {t:.3g}")
    ax.set_xlabel(f"{state_name} component 1")
    if points.shape[1] == 1:                                             # d = 1: a histogram
        ax.hist(points[:, 0], bins=30, range=limits, density=True)
        ax.set_xlim(limits)
        ax.set_ylabel("particle density")
        return
    ax.scatter(points[:, 0], points[:, 1], s=4, alpha=0.6)
    ax.set_ylabel(f"{state_name} component 2")
    ax.set_xlim(limits)
    ax.set_ylim(limits)
    ax.set_aspect("equal")
