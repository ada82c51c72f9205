"""particlescore: score-based particle simulations of kinetic equations.

See README.md and the design reference; the public interface is re-exported here.
"""
from ._version import __version__
from .estimators import KDE, Blob, Exact, ScoreEstimator, oracle_bandwidth
from .discoformer import DiScoFormer
from .metrics import log_density_mse, relative_score_mse
from . import distributions

__all__ = [
    "__version__", "ScoreEstimator", "DiScoFormer", "KDE", "Blob", "Exact", "oracle_bandwidth",
    "relative_score_mse", "log_density_mse", "distributions",
]
