"""Test problems with known answers (equations and sources: docs/equations.md).

A :class:`Problem` bundles the physics (right-hand side), the initial particle sampler, the
start time ``t0`` and whatever exact answers are known over time (density and score, mean,
covariance). Each problem has one name, its TOML name (``[problem] name = "bkw"``), registered
at the bottom of this module; its constructor's keyword arguments are its TOML options.
``problem.config()`` is plain data and ``problem_from_config(config)`` rebuilds the problem from
it (trajectory files record it so that a run can be resumed or reproduced).
"""
from __future__ import annotations

import dataclasses
import math

import torch

from . import distributions, registry
from ._validation import check_float, check_int
from .distributions import BKW, Gaussian, GaussianMixture, isotropic_gaussian
from .physics import FokkerPlanck, Landau

__all__ = [
    "Problem", "BKWProblem", "AnisotropicMaxwell", "CoulombRelaxation",
    "OrnsteinUhlenbeck", "PureDiffusion", "MovingTrap", "problem_from_config",
]

_F64 = torch.float64


class Problem:
    """Base class. Subclasses set ``name``, ``dim``, ``state_name``, ``physics``, ``t0``."""

    #: the problem's one name: its TOML name, recorded in files
    name: str = "problem"
    #: "velocity" (Landau) or "position" (Fokker–Planck): the state variable's name in files
    state_name: str = "position"
    dim: int
    t0: float = 0.0
    physics: object

    def initial_distribution(self) -> distributions.Distribution:
        """The law of the initial particles at ``t0``."""
        raise NotImplementedError

    def initial_state(self, n: int, *, generator: torch.Generator) -> torch.Tensor:
        """``n`` i.i.d. initial particles, torch float64 (n, d), drawn from ``generator``."""
        check_int("n", n, minimum=1)
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        return self.initial_distribution().sample(n, generator=generator).to(_F64)

    def exact_distribution(self, t: float) -> distributions.Distribution | None:
        """The exact solution at time ``t`` (log_prob, score, sample), or None when unknown."""
        return None

    def exact_mean(self, t: float) -> torch.Tensor | None:
        """Exact ensemble mean (d,) at ``t``, or None."""
        dist = self.exact_distribution(t)
        return None if dist is None else dist.mean.to(_F64)

    def exact_covariance(self, t: float) -> torch.Tensor | None:
        """Exact covariance (d, d) at ``t``, or None."""
        dist = self.exact_distribution(t)
        return None if dist is None else dist.covariance.to(_F64)

    def relaxation_time(self) -> float | None:
        """The problem's fastest time scale τ (None if unknown); the solver warns when dt > τ."""
        return None

    def config(self) -> dict:
        """Plain data that rebuilds this problem with :func:`problem_from_config`."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "problem")
        return f"{type(self).__name__}({args})"


# --------------------------------------------------------------------------- Landau problems
class BKWProblem(Problem):
    """BKW exact solution of the Maxwell-molecule Landau equation (γ = 0), dimension ``d ≥ 2``.

    Starts at ``t0 = log((d+2)/2)/(2B(d−1))`` from exact samples of ``f(t0)``; exact density
    and score at every time (:class:`particlescore.distributions.BKW`); mean 0, covariance I.
    ``random_batch_size``: use the random batch method (:class:`~particlescore.physics.Landau`).
    """

    name = "bkw"
    state_name = "velocity"

    def __init__(self, dim: int, B: float = 1.0 / 24.0, random_batch_size: int | None = None):
        self.dim = check_int("dim", dim, minimum=2)
        self.B = check_float("B", B, positive=True)
        self.t0 = BKW.start_time(dim, self.B)
        self.physics = Landau(gamma=0.0, B=self.B, random_batch_size=random_batch_size)

    def initial_distribution(self):
        return BKW(self.dim, self.t0, B=self.B)

    def exact_distribution(self, t):
        return BKW(self.dim, max(float(t), self.t0), B=self.B)

    def relaxation_time(self):
        """``1/(2B(d−1))``: the rate of ``K(t) = 1 − e^{−2B(d−1)t}·…`` in the BKW solution."""
        return 1.0 / (2.0 * self.B * (self.dim - 1))

    def config(self):
        return {"problem": self.name, "dim": self.dim, "B": self.B,
                "random_batch_size": self.physics.random_batch_size}


def anisotropic_initial_covariance(dim: int) -> torch.Tensor:
    """``Σ0 = diag(1.8, 0.2, 1, …, 1)``, the anisotropic start of the DiScoFormer paper's Landau
    experiment (arXiv 2511.05924; docs/equations.md); ``tr Σ0 / d = 1``."""
    diag = torch.ones(dim, dtype=_F64)
    diag[0], diag[1] = 1.8, 0.2
    return torch.diag(diag)


def _anisotropic_initial_components(dim: int, initial: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weights (K,), means (K, d) and covariances (K, d, d) of the initial law (K = 1: the Gaussian)."""
    cov = anisotropic_initial_covariance(dim)
    if initial == "gaussian":
        return torch.ones(1, dtype=_F64), torch.zeros(1, dim, dtype=_F64), cov[None]
    # Symmetric two-Gaussian mixture ½N(−μ, C) + ½N(μ, C) with μ = (c, 0, …) and the same
    # total covariance C + μμᵀ = Σ0: take C11 = 0.2·Σ0_11 = 0.36, so c = sqrt(0.8·1.8) = 1.2.
    c11 = 0.2 * float(cov[0, 0])
    shift = math.sqrt(float(cov[0, 0]) - c11)
    comp = cov.clone()
    comp[0, 0] = c11
    means = torch.zeros(2, dim, dtype=_F64)
    means[0, 0], means[1, 0] = -shift, shift
    return torch.tensor([0.5, 0.5], dtype=_F64), means, torch.stack([comp, comp])


def _anisotropic_initial(dim: int, initial: str) -> distributions.Distribution:
    weights, means, covs = _anisotropic_initial_components(dim, initial)
    if initial == "gaussian":
        return Gaussian(means[0], covs[0])
    return GaussianMixture(weights, means, covs)


class AnisotropicMaxwell(Problem):
    """Relaxation of an anisotropic distribution under Maxwell-molecule Landau (γ = 0).

    Initial law ``N(0, Σ0)``, ``Σ0 = diag(1.8, 0.2, 1, …, 1)`` (``initial="gaussian"``), or the
    symmetric two-Gaussian mixture with the same covariance (``initial="mixture"``). The second
    moments obey the closed linear ODE ``dΣ/dt = 4B(tr Σ·I − d·Σ)`` (weak form with
    ``φ = v_k v_l`` and integration by parts), so for any initial law
    ``Σ(t) = Σ∞ − (Σ∞ − Σ0) e^{−4dBt}``, ``Σ∞ = tr(Σ0)/d·I`` (docs/equations.md). The density is
    not known in closed form (a Gaussian does not stay Gaussian). ``random_batch_size``: use
    the random batch method (:class:`~particlescore.physics.Landau`).
    """

    name = "landau_maxwell_anisotropic"
    state_name = "velocity"

    def __init__(self, dim: int, B: float = 1.0 / 24.0, initial: str = "gaussian",
                 random_batch_size: int | None = None):
        self.dim = check_int("dim", dim, minimum=2)
        self.B = check_float("B", B, positive=True)
        if initial not in ("gaussian", "mixture"):
            raise ValueError(f"initial must be 'gaussian' or 'mixture', got {initial!r}")
        self.initial = initial
        self.t0 = 0.0
        self.physics = Landau(gamma=0.0, B=self.B, random_batch_size=random_batch_size)
        self.initial_covariance = anisotropic_initial_covariance(dim)
        self.equilibrium_covariance = torch.trace(self.initial_covariance) / dim * torch.eye(dim, dtype=_F64)

    def initial_distribution(self):
        return _anisotropic_initial(self.dim, self.initial)

    def exact_distribution(self, t):
        return None

    def exact_mean(self, t):
        return torch.zeros(self.dim, dtype=_F64)

    def exact_covariance(self, t):
        rate = 4.0 * self.dim * self.B
        decay = math.exp(-rate * (float(t) - self.t0))
        return self.equilibrium_covariance - (self.equilibrium_covariance - self.initial_covariance) * decay

    def exact_fourth_moment(self, t) -> float:
        """``E|v|⁴`` at time ``t``. For γ = 0 the weak form with ``φ = |v|⁴`` closes too,
        ``dM4/dt = −4B(d−1)·M4 + 4B(d+1)(tr Σ)² − 8B·tr(Σ²)`` (derived in docs/equations.md), and with
        Σ(t) above (``tr Σ(t)² = dT² + D·e^{−8dBt}``) it solves to

            M4(t) = d(d+2)T² + (M4(0) − d(d+2)T² − a)·e^{−4B(d−1)t} + a·e^{−8dBt},   a = 2D/(d+1),

        ``T = tr Σ0/d``, ``D = tr((Σ0 − Σ∞)²)``. A Gaussian with covariance Σ(t) has
        ``d(d+2)T² + 2D·e^{−8dBt}``: starting from a Gaussian, the solution's fourth moment exceeds it
        by ``(2dD/(d+1))(e^{−4B(d−1)t} − e^{−8dBt}) > 0`` — the law does not stay Gaussian."""
        d, B, t = self.dim, self.B, float(t) - self.t0
        T = float(torch.trace(self.initial_covariance)) / d
        D = float(((self.initial_covariance - self.equilibrium_covariance) ** 2).sum())
        a = 2.0 * D / (d + 1)
        m_inf = d * (d + 2) * T * T
        return m_inf + (self._initial_fourth_moment() - m_inf - a) * math.exp(-4 * B * (d - 1) * t) \
            + a * math.exp(-8 * d * B * t)

    def _initial_fourth_moment(self) -> float:
        """``E|v|⁴`` of the initial law: for ``N(μ, C)``, ``(tr C + |μ|²)² + 2 tr C² + 4μᵀCμ``
        (Isserlis), averaged over the mixture's components."""
        total = 0.0
        for w, mu, c in zip(*_anisotropic_initial_components(self.dim, self.initial)):
            total += float(w) * float((torch.trace(c) + mu @ mu) ** 2 + 2 * torch.trace(c @ c) + 4 * mu @ c @ mu)
        return total

    def relaxation_time(self):
        """``1/(4dB)``: the decay rate of ``Σ(t) − Σ∞``."""
        return 1.0 / (4.0 * self.dim * self.B)

    def config(self):
        return {"problem": self.name, "dim": self.dim, "B": self.B, "initial": self.initial,
                "random_batch_size": self.physics.random_batch_size}


class CoulombRelaxation(Problem):
    """Anisotropic relaxation under Coulomb Landau (γ = −3), same initial data as
    :class:`AnisotropicMaxwell`. Only the equilibrium covariance ``Σ∞ = tr(Σ0)/d·I`` is known
    (momentum and energy conservation), so ``exact_covariance`` returns None. The weight is
    regularised as ``(|z|² + δ²)^{−3/2}`` with ``δ = regularization`` (default 1e-3, i.e.
    1e-3 of the unit thermal speed).
    """

    name = "landau_coulomb"
    state_name = "velocity"

    def __init__(self, dim: int = 3, B: float = 1.0 / 24.0, initial: str = "gaussian",
                 regularization: float = 1e-3, random_batch_size: int | None = None):
        self.dim = check_int("dim", dim, minimum=2)
        self.B = check_float("B", B, positive=True)
        if initial not in ("gaussian", "mixture"):
            raise ValueError(f"initial must be 'gaussian' or 'mixture', got {initial!r}")
        self.initial = initial
        self.regularization = check_float("regularization", regularization, minimum=0.0)
        self.t0 = 0.0
        self.physics = Landau(gamma=-3.0, B=self.B, regularization=self.regularization,
                              random_batch_size=random_batch_size)
        self.initial_covariance = anisotropic_initial_covariance(dim)
        self.equilibrium_covariance = torch.trace(self.initial_covariance) / dim * torch.eye(dim, dtype=_F64)

    def initial_distribution(self):
        return _anisotropic_initial(self.dim, self.initial)

    def exact_mean(self, t):
        return torch.zeros(self.dim, dtype=_F64)

    def exact_covariance(self, t):
        return None

    def relaxation_time(self):
        """``1/(4dB)``, the Maxwell-molecule rate at unit thermal speed (an estimate: the Coulomb
        rate is of that order at thermal speeds and faster for slow relative velocities)."""
        return 1.0 / (4.0 * self.dim * self.B)

    def config(self):
        return {"problem": self.name, "dim": self.dim, "B": self.B, "initial": self.initial,
                "regularization": self.regularization, "random_batch_size": self.physics.random_batch_size}


# --------------------------------------------------------------------------- Fokker–Planck problems
def ou_drift(t: float, x: torch.Tensor) -> torch.Tensor:
    """Ornstein–Uhlenbeck drift ``b(x) = −x``."""
    return -x


def zero_drift(t: float, x: torch.Tensor) -> torch.Tensor:
    """No drift: pure diffusion."""
    return torch.zeros_like(x)


class OrnsteinUhlenbeck(Problem):
    """``b = −x``, ``D = 1`` from ``N(0, (1 − e^{−2t0}) I)``: ``f(t) = N(0, (1 − e^{−2t}) I)``."""

    name = "ornstein_uhlenbeck"
    state_name = "position"

    def __init__(self, dim: int, t0: float = 0.5):
        self.dim = check_int("dim", dim, minimum=1)
        self.t0 = check_float("t0", t0, positive=True)
        self.physics = FokkerPlanck(ou_drift, 1.0)

    def variance(self, t: float) -> float:
        return -math.expm1(-2.0 * float(t))

    def initial_distribution(self):
        return self.exact_distribution(self.t0)

    def exact_distribution(self, t):
        return isotropic_gaussian(self.dim, self.variance(t), dtype=_F64)

    def relaxation_time(self):
        """``1/2``: the variance relaxes as ``e^{−2t}``."""
        return 0.5

    def config(self):
        return {"problem": self.name, "dim": self.dim, "t0": self.t0}


class PureDiffusion(Problem):
    """``b = 0``: ``f(t) = N(0, 2Dt·I)`` (the heat kernel), started at ``t0 > 0``."""

    name = "pure_diffusion"
    state_name = "position"

    def __init__(self, dim: int, D: float = 1.0, t0: float = 0.5):
        self.dim = check_int("dim", dim, minimum=1)
        self.D = check_float("D", D, positive=True)
        self.t0 = check_float("t0", t0, positive=True)
        self.physics = FokkerPlanck(zero_drift, self.D)

    def initial_distribution(self):
        return self.exact_distribution(self.t0)

    def exact_distribution(self, t):
        return isotropic_gaussian(self.dim, 2.0 * self.D * float(t), dtype=_F64)

    def relaxation_time(self):
        """``t0``: the variance ``2Dt`` changes at the relative rate ``1/t``, fastest at the start."""
        return self.t0

    def config(self):
        return {"problem": self.name, "dim": self.dim, "D": self.D, "t0": self.t0}


class _TrapDrift:
    """``b(x, t) = (β(t) − x) + α(x − mean(x))``, ``β(t) = a(cos πwt, sin πwt)``."""

    __name__ = "moving_trap_drift"

    def __init__(self, a: float, w: float, alpha: float):
        self.a, self.w, self.alpha = a, w, alpha

    def beta(self, t: float) -> torch.Tensor:
        angle = math.pi * self.w * t
        return torch.tensor([self.a * math.cos(angle), self.a * math.sin(angle)], dtype=_F64)

    def __call__(self, t, x):
        return (self.beta(t).to(x) - x) + self.alpha * (x - x.mean(0))


class MovingTrap(Problem):
    """Moving harmonic trap with mean-field repulsion (Boffi & Vanden-Eijnden 2023), d = 2:

    ``b(x, t) = (β(t) − x) + α(x − mean(x))``, ``β(t) = a(cos πwt, sin πwt)``, diffusion ``D``,
    start ``N(β(0), σ0² I)`` at ``t0 = 0`` (defaults a = 2, w = 1, α = 0.5, D = 0.25,
    σ0² = 0.25). The solution stays Gaussian, ``f(t) = N(m(t), σ²(t) I)``:

    * mean ``m' = β − m``: with ``ω = πw``,
      ``m₁ = a[cos ωt + ω sin ωt + ω² e^{−t}]/(1+ω²)``, ``m₂ = a[sin ωt − ω cos ωt + ω e^{−t}]/(1+ω²)``;
    * variance ``(σ²)' = −2(1−α)σ² + 2D``: ``σ²(t) = σ∞² + (σ0² − σ∞²) e^{−2(1−α)t}``,
      ``σ∞² = D/(1−α)`` (needs α < 1).
    """

    name = "moving_trap"
    state_name = "position"

    def __init__(self, a: float = 2.0, w: float = 1.0, alpha: float = 0.5, D: float = 0.25,
                 initial_variance: float = 0.25, dim: int = 2):
        if dim != 2:
            raise ValueError(f"dim: the moving_trap problem is two-dimensional, got dim = {dim!r}")
        self.dim = 2
        self.t0 = 0.0
        self.a = float(a)
        self.w = float(w)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha < 1:
            raise ValueError(f"alpha must be a float < 1 (confining trap), got {alpha!r}")
        self.alpha = float(alpha)
        self.D = check_float("D", D, positive=True)
        self.initial_variance = check_float("initial_variance", initial_variance, positive=True)
        self.drift = _TrapDrift(self.a, self.w, self.alpha)
        self.physics = FokkerPlanck(self.drift, self.D)

    def beta(self, t: float) -> torch.Tensor:
        return self.drift.beta(float(t))

    def exact_mean(self, t):
        t = float(t)
        om = math.pi * self.w
        c, s, e = math.cos(om * t), math.sin(om * t), math.exp(-t)
        k = self.a / (1.0 + om * om)
        return torch.tensor([k * (c + om * s + om * om * e), k * (s - om * c + om * e)], dtype=_F64)

    def variance(self, t: float) -> float:
        limit = self.D / (1.0 - self.alpha)
        return limit + (self.initial_variance - limit) * math.exp(-2.0 * (1.0 - self.alpha) * float(t))

    def initial_distribution(self):
        return self.exact_distribution(0.0)

    def exact_distribution(self, t):
        return isotropic_gaussian(2, self.variance(t), mean=self.exact_mean(t), dtype=_F64)

    def relaxation_time(self):
        """``min(1/(2(1−α)), 1, 1/(πw))``: variance relaxation, mean relaxation, trap rotation."""
        return min(1.0 / (2.0 * (1.0 - self.alpha)), 1.0, 1.0 / (math.pi * self.w) if self.w else math.inf)

    def config(self):
        return {"problem": self.name, "a": self.a, "w": self.w, "alpha": self.alpha, "D": self.D,
                "initial_variance": self.initial_variance}


def problem_from_config(config: dict) -> Problem:
    """Rebuild a problem from ``problem.config()`` (``{"problem": name, **options}``).

    Files written before problems had one name record the class name (``"BKWProblem"``),
    which is accepted too.
    """
    if not isinstance(config, dict) or "problem" not in config:
        raise ValueError(f"config must be a dict with a 'problem' key, got {config!r}")
    options = dict(config)
    name = options.pop("problem")
    by_class = {entry.factory.__name__: entry.name for entry in registry.entries("problem")}
    entry = registry.resolve("problem", by_class.get(name, name))
    unknown = set(options) - {field.name for field in dataclasses.fields(entry.options)}
    if unknown:
        raise ValueError(f"bad arguments for problem {entry.name!r}: unknown {sorted(unknown)}")
    return entry.create(options)


registry.register("problem", "bkw", BKWProblem)
registry.register("problem", "landau_maxwell_anisotropic", AnisotropicMaxwell)
registry.register("problem", "landau_coulomb", CoulombRelaxation)
registry.register("problem", "ornstein_uhlenbeck", OrnsteinUhlenbeck)
registry.register("problem", "pure_diffusion", PureDiffusion)
registry.register("problem", "moving_trap", MovingTrap)
