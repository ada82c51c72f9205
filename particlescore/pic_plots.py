"""Figures of PIC runs (particlescore.pic): field energy with linear theory, phase space, per-cell temperature.

``python -m particlescore.pic_plots RUN.nc [-o FIG.png]`` writes a four-panel figure:
field energy on a log scale with the theoretical rate ``2 Im ω`` of the dispersion-relation
root (:func:`particlescore.pic.dispersion_root`; Landau damping for a Maxwellian, the growth
rate for two streams), the (x, v_1) phase space at the first and the last particle record, and
the per-cell temperatures against time.
"""
from __future__ import annotations

import argparse
import math
import sys

import numpy as np

from . import pic
from .trajectory import decode_attrs, open_trajectory

__all__ = ["theory_rate", "plot_field_energy", "plot_phase_space", "plot_temperature", "plot_run", "main"]


def theory_rate(config: dict) -> complex | None:
    """Dispersion-relation root ω of a run's recorded ``pic_config`` (None without a field or
    perturbation): Maxwellian of temperature T_1, or two Maxwellian beams."""
    if not config.get("field", True) or config.get("perturbation_amplitude", 0.0) == 0.0:
        return None
    k = config["wavenumber"]
    init = config["initial"]
    if init["kind"] == "two_stream":
        u, vt = init["beam_velocity"], init["beam_thermal_velocity"]
        return pic.dispersion_root(k, beams=((0.5, u, vt), (0.5, -u, vt)), guess=0.01 + 0.3j)
    vt = math.sqrt(init["temperature"][0])
    # scale the k = 0.5, T = 1 guess: ω ≈ ω_p at small kλ_D
    return pic.dispersion_root(k, beams=((1.0, 0.0, vt),), guess=1.4 - 0.15j)


def _config(ds) -> dict:
    return decode_attrs(ds.attrs)["pic_config"]


def plot_field_energy(ax, ds) -> None:
    t, W = ds["time"].values, ds["field_energy"].values
    ax.semilogy(t, W, lw=1, label="PIC field energy")
    root = theory_rate(_config(ds))
    if root is not None:
        g = 2 * root.imag
        if g < 0:   # damping: through the first maximum after t = 1
            peaks = np.flatnonzero((W[1:-1] > W[:-2]) & (W[1:-1] >= W[2:]) & (t[1:-1] > 1.0)) + 1
            i0 = int(peaks[0]) if len(peaks) else 0
        else:       # growth: through the point where W is 1e-3 of its maximum (linear phase)
            i0 = int(np.argmax(W > 1e-3 * W.max()))
        line = W[i0] * np.exp(g * (t - t[i0]))
        keep = (line > W.min() / 10) & (line < W.max() * 10)
        ax.semilogy(t[keep], line[keep], "k--", lw=1, label=f"linear theory, 2 Im ω = {g:.4f}")
    ax.set_xlabel("t ω_p")
    ax.set_ylabel("½∫E² dx")
    ax.legend(fontsize=8)
    ax.set_title("field energy")


def plot_phase_space(ax, ds, index: int) -> None:
    x = ds["position"].values[index]
    v = ds["velocity"].values[index, :, 0]
    if len(x) > 20000:   # a fixed random subset (strides would pick quiet-start structure)
        pick = np.random.default_rng(0).choice(len(x), 20000, replace=False)
        x, v = x[pick], v[pick]
    ax.plot(x, v, ",", alpha=0.5)
    ax.set_xlim(0, ds.attrs["domain_length"])
    ax.set_xlabel("x / λ_D")
    ax.set_ylabel("v_1")
    ax.set_title(f"phase space, t = {float(ds['time'].values[index]):.1f}")


def plot_temperature(ax, ds) -> None:
    T = ds["temperature"].values                           # (time, cell, dim)
    t = ds["time"].values
    colors = ("C0", "C1", "C2")
    for k in range(T.shape[2]):
        ax.fill_between(t, np.nanmin(T[:, :, k], 1), np.nanmax(T[:, :, k], 1), color=colors[k], alpha=0.25, lw=0)
        ax.plot(t, np.nanmean(T[:, :, k], 1), color=colors[k], lw=1.2, label=f"T_{k + 1} (cell mean, min–max)")
    ax.set_xlabel("t ω_p")
    ax.set_ylabel("per-cell temperature")
    ax.legend(fontsize=8)
    ax.set_title("per-cell temperature")


def plot_run(path, output) -> None:
    """The four-panel figure of the module docstring, written to ``output``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds = open_trajectory(path)
    particles = np.flatnonzero(np.isfinite(ds["position"].values).all(1))
    if len(particles) == 0:
        raise ValueError(f"{path!r} holds no particle record")
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    plot_field_energy(axes[0, 0], ds)
    plot_temperature(axes[0, 1], ds)
    plot_phase_space(axes[1, 0], ds, int(particles[0]))
    plot_phase_space(axes[1, 1], ds, int(particles[-1]))
    fig.suptitle(f"{path}: {ds.sizes['particle']} particles, {ds.sizes['cell']} cells, k = {ds.attrs['wavenumber']}, "
                 f"α = {ds.attrs['perturbation_amplitude']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(output, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m particlescore.pic_plots", description=__doc__.splitlines()[0])
    parser.add_argument("file")
    parser.add_argument("-o", "--output", default=None)
    args = parser.parse_args(argv)
    output = args.output or args.file.rsplit(".", 1)[0] + ".png"
    try:
        plot_run(args.file, output)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
