"""particlescore: score-based particle simulations of kinetic equations.

Score estimators (DiScoFormer, KDE, EllipticalKDE, Blob, Exact, SBTM), test problems with exact solutions
(docs/equations.md), the particle solver and its netCDF trajectory files.
"""
from ._version import __version__
from . import runtime  # first: sets up the numba cache before any kernel is defined
from . import distributions, problems
from .discoformer import DiScoFormer
from .estimators import KDE, Blob, Exact, ScoreEstimator, oracle_bandwidth
from .elliptical import EllipticalKDE
from .metrics import log_density_mse, relative_score_mse
from . import registry
from .plotting import describe_trajectory, plot_trajectory
from .physics import FokkerPlanck, Landau
from .problems import (AnisotropicMaxwell, BKWProblem, CoulombRelaxation, MovingTrap, OrnsteinUhlenbeck,
                       Problem, PureDiffusion, problem_from_config)
from .sbtm import SBTM
from .recording import SaveAt
from .solver import BlowUpError, Euler, Heun, Solution, simulate
from .trajectory import TrajectoryWriter, open_trajectory
from . import collisions, pic  # cell-wise Landau collisions and the 1D-x PIC (issue 11)

__all__ = [
    "__version__", "distributions", "problems", "runtime",
    "ScoreEstimator", "DiScoFormer", "KDE", "EllipticalKDE", "Blob", "Exact", "SBTM", "oracle_bandwidth",
    "relative_score_mse", "log_density_mse",
    "Landau", "FokkerPlanck",
    "Problem", "BKWProblem", "AnisotropicMaxwell", "CoulombRelaxation", "OrnsteinUhlenbeck", "PureDiffusion",
    "MovingTrap", "problem_from_config",
    "simulate", "Euler", "Heun", "Solution", "SaveAt", "BlowUpError", "open_trajectory", "TrajectoryWriter",
    "registry", "plot_trajectory", "describe_trajectory",
    "collisions", "pic",
]
