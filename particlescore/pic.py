"""A small 1D-x, d_v = 2 or 3 electrostatic particle-in-cell code with score-based collisions.

Electrons (charge −1, mass 1) on a fixed neutralising ion background in a periodic domain
``[0, L)``, normalised units (plasma frequency ω_p = 1, Debye length λ_D = 1, background
density 1; Birdsall & Langdon, *Plasma Physics via Computer Simulation*, 1991, ch. 2–4):

* **Deposition / gather**: cloud-in-cell (linear) weights on ``n_cells`` nodes
  ``x_j = jΔx``; each of the N particles carries weight ``L/N`` (mean density 1). The same
  weights gather the field, so a particle exerts no force on itself.
* **Field**: Gauss's law ``∂E/∂x = ρ = 1 − n_e`` solved spectrally,
  ``E_k = −i ρ_k / k`` (k ≠ 0), ``E_0 = 0``.
* **Push**: leapfrog in kick-drift-kick form, ``v += (dt/2)(−E(x))``, ``x += dt·v_1``,
  ``v += (dt/2)(−E(x))`` (second order, symplectic; x and v known at the same times).
* **Collisions**: operator splitting (Lie): every ``collision_every = k`` steps the cell-wise
  Landau operator :class:`particlescore.collisions.LandauCollisions` advances the velocities by
  ``k·dt``; a particle's collision cell is ``floor(x/Δx)``.
* **Diagnostics** per saved step: field energy ``½∫E²dx``, kinetic energy ``½Σ_p (L/N)|v_p|²``,
  total energy, the amplitude ``|E_k|`` of the perturbed mode, the electric field at the nodes,
  and per cell the temperature ``T_c,k`` (velocity variance per component, 1/n_c), the
  anisotropy ``T_c,1 / mean_{k>1} T_c,k`` and the Gaussian entropy ``½ log det(2πe Σ_c)`` of
  the cell's velocity covariance (the entropy of the Maxwellian with those moments; it grows
  as collisions relax an anisotropic cell).

Initial conditions (``[pic.initial] kind``): ``"maxwellian"`` (density ``1 + α cos(kx)``,
velocities ``N(0, diag(T))``), ``"two_stream"`` (two counter-streaming beams ``±u`` in v_1 of
thermal speed ``v_t``, density ``1 + α cos(kx)``), ``"anisotropic"`` (same as maxwellian; name
for the collisional relaxation case). ``quiet_start = true`` places particles deterministically
(positions by the inverse of the density's CDF on a regular grid, velocities from
van der Corput sequences in bases 2, 3, 5 through the normal quantile, shifted by a seeded
random offset), which removes most of the sampling noise of a random start.

Output: a netCDF4 file written while the run goes (dims ``time``, ``particle``, ``dim``,
``cell``; variables ``position (time, particle)``, ``velocity (time, particle, dim)``,
``electric_field (time, cell)``, ``field_energy``, ``kinetic_energy``, ``total_energy``,
``temperature (time, cell, dim)``, ...; CF attributes; the configuration, seed, version and
weights checksum as attributes). Particles are stored every ``particle_save_every`` steps
(NaN in other records) and at the last step; a run killed at any point resumes from the last
stored particle record and reproduces the uninterrupted run exactly (random batches are drawn
from a generator seeded by ``(seed, step)``; the collision operator's state, e.g. its
warm-started per-cell mixture fits, is stored with every particle record in the group
``resume``, variable ``collision_state``, as safetensors bytes).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time as _time
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtri, wofz

from . import runtime
from . import trajectory as _trajectory
from ._validation import seeded_numpy_generator
from ._version import __version__
from .collisions import LandauCollisions, cell_moments

__all__ = ["PICConfig", "CollisionConfig", "InitialCondition", "PICResult", "run", "run_from_config",
           "config_from_dict", "dispersion_root", "deposit", "solve_field", "initial_state"]

INITIAL_KINDS = ("maxwellian", "two_stream", "anisotropic")
ESTIMATORS = ("discoformer", "kde", "blob", "elliptical_kde")


# --------------------------------------------------------------------------- configuration
def _num(table: dict, key: str, default, *, positive=False, nonneg=False, where: str):
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where}.{key} must be a finite number, got {value!r}")
    if positive and not value > 0:
        raise ValueError(f"{where}.{key} must be positive, got {value!r}")
    if nonneg and value < 0:
        raise ValueError(f"{where}.{key} must be non-negative, got {value!r}")
    return float(value)


def _int(table: dict, key: str, default, minimum: int, where: str) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{where}.{key} must be an int >= {minimum}, got {value!r}")
    return value


def _unknown(table: dict, allowed: set, where: str) -> None:
    extra = sorted(set(table) - allowed)
    if extra:
        raise ValueError(f"unknown key(s) {extra} in [{where}]; allowed: {sorted(allowed)}")


@dataclass(frozen=True)
class InitialCondition:
    """``kind`` in :data:`INITIAL_KINDS`; ``temperature`` per velocity component (length d);
    two-stream: beams at ``±beam_velocity`` in v_1 with thermal speed ``beam_thermal_velocity``."""
    kind: str = "maxwellian"
    temperature: tuple[float, ...] = (1.0, 1.0)
    beam_velocity: float = 2.0
    beam_thermal_velocity: float = 0.5


@dataclass(frozen=True)
class CollisionConfig:
    """The collision operator: ``estimator`` in :data:`ESTIMATORS`, kernel ``gamma`` and ``B``,
    ``random_batch`` (0 = all pairs of a cell), ``integrator`` ("euler"|"heun"), applied every
    ``every`` field steps with step ``every·dt``; ``bandwidth`` for KDE ("scott" or a float);
    ``warm_start`` (DiScoFormer only): carry each cell's mixture fit from one collision step to
    the next (:class:`~particlescore.collisions.LandauCollisions`); ``moment_projection``: correct
    each cell's scores so that they obey Stein's identity on the cell's particles (any estimator;
    docs/moment_projection.md)."""
    estimator: str = "discoformer"
    gamma: float = 0.0
    B: float = 1.0 / 24.0
    random_batch: int = 0
    integrator: str = "euler"
    every: int = 1
    bandwidth: str | float = "scott"
    warm_start: bool = False
    moment_projection: bool = False


@dataclass(frozen=True)
class PICConfig:
    """A PIC run (module docstring). ``wavenumber`` k sets the domain ``L = 2π·modes/k``."""
    n_particles: int = 20000
    n_cells: int = 64
    dim: int = 2
    wavenumber: float = 0.5
    modes: int = 1
    perturbation_amplitude: float = 0.01
    dt: float = 0.1
    t_end: float = 30.0
    seed: int = 0
    quiet_start: bool = True
    field: bool = True
    save_every: int = 1
    particle_save_every: int = 50
    initial: InitialCondition = dataclasses.field(default_factory=InitialCondition)
    collisions: CollisionConfig | None = None

    @property
    def domain_length(self) -> float:
        return 2 * math.pi * self.modes / self.wavenumber

    @property
    def n_steps(self) -> int:
        return int(round(self.t_end / self.dt))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def config_from_dict(data: dict) -> PICConfig:
    """A :class:`PICConfig` from the ``[pic]`` table of a TOML file (ValueError naming the key)."""
    if not isinstance(data, dict):
        raise ValueError(f"[pic] must be a table, got {type(data).__name__}")
    w = "pic"
    top = {f.name for f in dataclasses.fields(PICConfig)}
    _unknown(data, top, w)
    dim = _int(data, "dim", 2, 1, w)
    if dim not in (2, 3):
        raise ValueError(f"pic.dim must be 2 or 3 (velocity dimensions), got {dim}"
                         + ("; the Landau collision operator vanishes in 1V" if dim == 1 else ""))
    init = data.get("initial", {})
    if not isinstance(init, dict):
        raise ValueError("[pic.initial] must be a table")
    _unknown(init, {f.name for f in dataclasses.fields(InitialCondition)}, "pic.initial")
    kind = init.get("kind", "maxwellian")
    if kind not in INITIAL_KINDS:
        raise ValueError(f"pic.initial.kind must be one of {INITIAL_KINDS}, got {kind!r}")
    temperature = init.get("temperature", [1.0] * dim)
    if not isinstance(temperature, (list, tuple)) or len(temperature) != dim or not all(
            isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and t > 0 for t in temperature):
        raise ValueError(f"pic.initial.temperature must be {dim} positive numbers, got {temperature!r}")
    initial = InitialCondition(kind, tuple(float(t) for t in temperature),
                               _num(init, "beam_velocity", 2.0, where="pic.initial"),
                               _num(init, "beam_thermal_velocity", 0.5, positive=True, where="pic.initial"))
    coll = data.get("collisions")
    collisions = None
    if coll is not None:
        if not isinstance(coll, dict):
            raise ValueError("[pic.collisions] must be a table")
        _unknown(coll, {f.name for f in dataclasses.fields(CollisionConfig)}, "pic.collisions")
        est = coll.get("estimator", "discoformer")
        if est not in ESTIMATORS:
            raise ValueError(f"pic.collisions.estimator must be one of {ESTIMATORS}, got {est!r}")
        integrator = coll.get("integrator", "euler")
        if integrator not in ("euler", "heun"):
            raise ValueError(f"pic.collisions.integrator must be 'euler' or 'heun', got {integrator!r}")
        bandwidth = coll.get("bandwidth", "scott")
        if not (bandwidth in ("scott", "silverman") or (isinstance(bandwidth, (int, float))
                                                          and not isinstance(bandwidth, bool) and bandwidth > 0)):
            raise ValueError(f"pic.collisions.bandwidth must be 'scott', 'silverman' or a positive float, got {bandwidth!r}")
        rb = _int(coll, "random_batch", 0, 0, "pic.collisions")
        if rb == 1:
            raise ValueError("pic.collisions.random_batch must be 0 (all pairs) or >= 2, got 1")
        warm = coll.get("warm_start", False)
        if not isinstance(warm, bool):
            raise ValueError(f"pic.collisions.warm_start must be true or false, got {warm!r}")
        if warm and est != "discoformer":
            raise ValueError(f"pic.collisions.warm_start needs estimator = 'discoformer' (per-cell mixture fits), "
                             f"got {est!r}")
        projection = coll.get("moment_projection", False)
        if not isinstance(projection, bool):
            raise ValueError(f"pic.collisions.moment_projection must be true or false, got {projection!r}")
        collisions = CollisionConfig(est, _num(coll, "gamma", 0.0, where="pic.collisions"),
                                     _num(coll, "B", 1.0 / 24.0, nonneg=True, where="pic.collisions"), rb,
                                     integrator, _int(coll, "every", 1, 1, "pic.collisions"),
                                     bandwidth if isinstance(bandwidth, str) else float(bandwidth), warm, projection)
    cfg = PICConfig(
        n_particles=_int(data, "n_particles", 20000, 2, w), n_cells=_int(data, "n_cells", 64, 4, w), dim=dim,
        wavenumber=_num(data, "wavenumber", 0.5, positive=True, where=w), modes=_int(data, "modes", 1, 1, w),
        perturbation_amplitude=_num(data, "perturbation_amplitude", 0.01, where=w),
        dt=_num(data, "dt", 0.1, positive=True, where=w), t_end=_num(data, "t_end", 30.0, positive=True, where=w),
        seed=_int(data, "seed", 0, 0, w), quiet_start=_bool(data, "quiet_start", True),
        field=_bool(data, "field", True), save_every=_int(data, "save_every", 1, 1, w),
        particle_save_every=_int(data, "particle_save_every", 50, 1, w), initial=initial, collisions=collisions)
    if abs(cfg.perturbation_amplitude) >= 1:
        raise ValueError(f"pic.perturbation_amplitude must satisfy |α| < 1 (density 1 + α cos kx > 0), "
                         f"got {cfg.perturbation_amplitude}")
    multiple = 4 if cfg.initial.kind == "two_stream" else 2
    if cfg.quiet_start and cfg.n_particles % multiple:
        raise ValueError(f"a quiet start needs pic.n_particles to be a multiple of {multiple} "
                         f"(particles come in pairs{', in two equal beams' if multiple == 4 else ''}), "
                         f"got {cfg.n_particles}")
    if cfg.n_steps < 1:
        raise ValueError(f"pic.t_end / pic.dt must give at least one step, got {cfg.t_end} / {cfg.dt}")
    if cfg.particle_save_every % cfg.save_every:
        raise ValueError(f"pic.particle_save_every ({cfg.particle_save_every}) must be a multiple of "
                         f"pic.save_every ({cfg.save_every})")
    return cfg


def _bool(table: dict, key: str, default: bool) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"pic.{key} must be true or false, got {value!r}")
    return value


def make_collisions(cfg: CollisionConfig, dim: int, seed: int) -> LandauCollisions:
    """The :class:`LandauCollisions` operator of a :class:`CollisionConfig`."""
    from .discoformer import DiScoFormer
    from .elliptical import EllipticalKDE
    from .estimators import KDE, Blob

    if cfg.estimator == "discoformer":
        est = DiScoFormer.pretrained(dim=dim)          # cells' warm fits live in the operator (warm_start)
    elif cfg.estimator == "kde":
        est = KDE(bandwidth=cfg.bandwidth)
    elif cfg.estimator == "elliptical_kde":
        est = EllipticalKDE()
    else:
        est = Blob()
    return LandauCollisions(est, gamma=cfg.gamma, B=cfg.B, random_batch=cfg.random_batch or None,
                            integrator=cfg.integrator, seed=seed, warm_start=cfg.warm_start,
                            moment_projection=cfg.moment_projection)


# --------------------------------------------------------------------------- physics
def _radical_inverse(index: np.ndarray, base: int) -> np.ndarray:
    """van der Corput sequence: the digits of ``index`` in ``base`` mirrored about the point."""
    out = np.zeros(index.shape)
    f = 1.0 / base
    i = index.astype(np.int64).copy()
    while np.any(i > 0):
        out += f * (i % base)
        i //= base
        f /= base
    return out


def initial_state(cfg: PICConfig) -> tuple[np.ndarray, np.ndarray]:
    """Positions (N,) in [0, L) and velocities (N, d) at t = 0 (module docstring)."""
    n, d, L = cfg.n_particles, cfg.dim, cfg.domain_length
    k, alpha = cfg.wavenumber, cfg.perturbation_amplitude
    rng = np.random.default_rng(cfg.seed)
    p = np.arange(n)
    init = cfg.initial
    two_stream = init.kind == "two_stream"
    if cfg.quiet_start:
        # particle pairs (2m, 2m+1) share one velocity and sit half a domain apart in the CDF
        # variable (van der Corput base 2: vdc(2m+1) = vdc(2m) + ½), so their contributions to
        # the odd Fourier modes of the density (the perturbed mode among them) cancel exactly
        pair = p // 2
        u_x = (_radical_inverse(p, 2) + rng.random()) % 1.0
        if two_stream:   # the first half of the particles is the beam at +u, the second at −u
            q = (pair % (n // 4) + 0.5) / (n // 4)
            sign = np.where(p < n // 2, 1.0, -1.0)
        else:            # velocity quantiles in order: sorted v_1, bit-reversed x (Hammersley)
            q = (pair + 0.5) / (n // 2)
            sign = np.ones(n)
        u_rest = [(_radical_inverse(pair + 1, b) + rng.random()) % 1.0 for b in (3, 5)[:d - 1]]
        normal = ndtri(np.clip(np.stack([q] + u_rest, axis=1), 1e-12, 1 - 1e-12))
    else:
        u_x = rng.random(n)
        normal = rng.standard_normal((n, d))
        sign = np.where(rng.random(n) < 0.5, 1.0, -1.0)
    # positions: invert the CDF of (1 + α cos kx)/L, x + (α/k) sin(kx) = L·u, by Newton
    target = L * u_x
    x = target.copy()
    for _ in range(50):
        g = x + (alpha / k) * np.sin(k * x) - target
        x -= g / (1 + alpha * np.cos(k * x))
        if np.abs(g).max() < 1e-14 * L:
            break
    x %= L
    v = normal * np.sqrt(np.asarray(init.temperature))
    if two_stream:
        v[:, 0] = sign * init.beam_velocity + init.beam_thermal_velocity * normal[:, 0]
    return x, v


def _cic(x: np.ndarray, n_cells: int, dx: float):
    """Cloud-in-cell: left node index (N,), right node index (N,), right weight (N,)."""
    s = x / dx
    left = np.floor(s).astype(np.int64)
    frac = s - left
    left %= n_cells
    return left, (left + 1) % n_cells, frac


def deposit(x: np.ndarray, n_cells: int, length: float) -> np.ndarray:
    """Electron number density at the nodes (n_cells,) by cloud-in-cell, mean 1."""
    dx = length / n_cells
    left, right, frac = _cic(x, n_cells, dx)
    weight = length / (len(x) * dx)
    return weight * (np.bincount(left, 1 - frac, n_cells) + np.bincount(right, frac, n_cells))


def solve_field(density: np.ndarray, length: float) -> np.ndarray:
    """``E`` at the nodes from Gauss's law ``E' = 1 − n_e`` (spectral, zero mean)."""
    n_cells = len(density)
    rho_k = np.fft.rfft(1.0 - density)
    kk = 2 * np.pi * np.fft.rfftfreq(n_cells, d=length / n_cells)
    E_k = np.zeros_like(rho_k)
    E_k[1:] = -1j * rho_k[1:] / kk[1:]
    return np.fft.irfft(E_k, n=n_cells)


def _gather(E: np.ndarray, x: np.ndarray, length: float) -> np.ndarray:
    left, right, frac = _cic(x, len(E), length / len(E))
    return (1 - frac) * E[left] + frac * E[right]


def _field(cfg: PICConfig, x: np.ndarray) -> np.ndarray:
    if not cfg.field:
        return np.zeros(cfg.n_cells)
    return solve_field(deposit(x, cfg.n_cells, cfg.domain_length), cfg.domain_length)


def dispersion_root(k: float, beams=((1.0, 0.0, 1.0),), guess: complex = 1.4 - 0.15j) -> complex:
    """Root ω of the electrostatic dispersion relation of Maxwellian beams ``(density n_b,
    drift u_b, thermal speed v_b)``: ``1 − Σ_b n_b/(2k²v_b²) Z'(ζ_b) = 0``, ``ζ_b = (ω − k u_b)/(√2 k v_b)``,
    with the plasma dispersion function ``Z(ζ) = i√π w(ζ)`` (Fried & Conte 1961; w = Faddeeva,
    analytic everywhere, so this is Landau's continuation) and ``Z' = −2(1 + ζZ)``.
    Secant iterations from ``guess``; ``Im ω`` is the growth (> 0) or damping (< 0) rate."""
    def eps(w):
        total = 1.0 + 0j
        for n_b, u_b, v_b in beams:
            zeta = (w - k * u_b) / (math.sqrt(2) * k * v_b)
            total += n_b / (k * k * v_b * v_b) * (1 + zeta * 1j * math.sqrt(math.pi) * wofz(zeta))
        return total
    w0, w1 = complex(guess), complex(guess) * (1 + 1e-3) + 1e-4j
    f0, f1 = eps(w0), eps(w1)
    for _ in range(100):
        w2 = w1 - f1 * (w1 - w0) / (f1 - f0)
        w0, f0, w1, f1 = w1, f1, w2, eps(w2)
        if abs(w1 - w0) < 1e-13 * max(1.0, abs(w1)):
            return w1
    raise ValueError(f"dispersion relation: no convergence from guess {guess} (k = {k})")


# --------------------------------------------------------------------------- diagnostics
def diagnostics(cfg: PICConfig, x: np.ndarray, v: np.ndarray, E: np.ndarray) -> dict:
    """Energies, mode amplitude and per-cell moments (module docstring)."""
    L, C, d = cfg.domain_length, cfg.n_cells, cfg.dim
    dx = L / C
    w = L / cfg.n_particles
    field_energy = 0.5 * float((E * E).sum()) * dx
    kinetic = 0.5 * w * float((v * v).sum())
    E_k = np.fft.rfft(E)
    mode = 2 * abs(E_k[cfg.modes]) / C if C > 2 * cfg.modes else float("nan")
    cell = np.minimum((x / dx).astype(np.int64), C - 1)
    counts, _, cov = cell_moments(v, cell, C)
    temperature = np.diagonal(cov, axis1=1, axis2=2).copy()                     # (C, d)
    with np.errstate(invalid="ignore", divide="ignore"):
        anisotropy = temperature[:, 0] / temperature[:, 1:].mean(1)
        sign, logdet = np.linalg.slogdet(2 * np.pi * np.e * np.nan_to_num(cov, nan=0.0) + 0.0)
        entropy = np.where((counts > d) & (sign > 0), 0.5 * logdet, np.nan)
    return {"field_energy": field_energy, "kinetic_energy": kinetic, "total_energy": field_energy + kinetic,
            "mode_amplitude": mode, "momentum": w * v.sum(0), "electric_field": E,
            "temperature": temperature, "temperature_anisotropy": anisotropy, "entropy": entropy,
            "cell_count": counts.astype(np.float64)}


_VARIABLES = {
    # name: (dims, units, long_name)
    "field_energy": (("time",), "1", "electrostatic field energy 1/2 integral of E^2 dx (units n0 T_e lambda_D)"),
    "kinetic_energy": (("time",), "1", "electron kinetic energy 1/2 sum_p w_p |v_p|^2"),
    "total_energy": (("time",), "1", "field plus kinetic energy"),
    "mode_amplitude": (("time",), "1", "amplitude of the perturbed Fourier mode of the electric field |E_k|"),
    "momentum": (("time", "dim"), "1", "total electron momentum sum_p w_p v_p"),
    "electric_field": (("time", "cell"), "1", "electric field at the grid nodes (units T_e / (e lambda_D))"),
    "temperature": (("time", "cell", "dim"), "1", "per-cell temperature: velocity variance per component"),
    "temperature_anisotropy": (("time", "cell"), "1", "per-cell temperature ratio T_1 / mean(T_2..T_d)"),
    "entropy": (("time", "cell"), "1", "per-cell Gaussian entropy 1/2 log det(2 pi e Sigma_c)"),
    "cell_count": (("time", "cell"), "1", "number of particles in the cell"),
    "wall_time_per_step": (("time",), "s", "wall-clock time per step since the previous record"),
}


# --------------------------------------------------------------------------- output file
class _PICWriter:
    """netCDF4 writer for PIC runs, same conventions as :mod:`particlescore.trajectory`: a new
    file is written under a temporary name beside ``path`` and renamed to ``path`` once its
    first record is synced (an overwrite keeps the old file until then; a run failing before
    its first record leaves nothing behind)."""

    def __init__(self, ds, path: str, index: int, pending: str | None = None):
        self.ds, self.path, self.index, self.pending = ds, path, index, pending

    @classmethod
    def create(cls, path: str, cfg: PICConfig, attrs: dict) -> "_PICWriter":
        import netCDF4

        pending = _trajectory.new_pending(path)
        try:
            ds = netCDF4.Dataset(pending, "w", format="NETCDF4")
        except OSError as err:
            os.remove(pending)
            raise ValueError(f"output path not writable: {path!r} ({err})") from err
        try:
            n, d, C = cfg.n_particles, cfg.dim, cfg.n_cells
            ds.createDimension("time", None)
            ds.createDimension("particle", n)
            ds.createDimension("dim", d)
            ds.createDimension("cell", C)
            t = ds.createVariable("time", "f8", ("time",), fill_value=np.nan)
            t.setncatts({"units": "1", "long_name": "simulation time (units 1/omega_p)", "axis": "T"})
            s = ds.createVariable("step", "i8", ("time",))
            s.setncatts({"units": "1", "long_name": "time-step index"})
            dx = cfg.domain_length / C
            for name, values, long_name in (("x_node", np.arange(C) * dx, "grid node position (electric_field)"),
                                            ("x_cell", (np.arange(C) + 0.5) * dx, "cell centre (per-cell diagnostics)")):
                var = ds.createVariable(name, "f8", ("cell",))
                var.setncatts({"units": "1", "long_name": f"{long_name} (units lambda_D)"})
                var[:] = values
            pos = ds.createVariable("position", "f8", ("time", "particle"), fill_value=np.nan, chunksizes=(1, n))
            pos.setncatts({"units": "1", "long_name": "particle position x in [0, L) (units lambda_D)"})
            vel = ds.createVariable("velocity", "f8", ("time", "particle", "dim"), fill_value=np.nan,
                                    chunksizes=(1, n, d))
            vel.setncatts({"units": "1", "long_name": "particle velocity (units thermal speed lambda_D omega_p)"})
            for name, (dims, units, long_name) in _VARIABLES.items():
                var = ds.createVariable(name, "f8", dims, fill_value=np.nan)
                var.setncatts({"units": units, "long_name": long_name})
            group = ds.createGroup(_trajectory.RESUME_GROUP)
            blob = group.createVariable("collision_state", group.createVLType(np.uint8, "state_bytes"), ("time",))
            blob.setncatts({"long_name": "collision operator state_dict() after the record's step, at particle "
                                         "records (safetensors)"})
            encoded, json_keys = _trajectory._encode_attrs(attrs)
            ds.setncattr("Conventions", "CF-1.10")
            ds.setncattr("title", "particlescore 1D-x electrostatic PIC run")
            ds.setncattr("source", f"particlescore {__version__} (particlescore.pic)")
            ds.setncattr("history", f"{_trajectory._timestamp()}: {_trajectory._default_command()}")
            ds.setncattr(_trajectory.STATE_ATTR, "velocity")
            for key, value in encoded.items():
                ds.setncattr(key, value)
            ds.setncattr(_trajectory.JSON_ATTR, ",".join(json_keys))
            ds.sync()
        except Exception:
            ds.close()
            os.remove(pending)
            raise
        return cls(ds, path, 0, pending)

    def append(self, step: int, t: float, diag: dict, x=None, v=None, wall: float = float("nan"),
               op_state: dict | None = None) -> None:
        ds, i = self.ds, self.index
        ds.variables["step"][i] = step
        if x is not None:
            ds.variables["position"][i] = x
            ds.variables["velocity"][i] = v
            if op_state is not None:
                blob = np.frombuffer(_trajectory.pack_state(op_state), dtype=np.uint8)
                ds.groups[_trajectory.RESUME_GROUP].variables["collision_state"][i] = blob
        for name in _VARIABLES:
            ds.variables[name][i] = wall if name == "wall_time_per_step" else diag[name]
        ds.variables["time"][i] = t                 # last: a record without time is incomplete
        ds.sync()
        self.index = i + 1
        if self.pending is not None:                # first record on disk: the file takes its name
            _trajectory.commit_pending(self.pending, self.path)
            self.pending = None

    def close(self) -> None:
        if self.ds is not None:
            self.ds.close()
            self.ds = None
        if self.pending is not None:                # closed before its first record: leave nothing
            os.remove(self.pending)
            self.pending = None


def _resume_point(path: str, cfg: PICConfig):
    """Open ``path`` for appending after its last record with particles; returns the writer and
    ``(step, x, v)`` of that record. Records after it are marked incomplete (time = NaN)."""
    ds = _trajectory._open_netcdf(path, "a")
    try:
        attrs = _trajectory.decode_attrs({k: ds.getncattr(k) for k in ds.ncattrs()})
        recorded = attrs.get("pic_config")
        if recorded != json.loads(json.dumps(cfg.to_dict())):
            raise ValueError(f"cannot resume {path!r}: it was written by a different PIC configuration "
                             f"(recorded {recorded!r})")
        ds.set_auto_mask(False)
        times = np.asarray(ds.variables["time"][:], dtype=np.float64)
        last = None
        for i in np.flatnonzero(np.isfinite(times))[::-1]:
            if np.isfinite(ds.variables["position"][i]).all() and np.isfinite(ds.variables["velocity"][i]).all():
                last = int(i)
                break
        if last is None:
            raise ValueError(f"cannot resume {path!r}: it holds no complete particle record")
        for i in range(last + 1, len(times)):
            ds.variables["time"][i] = np.nan
        ds.setncattr("history", f"{ds.getncattr('history')}\n{_trajectory._timestamp()}: resumed at step "
                                f"{int(ds.variables['step'][last])}: {_trajectory._default_command()}")
        ds.sync()
        op_state = None
        group = ds.groups.get(_trajectory.RESUME_GROUP)
        if group is not None and "collision_state" in group.variables:
            blob = group.variables["collision_state"][last]
            if blob is not None and len(blob):
                op_state = _trajectory.unpack_state(blob)
        state = (int(ds.variables["step"][last]), np.array(ds.variables["position"][last]),
                 np.array(ds.variables["velocity"][last]), op_state)
    except Exception:
        ds.close()
        raise
    return _PICWriter(ds, path, last + 1), state


# --------------------------------------------------------------------------- run
@dataclass
class PICResult:
    """In-memory record of a run: ``time`` (K,) and each diagnostic of :func:`diagnostics`
    stacked over the saved steps; final ``position`` (N,) and ``velocity`` (N, d)."""
    config: PICConfig
    time: np.ndarray
    series: dict
    position: np.ndarray
    velocity: np.ndarray
    wall_time: float
    path: str | None = None


def step_generator(seed: int, step: int) -> np.random.Generator:
    """The generator of step ``step``'s random draws (random batches): seeded by (seed, step),
    so a resumed run draws exactly what the uninterrupted run drew (the project's one seeding
    helper; the third key keeps the stream apart from the solver's ``(seed, step)``)."""
    return seeded_numpy_generator(seed, step, 0x5EED)


def run(cfg: PICConfig, out=None, *, overwrite: bool = False, resume: bool = False,
        collisions: LandauCollisions | None = None, progress: bool = False, threads: int | None = None) -> PICResult:
    """Run a PIC simulation; write it to ``out`` (netCDF) when given.

    ``collisions`` overrides the operator built from ``cfg.collisions`` (e.g. to pass any
    estimator from a script); it is applied every ``cfg.collisions.every`` steps (every step
    when ``cfg.collisions`` is None). ``threads``: torch and numba threads for the run
    (:func:`particlescore.runtime.thread_limit`; None: ``runtime.default_threads(n_particles)``).
    On a busy machine one thread can be much faster: numba's OpenMP workers spin after each
    parallel kernel and slow the torch estimator calls in between (measured 35 s → 3 s on a
    loaded 2-core machine for tests/test_pic.py's relaxation case).
    """
    threads = runtime.resolve_threads(threads, cfg.n_particles)
    with runtime.thread_limit(threads):
        return _run(cfg, out, overwrite, resume, collisions, progress)


def _run(cfg, out, overwrite, resume, collisions, progress) -> PICResult:
    if not isinstance(cfg, PICConfig):
        raise ValueError(f"cfg must be a PICConfig, got {type(cfg).__name__}")
    if out is not None:
        out = _trajectory.check_output_path(out, overwrite=overwrite, resume=resume)
    elif resume:
        raise ValueError("resume=True needs an output file")
    op = collisions
    if op is None and cfg.collisions is not None:
        op = make_collisions(cfg.collisions, cfg.dim, cfg.seed)
    every = cfg.collisions.every if cfg.collisions is not None else 1
    L, C, dt = cfg.domain_length, cfg.n_cells, cfg.dt
    dx = L / C
    writer = None
    start = 0
    if resume:
        writer, (start, x, v, op_state) = _resume_point(out, cfg)
        if op is not None:
            if op_state is None and getattr(op, "warm_start", False):
                raise ValueError(f"cannot resume {out!r} exactly: it stores no collision operator state for the "
                                 f"warm-started collisions")
            if op_state is not None and hasattr(op, "load_state_dict"):
                op.load_state_dict(op_state)
    else:
        x, v = initial_state(cfg)
    series: dict[str, list] = {}
    times: list[float] = []
    try:
        if out is not None and not resume:
            estimator = op.describe() if op is not None else None
            weights = (estimator or {}).get("estimator", {})
            attrs = {"pic_config": cfg.to_dict(), "seed": cfg.seed, "particlescore_version": __version__,
                     "collisions": estimator, "weights_sha256": weights.get("weights_sha256", "")
                     if isinstance(weights, dict) else "",
                     "domain_length": L, "n_cells": C, "wavenumber": cfg.wavenumber,
                     "perturbation_amplitude": cfg.perturbation_amplitude,
                     "units": "normalised: omega_p = 1, lambda_D = 1, electron charge -1, mass 1, background density 1"}
            writer = _PICWriter.create(out, cfg, attrs)
        E = _field(cfg, x)

        def record(step: int, wall: float, with_particles: bool):
            diag = diagnostics(cfg, x, v, E)
            times.append(step * dt)
            for key, value in diag.items():
                series.setdefault(key, []).append(np.copy(value))
            if writer is not None:
                op_state = op.state_dict() if with_particles and hasattr(op, "state_dict") else None
                writer.append(step, step * dt, diag, x if with_particles else None, v if with_particles else None, wall,
                              op_state)

        if not resume:
            record(0, float("nan"), True)
        t0 = tick = _time.perf_counter()
        last_step = start
        n_steps = cfg.n_steps
        for step in range(start + 1, n_steps + 1):
            # leapfrog, kick-drift-kick: a = (q/m) E = −E on v_1
            v[:, 0] -= 0.5 * dt * _gather(E, x, L)
            x = (x + dt * v[:, 0]) % L
            E = _field(cfg, x)
            v[:, 0] -= 0.5 * dt * _gather(E, x, L)
            if op is not None and step % every == 0:
                cell = np.minimum((x / dx).astype(np.int64), C - 1)
                v = op.step(v, cell, every * dt, generator=step_generator(cfg.seed, step))
            if step % cfg.save_every == 0 or step == n_steps:
                now = _time.perf_counter()
                record(step, (now - tick) / (step - last_step), step % cfg.particle_save_every == 0 or step == n_steps)
                tick, last_step = now, step
                if progress:
                    print(f"step {step}/{n_steps} t = {step * dt:.3f} field energy {series['field_energy'][-1]:.3e}",
                          flush=True)
        wall = _time.perf_counter() - t0
    finally:
        if writer is not None:
            writer.close()
    return PICResult(cfg, np.array(times), {k: np.array(v_) for k, v_ in series.items()}, x, v, wall, out)


def run_from_config(data: dict, out, *, overwrite: bool = False, resume: bool = False,
                    device: str = "cpu") -> PICResult:
    """Run the ``[pic]`` table of a parsed TOML file (``data["pic"]``) and write ``out``.

    With ``resume`` the file's recorded configuration must equal this one. The PIC runs on the
    CPU (numpy/numba); ``device`` other than "cpu" is rejected with a clear error.
    """
    if not isinstance(data, dict) or "pic" not in data:
        raise ValueError("a PIC configuration needs a top-level [pic] table")
    extra = sorted(set(data) - {"pic"})
    if extra:
        raise ValueError(f"a PIC configuration holds only the [pic] table, got also {extra}")
    if device != "cpu":
        raise ValueError(f"the PIC runs on the CPU only; got device={device!r}")
    if out is None:
        raise ValueError("run_from_config needs an output path")
    cfg = config_from_dict(copy.deepcopy(data["pic"]))
    return run(cfg, os.fspath(out), overwrite=overwrite, resume=resume)
