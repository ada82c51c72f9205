"""DiScoFormer as a score estimator: shipped weights, test-time adaptation, warm starts.

Weights are safetensors files (tensors only, no code is ever unpickled) whose metadata holds
the network's config as JSON. ``DiScoFormer.pretrained(dim=d)`` loads the file shipped inside
the package for dimension ``d`` when there is one (d = 1, 2, 3, 10), and otherwise the one
rotation-equivariant network trained for every ``d`` up to its ``max_dim``
(``model.EquivariantDiScoFormerNet``); ``network="equivariant"`` asks for it in any d. The
per-dimension files of d = 3 and 10 were fine-tuned on Student-t mixtures and rotated Laplace
laws beside Gaussian mixtures (``particlescore.training.data``); the weights trained on Gaussian
mixtures alone stay shipped as ``discoformer_d{d}_gmm`` (``network="per-dim-gmm"``). The d = 2 and 3
files also have the elliptical candidate and the shape features (``model.DiScoFormerConfig``), and
the d = 2 file counts every context point in its ``log n`` (``log_n_all_points``).

Test-time adaptation (DiScoFormer, arXiv 2511.05924, §TTA): with the context fixed and the
queries set to the context points, take ``adapt_steps`` Adam steps on the label-free
consistency loss ``mean_i ‖S(y_i) − ∇_y T(y_i)‖²`` between the score head ``S`` and the
gradient of the log-density head ``T``. Only the output layer norm and head adapt (the part
that mixes the kernel candidates); the context encoder stays as trained. Drift over hundreds
of warm-started calls is bounded by a proximal term ``(λ/2)‖θ − θ₀‖²`` in the loss and by
projecting ``θ`` back into the ball ``‖θ − θ₀‖ ≤ ρ·‖θ₀‖`` after every step. Steps that raise the
consistency loss are undone. The consistency loss is not the score error, though (on BKW in
d = 2 adaptation that lowered it raised the error): with ``adapt_holdout = v`` each call holds v
particles (at most n/4) out of the context and keeps, of the head it started from, the adapted
head and the pretrained head, the one with the lowest score-matching loss ``mean ½|s|² + ∇·s``
(Hyvärinen 2005) on the held-out particles, an estimate of the score error up to a constant
(docs/adaptation.md).

Warm start (``warm_start=True``, the solver's mode; issue 8 item 1): each call starts from the
state the previous call left, on the premise that consecutive contexts are the same ensemble a
small time step apart.
- Mixture fit: the last fit is carried into the new whitening frame (``w' = L'⁻¹(Lw + μ − μ')``)
  and refined by ``warm_iters`` EM steps on all n points. The split/BIC search reruns when
  ``refit_every`` calls have passed, or when the warm fit's log-likelihood gain over the sample
  Gaussian per point drops below the gain right after the last search by more than half the BIC
  penalty of one component per point, ``(d + d(d+1)/2 + 1)·log n / (2n)`` (the fit has lost
  more than one component is worth), or by more than ``DEGRADED_FRACTION`` = 10 % of that gain,
  whichever is larger (:func:`fit_degraded`). The penalty alone vanishes at large n, while an
  ensemble that relaxes towards a Gaussian loses gain every step without the fit getting worse:
  BKW, d = 2, n = 25 600, dt = 0.02, 50 Euler steps from t0, two seeds, the penalty alone
  searched 26 and 25 times (2.16 / 2.11 s per call) for a time-averaged score error of 4.11 /
  4.74 %; with the 10 % floor 5 and 5 times (1.74 / 1.78 s) for 3.83 / 4.59 % (only every
  ``refit_every`` calls: 1.61 / 1.62 s, 3.35 / 4.62 %). Below a few thousand points the penalty
  is the larger bound unless the gain exceeds ten times it. A warm search stops growing once BIC
  has not improved for ``search_patience`` more components (0: up to the config's maximum, as
  a cold call and training do); on single Gaussians that is 3 of 9 splits. BIC is not monotone in K (the first splits of
  a whitened, nearly isotropic cloud can miss the separating direction: two modes in d = 10 were
  found at K = 4 after K = 2 and 3 lost), so the default is 3: on 216 draws of the training
  families (d = 2, 3, 10; n = 256, 1024) it chose the full search's fit every time, patience 2
  differed once. Measured (n = 500, one thread): the same BKW trajectories to the printed digits
  (d = 2 and 3, time-averaged score error 6.631 % and 3.441 %) at 12–15 % less time per step.
  The search stays on all n points: on a subsample of 16384 (BKW d = 2, n = 40000) BIC picked
  5 components instead of 10 and the score error rose from 8.4 % to 10.4 % for a 7 % saving in
  time. The warm search's fit replaces the warm-refined one only where its score-matching loss
  on the points, ``mean ½|s|² + ∇·s`` of the mixture alone (Hyvärinen 2005; closed form,
  :func:`~particlescore.candidates.mixture_score_matching_loss`), is lower: BIC weighs the
  likelihood, not the score. Measured (BKW, d = 2, n = 25 600, Euler, dt = 0.02): at t0 + 0.38 a
  search re-picked 5 of 10 components and the score error jumped from 1.91 to 3.79 % (the full
  search and a BIC comparison pick the same); with the choice the 10 components stayed and the
  error kept falling, 1.81 % there and 0.53 % at t0 + 1 (1.55 % before). At n = 500 (BKW d = 2,
  warm, Euler, 3 seeds, 3 time units) the time-averaged error fell from 7.50 to 6.12 %; d = 3 was
  unchanged. Per-cell warm starts (:meth:`evaluate_cells`) follow the same rule.
- Test-time adaptation: the adapted head carries over.
- Bounded context: the same seeded subsample of particle indices every call, warm or cold (the
  subsample moves with its particles). A fresh draw per step was tried (random batches, whose
  errors decorrelate from step to step) and was worse: its step-to-step jumps in the score act
  as noise on the particles. BKW, d = 2, n = 25 600, Euler, dt = 0.02, score error at
  t0 + 0.1 … t0 + 1 averaged: 3.25 / 3.74 % with fresh draws, 2.65 / 3.24 % with fixed ones
  (seeds 0 / 1; lower at 16 of the 20 saved times).
Heun's corrector call therefore reuses the predictor call's fit. For direct API calls the same
holds: results depend on the call history (and on ``state_dict()``), so use
``warm_start=True`` only for sequences of slowly changing ensembles; :meth:`reset` forgets it.
With ``warm_start=False`` every call is a pure function of its input.

Bounded cost (issue 8 item 2): a call with n context points and m queries uses the whole
context when ``n·m ≤ max_pairs``; otherwise the kernel bank and the attention see a seeded
random subsample of ``P = max(max_context, max_pairs // m)`` points (bank bandwidths and
``log n`` from P), while whitening and the mixture fit use all n points (O(n) each); queries run
in chunks. A solver call (m = n) then costs O(n·P) instead of O(n²), and evaluations at a few
queries (the score table: m = 512) keep the full context up to n = max_pairs/m. The choice was
measured (issue 8 item 2; ``benchmarks/solver_scale.py``): at n = 16384, m = 512 a 2048-point
context raised the score-table error from 1.18 % to 1.94 % (d = 2), hence the pair budget.
``max_context=None`` turns the subsample off.

The kernel bank carries the accuracy that a subsample loses, the attention does not (BKW, d = 2,
n = 8192, Euler, 50 steps of 0.02 from t0: with the bank on all n points and the attention on
2048 the score errors at t0 + 0.1 … t0 + 1 were those of the full context to within 0.2 points,
7.03 … 1.66 % against 7.02 … 1.54 %, where the bank on the attention's 2048 gave 8.69 … 2.06 %).
So the bank sees more points than the attention: the first ``P_b = ⌊P·(n/P)^γ⌋`` points of the
same random order (nested), γ = ``bank_growth`` (default 0.2; 0: the attention's P, the previous
behaviour; 1: all n, O(n²)), with bandwidths from P_b; ``log n`` stays the attention's. Its cost
O(n·P_b) grows like n^{1+γ}: γ = 0.2 is the fastest growth within a cost slope of 1.2 in n,
and it makes the kernel candidates, not only the mixture, improve with n.

Moment projection (``moment_projection=True``; ``particlescore.stein``): when the queries are the
context points (the solver's call), the score is corrected by the least-squares field that makes
it obey Stein's identity on the particles' own empirical measure for the fields that drive the
Landau second moments. The particle covariance then follows the exact Maxwell-molecule moment
ODE; the score moves away from the smooth density's score by the empirical sampling noise
(docs/moment_projection.md has the measured trade-off). The log-density is left as it is.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.nn.attention import SDPBackend, sdpa_kernel

from . import registry
from ._validation import as_particles, check_min_particles
from .estimators import ScoreEstimator
from .affine import AffineFrame, EncodedContext, WhitenedModel, context_radius
from .candidates import (Mixture, elliptical_fits, mixture_score_matching_loss, refit_mixture,
                         reframe_mixture, select_mixture)
from .model import DiScoFormerConfig, DiScoFormerNet, build_network
from .stein import project_score

__all__ = ["DiScoFormer", "save_weights", "load_weights", "WEIGHTS_DIR", "available_dims", "supported_dims"]

WEIGHTS_DIR = Path(__file__).parent / "weights"
WEIGHTS_FORMAT = "particlescore-discoformer-1"


EQUIVARIANT = "equivariant"   # the weights file stem suffix of the any-d network
PER_DIM_GMM = "per-dim-gmm"   # network= of the per-dimension weights trained on Gaussian mixtures alone


def weights_path(dim: int | str) -> Path:
    """The shipped file for dimension ``dim``, for the any-d network (``dim="equivariant"``), or
    for a key of :func:`gmm_only_key` (``"3_gmm"``: ``discoformer_d3_gmm``)."""
    return WEIGHTS_DIR / f"discoformer_{'' if dim == EQUIVARIANT else 'd'}{dim}.safetensors"


def _gmm_only_key_or_none(dim: int) -> int | str | None:
    for key in (f"{dim}_gmm", dim):
        card = weights_path(key).with_suffix(".json")
        if weights_path(key).is_file() and card.is_file() and "families" not in json.loads(card.read_text()):
            return key
    return None


def gmm_only_key(dim: int) -> int | str:
    """The :func:`weights_path` key of the shipped per-dimension weights for ``dim`` that were
    trained on Gaussian mixtures alone (their card records no ``families``): ``"{dim}_gmm"``
    where the default file was fine-tuned on more families, else ``dim`` itself. ValueError if none."""
    key = _gmm_only_key_or_none(dim)
    if key is None:
        have = [d for d in available_dims() if _gmm_only_key_or_none(d) is not None]
        raise ValueError(f"no DiScoFormer weights trained on Gaussian mixtures alone for dim={dim}; "
                         f"network='per-dim-gmm' serves dims {have}")
    return key


def available_dims() -> tuple[int, ...]:
    """Dimensions with their own weights shipped inside the package (see :func:`supported_dims`)."""
    dims = []
    for path in WEIGHTS_DIR.glob("discoformer_d*.safetensors"):
        try:
            dims.append(int(path.stem.split("_d")[-1]))
        except ValueError:
            continue
    return tuple(sorted(dims))


def equivariant_max_dim() -> int:
    """The largest d the shipped any-d network serves (0 when it is not shipped)."""
    path = weights_path(EQUIVARIANT)
    if not path.is_file():
        return 0
    try:
        with safe_open(str(path), framework="pt") as handle:
            return int(json.loads((handle.metadata() or {})["config"])["max_dim"])
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"corrupt DiScoFormer weights file {path}: {err}") from err


def supported_dims() -> tuple[int, ...]:
    """Every d that :meth:`DiScoFormer.pretrained` serves: the per-dimension weights and 1 … the
    any-d network's ``max_dim``."""
    return tuple(sorted(set(available_dims()) | set(range(1, equivariant_max_dim() + 1))))


def _describe_dims(dims) -> str:
    """``1–100`` for a contiguous range, else the list."""
    dims = list(dims)
    if dims and dims == list(range(dims[0], dims[-1] + 1)) and len(dims) > 3:
        return f"{dims[0]}–{dims[-1]}"
    return str(dims)


def recorded_sha256(dim: int | str) -> str:
    """The sha256 recorded for the shipped weights of dimension ``dim`` in their JSON model card
    (written by training next to the weights file; ValueError if the card is missing or broken)."""
    card = weights_path(dim).with_suffix(".json")
    try:
        sha = json.loads(card.read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"cannot read the checksum of the shipped weights from {card}: {err}") from err
    if not (isinstance(sha, str) and len(sha) == 64):
        raise ValueError(f"{card} records no valid sha256 (got {sha!r})")
    return sha


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_weights(net: DiScoFormerNet, path: str | Path, extra: dict | None = None) -> str:
    """Write ``net`` to a safetensors file with its config (and ``extra``) as metadata; return sha256."""
    metadata = {"format": WEIGHTS_FORMAT, "config": json.dumps(net.config.to_dict())}
    for key, value in (extra or {}).items():
        metadata[key] = value if isinstance(value, str) else json.dumps(value)
    tensors = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    save_file(tensors, str(path), metadata=metadata)
    return file_sha256(path)


def load_weights(path: str | Path) -> tuple[DiScoFormerNet, dict]:
    """Read a weights file written by :func:`save_weights`; ValueError if corrupt or mismatched."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as err:  # safetensors raises its own error types for corrupt headers/data
        raise ValueError(f"corrupt DiScoFormer weights file {path}: {err}") from err
    if metadata.get("format") != WEIGHTS_FORMAT:
        raise ValueError(f"{path} is not a DiScoFormer weights file (format {metadata.get('format')!r}, "
                         f"expected {WEIGHTS_FORMAT!r})")
    try:
        config = DiScoFormerConfig.from_dict(json.loads(metadata["config"]))
    except (KeyError, ValueError, TypeError) as err:
        raise ValueError(f"weights file {path} has a broken config: {err}") from err
    try:
        net = build_network(config)
    except ValueError as err:
        raise ValueError(f"weights file {path} has a broken config: {err}") from err
    expected = net.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in set(expected) & set(tensors) if expected[k].shape != tensors[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(f"weights file {path} does not match its config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}")
    net.load_state_dict(tensors)
    for key, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            raise ValueError(f"weights file {path} holds non-finite values in {key}")
    net.eval()
    return net, metadata


#: a warm fit is searched afresh once its log-likelihood gain per point over the sample Gaussian
#: has fallen by more than this fraction of the gain right after the last search (fit_degraded)
DEGRADED_FRACTION = 0.1


def fit_degraded(gain: torch.Tensor, gain_ref: torch.Tensor, n, d: int) -> torch.Tensor:
    """(B,) True where a warm fit's gain per point over the sample Gaussian (B,) has fallen below
    the gain after the last search (B,) by more than ``max(penalty, DEGRADED_FRACTION·gain_ref)``,
    ``penalty = (d + d(d+1)/2 + 1)·log n/(2n)`` half the BIC penalty of one component per point
    (n int or (B,)). The penalty alone vanishes like log n/n: at n = 25 600 (BKW, d = 2) the
    relaxation towards the Maxwellian lowered the gain by more than that every other step, and
    each search (1 s there) restarted the fit from a worse split than the tracked one (module
    docstring)."""
    n = torch.as_tensor(n, dtype=torch.float64, device=gain.device)
    penalty = (d + d * (d + 1) / 2 + 1) * torch.log(n) / (2 * n)
    return gain < gain_ref - torch.maximum(penalty, DEGRADED_FRACTION * gain_ref)


class DiScoFormer(ScoreEstimator):
    """Pretrained transformer score estimator (see module docstring).

    ``adapt_steps`` Adam steps of test-time adaptation (learning rate ``adapt_lr``) on each call;
    ``warm_start=True`` carries the adapted head and the mixture fit to the
    next call (the solver's mode; module docstring), with ``warm_iters`` EM steps per call and a
    full split/BIC search (stopped by ``search_patience``) at least every ``refit_every`` calls;
    :meth:`reset` returns to the pretrained weights and a cold fit. ``adapt_points`` caps how
    many context points serve as adaptation queries; ``max_context`` and ``max_pairs`` bound the
    context of the kernel bank and attention, ``bank_growth`` lets the bank's grow with n
    (module docstring).
    ``adapt_holdout`` particles held out per call choose the head by held-out score matching
    (module docstring; 0: off).
    ``moment_projection`` corrects the score at the context points with
    :func:`particlescore.stein.project_score` (module docstring).
    ``state_dict()``/``load_state_dict()`` save and restore everything a warm start carries.
    """

    def __init__(self, net: DiScoFormerNet, *, dim: int | None = None, adapt_steps: int = 0, adapt_lr: float = 1e-3,
                 warm_start: bool = False, proximal: float = 1e-2, max_drift: float = 0.5,
                 adapt_points: int = 256, warm_iters: int = 3, refit_every: int = 25, search_patience: int = 3,
                 max_context: int | None = 2048, max_pairs: int = 2 ** 23, bank_growth: float = 0.2,
                 moment_projection: bool = False, adapt_holdout: int = 0, source: str = "<in memory>",
                 sha256: str | None = None):
        if not isinstance(adapt_steps, int) or isinstance(adapt_steps, bool) or adapt_steps < 0:
            raise ValueError(f"adapt_steps must be a non-negative int, got {adapt_steps!r}")
        if not adapt_lr > 0:
            raise ValueError(f"adapt_lr must be positive, got {adapt_lr!r}")
        if net.config.dim == 0:   # the any-d network: the estimator fixes d
            if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= net.config.max_dim:
                raise ValueError(f"the equivariant DiScoFormer serves dim = 1 … {net.config.max_dim}; pass dim=, got {dim!r}")
        elif dim is not None and dim != net.config.dim:
            raise ValueError(f"dim={dim!r} does not match the network's dim={net.config.dim}")
        dim = net.config.dim or dim
        for name, value, low in (("warm_iters", warm_iters, 0), ("refit_every", refit_every, 1),
                                 ("search_patience", search_patience, 0),
                                 ("adapt_holdout", adapt_holdout, 0),
                                 ("max_pairs", max_pairs, 1),
                                 ("max_context", 2 * (dim + 1) if max_context is None else max_context,
                                  2 * (dim + 1))):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an int >= {low}{' or None' if name == 'max_context' else ''}, "
                                 f"got {value!r}")
        if isinstance(bank_growth, bool) or not isinstance(bank_growth, (int, float)) or not 0 <= bank_growth <= 1:
            raise ValueError(f"bank_growth must be a number in [0, 1], got {bank_growth!r}")
        self.bank_growth = float(bank_growth)
        self.warm_iters, self.refit_every, self.max_context = warm_iters, refit_every, max_context
        self.search_patience = search_patience
        self.adapt_holdout = adapt_holdout
        self.max_pairs = max_pairs
        if not isinstance(moment_projection, bool):
            raise ValueError(f"moment_projection must be true or false, got {moment_projection!r}")
        self.moment_projection = moment_projection
        self.net = net.eval()
        self.model = WhitenedModel(self.net)
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.dim = dim
        self.adapt_steps, self.adapt_lr, self.warm_start = adapt_steps, float(adapt_lr), bool(warm_start)
        self.proximal, self.max_drift, self.adapt_points = float(proximal), float(max_drift), int(adapt_points)
        self.source, self.sha256 = source, sha256
        self._pretrained = [p.detach().clone() for p in net.adaptable_parameters()]
        self._last_consistency: float | None = None
        self._fit: dict | None = None     # warm-start mixture state (see _warm_fit)
        self._calls = 0                   # calls since reset (seeds the held-out draw when warm)

    # ------------------------------------------------------------------ construction
    @classmethod
    def pretrained(cls, dim: int, *, network: str = "auto", adapt_steps: int = 0, adapt_lr: float = 1e-3,
                   warm_start: bool = False, warm_iters: int = 3, refit_every: int = 25, search_patience: int = 3,
                   max_context: int | None = 2048, max_pairs: int = 2 ** 23, bank_growth: float = 0.2,
                   moment_projection: bool = False, adapt_holdout: int = 0) -> "DiScoFormer":
        """The shipped weights for dimension ``dim``. ``network``: ``"auto"`` (the weights trained
        for ``dim`` when shipped, else the any-d network), ``"per-dim"``, ``"per-dim-gmm"`` (the
        per-dimension weights trained on Gaussian mixtures alone, :func:`gmm_only_key`) or
        ``"equivariant"``. ValueError listing the supported dims otherwise."""
        if network not in ("auto", "per-dim", PER_DIM_GMM, EQUIVARIANT):
            raise ValueError(f"network must be 'auto', 'per-dim', 'per-dim-gmm' or 'equivariant', got {network!r}")
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise ValueError(f"dim must be an int, got {dim!r}")
        options = dict(adapt_steps=adapt_steps, adapt_lr=adapt_lr, warm_start=warm_start, warm_iters=warm_iters,
                       refit_every=refit_every, search_patience=search_patience, max_context=max_context,
                       max_pairs=max_pairs, bank_growth=bank_growth, moment_projection=moment_projection,
                       adapt_holdout=adapt_holdout)
        if network == PER_DIM_GMM:
            key = gmm_only_key(dim)
            return cls.from_file(weights_path(key), expected_sha256=recorded_sha256(key), **options)
        own = weights_path(dim).is_file() if dim >= 1 else False
        use_equivariant = network == EQUIVARIANT or (network == "auto" and not own)
        if use_equivariant and not 1 <= dim <= equivariant_max_dim():
            raise ValueError(f"no pretrained DiScoFormer weights for dim={dim}; supported dims: "
                             f"{_describe_dims(supported_dims())} (train with `python -m particlescore.training --dim {dim}`)")
        if not use_equivariant and not own:
            raise ValueError(f"no per-dimension DiScoFormer weights for dim={dim}; available: {list(available_dims())} "
                             f"(network='auto' or 'equivariant' serves dims {_describe_dims(supported_dims())})")
        key = EQUIVARIANT if use_equivariant else dim
        return cls.from_file(weights_path(key), dim=dim if use_equivariant else None,
                             expected_sha256=recorded_sha256(key), **options)

    @classmethod
    def from_file(cls, path, *, dim: int | None = None, adapt_steps: int = 0, adapt_lr: float = 1e-3,
                  warm_start: bool = False, warm_iters: int = 3, refit_every: int = 25, search_patience: int = 3,
                  max_context: int | None = 2048, max_pairs: int = 2 ** 23, bank_growth: float = 0.2,
                  moment_projection: bool = False, adapt_holdout: int = 0,
                  expected_sha256: str | None = None) -> "DiScoFormer":
        """Weights from any file written by :func:`save_weights` (``dim``: required for the any-d
        network); with ``expected_sha256`` the file's checksum must match (ValueError otherwise)."""
        sha = file_sha256(path) if Path(path).is_file() else None
        if expected_sha256 is not None and sha is not None and sha != expected_sha256:
            raise ValueError(f"weights file {path} is corrupt or was modified: its sha256 is {sha}, but "
                             f"{expected_sha256} was recorded for it; reinstall particlescore (or rebuild the "
                             f"weights with `python -m particlescore.training`)")
        net, _ = load_weights(path)
        return cls(net, dim=dim, adapt_steps=adapt_steps, adapt_lr=adapt_lr, warm_start=warm_start,
                   warm_iters=warm_iters, refit_every=refit_every, search_patience=search_patience,
                   max_context=max_context, max_pairs=max_pairs, bank_growth=bank_growth,
                   moment_projection=moment_projection, adapt_holdout=adapt_holdout,
                   source=Path(path).name, sha256=sha)

    # ------------------------------------------------------------------ state
    def to(self, device) -> "DiScoFormer":
        """Move the network, the pretrained copy of the adapted parameters and the warm-start
        state to ``device`` (e.g. ``"cuda"``); returns ``self``. Inputs must live there too."""
        device = torch.device(device)
        self.net.to(device)
        self.model.to(device)
        self._pretrained = [p.to(device) for p in self._pretrained]
        if self._fit is not None:
            self._fit = {key: value.to(device) for key, value in self._fit.items()}
        return self

    def reset(self) -> None:
        """Return the adapted parameters to the pretrained values and forget the warm fit."""
        with torch.no_grad():
            for p, p0 in zip(self.net.adaptable_parameters(), self._pretrained):
                p.copy_(p0)
        self._last_consistency = None
        self._fit = None
        self._calls = 0

    _FIT_KEYS = ("log_weight", "mean", "chol", "frame_mean", "frame_chol", "frame_log_det", "age", "gain_ref")

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Everything a warm start carries, as CPU tensors with stable names: ``adapted.<i>``
        (the adaptable parameters), ``calls``, and, once a warm fit exists, ``fit.<key>`` for the
        mixture (whitened units), the frame it lives in, its age and reference gain. Restoring it
        with :meth:`load_state_dict` makes the next call bitwise equal to an uninterrupted run.
        The solver stores it with every trajectory record and restores it on resume
        (``particlescore.solver.Stateful``): any new state carried between calls belongs here."""
        state = {f"adapted.{i}": p.detach().cpu().clone().contiguous()
                 for i, p in enumerate(self.net.adaptable_parameters())}
        state["calls"] = torch.tensor(self._calls, dtype=torch.int64)
        if self._fit is not None:
            state.update({f"fit.{k}": self._fit[k].detach().cpu().clone().contiguous() for k in self._FIT_KEYS})
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output (ValueError naming what does not fit)."""
        params = self.net.adaptable_parameters()
        expected = {f"adapted.{i}": p for i, p in enumerate(params)}
        fit_keys = {f"fit.{k}" for k in self._FIT_KEYS}
        present_fit = fit_keys & set(state)
        unknown = set(state) - set(expected) - fit_keys - {"calls"}
        missing = (set(expected) | {"calls"}) - set(state)
        if unknown or missing or present_fit not in (set(), fit_keys):
            raise ValueError(f"not a DiScoFormer state: missing {sorted(missing | (fit_keys - present_fit if present_fit else set()))}, "
                             f"unexpected {sorted(unknown)}")
        for key, p in expected.items():
            if tuple(state[key].shape) != tuple(p.shape):
                raise ValueError(f"DiScoFormer state {key} has shape {tuple(state[key].shape)}, expected {tuple(p.shape)}")
        with torch.no_grad():
            for key, p in expected.items():
                p.copy_(torch.as_tensor(state[key]).to(p))
        self._calls = int(state["calls"])
        device = next(self.net.parameters()).device
        self._fit = ({k: torch.as_tensor(state[f"fit.{k}"]).clone().to(device) for k in self._FIT_KEYS}
                     if present_fit else None)

    def diagnostics(self) -> dict[str, float]:
        return {} if self._last_consistency is None else {"consistency_loss": self._last_consistency}

    def describe(self) -> dict:
        return {"estimator": "DiScoFormer", "dim": self.dim, "adapt_steps": self.adapt_steps,
                "adapt_lr": self.adapt_lr, "warm_start": self.warm_start, "warm_iters": self.warm_iters,
                "refit_every": self.refit_every, "search_patience": self.search_patience,
                "max_context": self.max_context or 0, "max_pairs": self.max_pairs, "bank_growth": self.bank_growth,
                "moment_projection": self.moment_projection, "adapt_holdout": self.adapt_holdout,
                "weights": self.source,
                "weights_sha256": self.sha256 or ""}

    # ------------------------------------------------------------------ evaluation
    def _model_dtype(self) -> torch.dtype:
        return next(self.net.parameters()).dtype

    def _check(self, x: torch.Tensor) -> None:
        if x.shape[1] != self.dim:
            raise ValueError(f"this DiScoFormer was built for dim={self.dim}, got context of shape {tuple(x.shape)}; "
                             f"DiScoFormer.pretrained serves dims {_describe_dims(supported_dims())}")
        check_min_particles(x, self.dim + 1, f"to whiten {self.dim}-dimensional data")

    def _consistency(self, enc: EncodedContext, qry_w: torch.Tensor, create_graph: bool) -> torch.Tensor:
        """``mean_i ‖S_i − ∇_y T_i‖²`` in whitened coordinates at ``qry_w`` (1, m, d)."""
        qry_w = qry_w.detach().requires_grad_(True)
        # the fused CPU attention kernels have no double backward; the math kernel does
        with sdpa_kernel(SDPBackend.MATH):
            log_w, score_w = self.model.decode_whitened(enc, qry_w)         # (1, m), (1, m, d)
            grad_log, = torch.autograd.grad(log_w.sum(), qry_w, create_graph=create_graph)  # (1, m, d)
        return ((score_w - grad_log) ** 2).sum(-1).mean()

    def context_size(self, n: int, m: int) -> int:
        """Points the bank and attention see for n context points and m queries (module docstring)."""
        return context_sizes(n, m, self.max_context, self.max_pairs, self.bank_growth)[0]

    def bank_context_size(self, n: int, m: int) -> int:
        """Points the kernel bank sees: ``P_b = min(n, ⌊P·(n/P)^γ⌋)``, P = :meth:`context_size`,
        γ = ``bank_growth`` (module docstring)."""
        return context_sizes(n, m, self.max_context, self.max_pairs, self.bank_growth)[1]

    def _prepare(self, x: torch.Tensor, m: int | None = None) -> EncodedContext:
        """The context (n,d) whitened and encoded as a batch of one for m queries (default n):
        warm-started when ``warm_start``; the bank and attention on a subsample when
        :meth:`context_size` is below n."""
        n = x.shape[0]
        # seeded by n alone: the same points every call, warm or cold (module docstring)
        subsample, bank_subsample = self._subsamples(n, n if m is None else m,
                                                     torch.Generator().manual_seed(1_000_003 * n))
        fitter = self._warm_fit if self.warm_start and self.net.config.mixture_components else None
        with torch.no_grad():
            enc = self.model.encode(x.to(self._model_dtype())[None], fitter=fitter, subsample=subsample,
                                    bank_subsample=bank_subsample)
        if self.warm_start:
            self._calls += 1
        return enc

    def _subsamples(self, n: int, m: int, generator: torch.Generator):
        """Indices of the attention's and the bank's points among n for m queries
        (:func:`bounded_subsamples`)."""
        return bounded_subsamples(n, m, generator, self.max_context, self.max_pairs, self.bank_growth)

    def _warm_search(self, ctx_w: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[Mixture, torch.Tensor]:
        """A warm start's split/BIC search (stopped by ``search_patience``) on whitened contexts
        (B,n,d): the mixture and its log-likelihood gain per point over the sample Gaussian (B,)."""
        c = self.net.config
        mix = self.model.search_mixture(ctx_w, mask, patience=self.search_patience or None)
        _, gain = refit_mixture(ctx_w, mix, 0, c.mixture_shrink, c.mixture_ridge, mask, unbiased=c.mixture_unbiased)
        return mix, gain

    def _search_against(self, ctx_w: torch.Tensor, warm: Mixture, warm_gain: torch.Tensor,
                        mask: torch.Tensor | None = None) -> tuple[Mixture, torch.Tensor]:
        """A warm search on whitened contexts (B,n,d) whose fit replaces the warm-refined ``warm``
        only where the mixture's score-matching loss on the points is lower (module docstring):
        the mixture and its gain over the sample Gaussian per point (B,)."""
        found, found_gain = self._warm_search(ctx_w, mask)
        better = mixture_score_matching_loss(ctx_w, found, mask) < mixture_score_matching_loss(ctx_w, warm, mask)
        return select_mixture(better, found, warm), torch.where(better, found_gain, warm_gain)

    def _warm_fit(self, ctx_w: torch.Tensor, frame) -> Mixture:
        """The mixture for this call from the last call's (module docstring); updates the state."""
        c = self.net.config
        n, d = ctx_w.shape[1:]

        def search():
            return *self._warm_search(ctx_w), torch.zeros((), dtype=torch.int64)

        fit, start = self._fit, None
        if fit is not None:
            old = AffineFrame(fit["frame_mean"].to(frame.mean), fit["frame_chol"].to(frame.chol),
                              fit["frame_log_det"].to(frame.log_det))
            try:
                start = reframe_mixture(Mixture(fit["log_weight"], fit["mean"], fit["chol"]), *old.change_to(frame))
            except torch.linalg.LinAlgError:   # frames too far apart for float32 (the ensemble changed scale
                start = None                   # by many orders): the old fit is no start; search afresh
        if start is None:
            mix, gain_ref, age = search()
        else:
            mix, gain = refit_mixture(ctx_w, start, self.warm_iters, c.mixture_shrink, c.mixture_ridge,
                                      unbiased=c.mixture_unbiased)
            if int(fit["age"]) + 1 >= self.refit_every or bool(fit_degraded(gain, fit["gain_ref"], n, d).any()):
                mix, gain_ref = self._search_against(ctx_w, mix, gain)
                age = torch.zeros((), dtype=torch.int64)
            else:
                gain_ref, age = fit["gain_ref"], fit["age"] + 1
        self._fit = {"log_weight": mix.log_weight, "mean": mix.mean, "chol": mix.chol, "frame_mean": frame.mean,
                     "frame_chol": frame.chol, "frame_log_det": frame.log_det, "age": age, "gain_ref": gain_ref}
        return mix

    def _adaptation_queries(self, ctx_w: torch.Tensor) -> torch.Tensor:
        n = ctx_w.shape[1]
        if n <= self.adapt_points:
            return ctx_w
        g = torch.Generator().manual_seed(n)  # fixed, seeded subsample: calls are reproducible
        idx = torch.randperm(n, generator=g)[: self.adapt_points]
        return ctx_w[:, idx]

    def _adapt(self, enc: EncodedContext, context: torch.Tensor) -> float:
        """``adapt_steps`` Adam steps on the consistency loss at the adaptation queries; returns the
        loss there afterwards. Never increases it: when the steps end higher than they started
        (Adam overshooting, or the proximal pull), the parameters go back to where they started.
        With ``adapt_holdout`` the head kept is instead the one with the lowest score-matching loss
        on held-out particles (:meth:`_holdout_split`) among the one the call started from, the
        adapted one (if its consistency loss did not rise) and the pretrained one: a warm start
        cannot drift through a chain of steps that each looked better on a noisy check."""
        params = self.net.adaptable_parameters()
        qry_w = self._adaptation_queries(enc.ctx_w)
        start = [p.detach().clone() for p in params]
        before = float(self._consistency(enc, qry_w, create_graph=False).detach())
        split = self._holdout_split(enc, context) if self.adapt_holdout else None
        check = None if split is None else (lambda: self._score_matching_loss(*split))
        sm_before = check() if check is not None else None
        for p in params:
            p.requires_grad_(True)
        optimizer = torch.optim.Adam(params, lr=self.adapt_lr)
        try:
            for _ in range(self.adapt_steps):
                optimizer.zero_grad()
                loss = self._consistency(enc, qry_w, create_graph=True)
                loss = loss + 0.5 * self.proximal * sum(((p - p0) ** 2).sum() for p, p0 in zip(params, self._pretrained))
                loss.backward()
                optimizer.step()
                with torch.no_grad():  # project back into the trust ball around the pretrained values
                    drift = torch.sqrt(sum(((p - p0) ** 2).sum() for p, p0 in zip(params, self._pretrained)))
                    radius = self.max_drift * torch.sqrt(sum((p0 ** 2).sum() for p0 in self._pretrained))
                    if drift > radius:
                        for p, p0 in zip(params, self._pretrained):
                            p.copy_(p0 + (p - p0) * (radius / drift))
        finally:
            for p in params:
                p.requires_grad_(False)
        after = float(self._consistency(enc, qry_w, create_graph=False).detach())
        if check is not None:
            heads = [(sm_before, start, before)]
            if after <= before:  # the adapted head competes only if its consistency loss did not rise
                heads.append((check(), None, after))
            return self._keep_best_held_out(enc, qry_w, check, params, heads)
        if not after <= before:  # also catches NaN
            with torch.no_grad():
                for p, p_start in zip(params, start):
                    p.copy_(p_start)
            return before
        return after

    def _keep_best_held_out(self, enc, qry_w, check, params, heads) -> float:
        """Of the heads ``(held-out loss, values or None for the current ones, consistency loss)``,
        the first being the one the call started from, and the pretrained head (evaluated only when
        it is not that first one), keep the one with the lowest held-out score-matching loss (ties:
        the earliest); returns its consistency loss."""
        current = [p.detach().clone() for p in params]
        start = heads[0][1]
        if not all(torch.equal(v, p0) for v, p0 in zip(start, self._pretrained)):  # else it is heads[0]
            with torch.no_grad():
                for p, p0 in zip(params, self._pretrained):
                    p.copy_(p0)
            heads = heads + [(check(), self._pretrained, None)]
        best = min(range(len(heads)), key=lambda i: (heads[i][0] if heads[i][0] == heads[i][0] else math.inf, i))  # NaN last
        _, values, consistency = heads[best]
        with torch.no_grad():
            for p, v in zip(params, current if values is None else values):
                p.copy_(v)
        if consistency is None:
            consistency = float(self._consistency(enc, qry_w, create_graph=False).detach())
        return consistency

    def _holdout_split(self, enc: EncodedContext, context: torch.Tensor):
        """``(encoded context without the held-out particles, held-out particles (v,d))``: ``v =
        min(adapt_holdout, n // 4)`` particles held out of the context (a seeded draw, fresh per
        warm call), the rest encoded as the model's context (in their own frame; the mixture is the
        call's fit carried into it). A lower score-matching loss on points the context did not see
        estimates a smaller score error (cross-validated score matching), which the consistency
        loss the steps minimise does not: on BKW in d = 2 steps that lowered it raised the error
        (docs/adaptation.md). None when n is too small to hold points out (the steps are then kept
        or undone by the consistency loss alone)."""
        n, d = context.shape
        v = min(self.adapt_holdout, n // 4)
        if v < 1 or n - v < 2 * (d + 1):
            return None
        g = torch.Generator().manual_seed(7_919 * n + self._calls)
        order = torch.randperm(n, generator=g).to(context.device)
        held, kept = context[order[:v]], context[order[v:]]                  # (v, d), (n − v, d)
        subsample, bank_subsample = self._subsamples(n - v, v, g)

        def carried(ctx_w, frame):
            return reframe_mixture(enc.mixture, *enc.frame.change_to(frame))
        with torch.no_grad():
            val = self.model.encode(kept.to(self._model_dtype())[None], subsample=subsample,
                                    bank_subsample=bank_subsample, fitter=carried if enc.mixture is not None else None)
        return val, held

    def _score_matching_loss(self, enc: EncodedContext, points: torch.Tensor) -> float:
        """Hyvärinen's (2005, JMLR 6, eq. 4) score-matching loss of the model's score at
        ``points`` (v,d), in the original coordinates: ``J = mean_i ½|s(x_i)|² + ∇·s(x_i)``, equal
        to ``½ E|s − ∇log f|²`` up to a constant independent of s when the points are drawn from f.
        With ``x = Lw + μ``: ``s = L⁻ᵀs_w``, so ``|s|² = s_wᵀMs_w`` and ``∇·s = tr(L⁻ᵀJ_wL⁻¹) =
        tr(J_w M)`` with ``M = L⁻¹L⁻ᵀ``, J_w the Jacobian of the whitened score (d backward passes)."""
        d = points.shape[-1]
        q = enc.frame.whiten(points.to(self._model_dtype())[None]).detach().requires_grad_(True)  # (1, v, d)
        eye = torch.eye(d, dtype=q.dtype, device=q.device)
        inv_l = torch.linalg.solve_triangular(enc.frame.chol, eye, upper=False)  # (1, d, d) L⁻¹
        metric = inv_l @ inv_l.transpose(-1, -2)                             # (1, d, d) M = L⁻¹L⁻ᵀ
        with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
            _, score_w = self.model.decode_whitened(enc, q)                  # (1, v, d)
            jac = torch.stack([torch.autograd.grad(score_w[..., k].sum(), q, retain_graph=k < d - 1)[0]
                               for k in range(d)], -2)                       # (1, v, d, d) ∂s_w,k/∂w_l
        score_w = score_w.detach()
        sq = ((score_w @ metric) * score_w).sum(-1)                          # (1, v) |s|²
        div = (jac * metric[:, None]).sum((-2, -1))                          # (1, v) tr(J_w M), M symmetric
        return float((0.5 * sq + div).mean())

    def consistency_loss(self, context) -> float:
        """Label-free consistency ``mean_i ‖S_i − ∇_y T_i‖²`` at the context points (whitened
        coordinates; on a seeded subsample of ``adapt_points`` points for larger contexts)."""
        x, _ = as_particles(context, "context")
        self._check(x)
        enc = self._prepare(x)
        return float(self._consistency(enc, self._adaptation_queries(enc.ctx_w), create_graph=False).detach())

    def evaluate_cells(self, contexts, counts, *, state: dict | None = None, cells=None):
        """Log-density and score of many independent contexts in one batched call (e.g. the
        velocity ensembles of the spatial cells of a particle-in-cell run).

        ``evaluate_cells(contexts (C, n_max, d), counts (C,)) -> (log_f (C, n_max), score (C, n_max, d))``

        Cell c holds its particles in rows ``contexts[c, :counts[c]]``; the rest is padding
        (any finite values, ignored). Each cell is estimated at its own particles exactly as
        ``self(contexts[c, :counts[c]])`` with ``warm_start=False`` would (same whitening,
        bandwidths, mixture fit and context size; equal to float round-off), with padded rows of
        the outputs set to 0; a cell with ``context_size(n_c, n_c) < n_c`` (module docstring,
        "Bounded cost") has its attention and kernel bank on the same seeded subsamples as that
        call. numpy in -> numpy out, torch in -> torch out. Test-time adaptation
        is per context, so this batched call requires ``adapt_steps == 0`` (it uses the current
        head). The estimator's own ``warm_start`` state is neither used nor changed.

        Warm-started cells (``state``): a dict the caller keeps between calls (start with ``{}``;
        it is updated in place and holds only tensors, so it can be saved and restored) carries
        each cell's last mixture fit, in that cell's whitening frame, under the cell's id
        ``cells[c]`` (non-negative ints, default ``0…C−1``; the state has a row per id up to the
        largest, so use small ids such as grid cell indices). A cell with a fit is refined by
        ``warm_iters`` EM steps from its last fit carried into the new frame, exactly as the
        single-context warm start (module docstring, "Warm start"); the split/BIC search reruns
        for cells without a fit, when a cell's fit has aged ``refit_every`` calls, or when its
        log-likelihood gain fell as :func:`fit_degraded` says, and a search's fit replaces the
        refined one only where its score-matching loss is lower. After a cell's first search its
        age starts at ``id mod refit_every``, so that the periodic searches of many cells spread
        over calls instead of all landing on the same call. The kernel bank and attention are
        unchanged (they carry no state). ``state=None``: every call is a pure function of its
        input.
        """
        if self.adapt_steps:
            raise ValueError("evaluate_cells does not adapt the head per cell; use adapt_steps=0")
        is_numpy = not isinstance(contexts, torch.Tensor)
        x = torch.as_tensor(np.asarray(contexts) if is_numpy else contexts)
        if x.ndim != 3 or x.shape[2] != self.dim or not x.is_floating_point():
            raise ValueError(f"contexts must be a float array of shape (C, n_max, {self.dim}), got "
                             f"{tuple(x.shape)} of {x.dtype}")
        k = torch.as_tensor(np.asarray(counts) if not isinstance(counts, torch.Tensor) else counts)
        if k.shape != (x.shape[0],) or k.is_floating_point() or k.dtype == torch.bool:
            raise ValueError(f"counts must be an integer array of shape ({x.shape[0]},), got {tuple(k.shape)} of {k.dtype}")
        counts_list = [int(c) for c in k.tolist()]
        C, n_max, d = x.shape
        if any(c < d + 1 or c > n_max for c in counts_list):
            raise ValueError(f"every count must be between d+1 = {d + 1} (to whiten) and n_max = {n_max}; got "
                             f"{[c for c in counts_list if c < d + 1 or c > n_max][:5]}")
        mask = torch.arange(n_max) < k[:, None].to(torch.long)               # (C, n_max)
        if not bool(torch.isfinite(x[mask]).all()):
            raise ValueError("contexts hold NaN or infinite values in their valid rows")
        if C == 0:
            return (np.zeros((0, n_max)), np.zeros((0, n_max, d))) if is_numpy else (x[..., 0] * 0, x * 0)
        device = next(self.net.parameters()).device
        ids = self._cell_ids(cells, C, state)
        ctx = x.to(device=device, dtype=self._model_dtype())                 # (C, n_max, d)
        work = None if state is None else dict(state)   # committed to state only if every group succeeds
        log_f = torch.zeros(C, n_max, dtype=ctx.dtype, device=device)
        score = torch.zeros(C, n_max, d, dtype=ctx.dtype, device=device)
        for lo, hi, n_g in self._cell_groups(counts_list):
            group, ctx_g = counts_list[lo:hi], ctx[lo:hi, :n_g]                # (G, n_g, d)
            fitter = None
            if work is not None and self.net.config.mixture_components:
                valid = torch.arange(n_g, device=device) < torch.tensor(group, device=device)[:, None]

                def fitter(ctx_w, frame, valid=valid, group=group, ids_g=ids[lo:hi]):
                    return self._warm_cells_fit(ctx_w, frame, valid, group, work, ids_g)
            with torch.no_grad():
                enc = self._encode_cells(ctx_g, group, fitter)
                # one chunk of queries per group (_cell_groups bounds its attention block)
                log_f[lo:hi, :n_g], score[lo:hi, :n_g] = self.model.predict(enc, ctx_g, chunk=n_g)
        if state is not None:
            state.update(work)
        mask = mask.to(log_f.device)
        log_f = torch.where(mask, log_f, 0.0).to(device=x.device, dtype=x.dtype)             # (C, n_max)
        score = torch.where(mask[..., None], score, 0.0).to(device=x.device, dtype=x.dtype)  # (C, n_max, d)
        if self.moment_projection:   # per cell, at its own particles, as _evaluate does at the context
            for c, k in enumerate(counts_list):
                score[c, :k] = project_score(x[c, :k], score[c, :k])
        return (log_f.numpy(), score.numpy()) if is_numpy else (log_f, score)

    def _encode_cells(self, ctx: torch.Tensor, counts: list[int], fitter) -> EncodedContext:
        """``model.encode`` of a padded group of cells (G,n,d), with each cell's attention on the
        seeded subsample of :meth:`context_size` points and its kernel bank on the first
        :meth:`bank_context_size` points of the same order, as a ``self(cell)`` call (``_prepare``:
        seed ``1_000_003·n_c``); frame and mixture on all points. Without any subsampled cell it
        is ``model.encode`` itself."""
        sizes = [self.context_size(k, k) for k in counts]
        bank_sizes = [self.bank_context_size(k, k) for k in counts]
        if sizes == counts:
            return self.model.encode(ctx, counts=counts, fitter=fitter)
        c, dev = self.net.config, ctx.device
        mask = torch.arange(ctx.shape[1], device=dev) < torch.tensor(counts, device=dev)[:, None]   # (G, n)
        ctx = ctx.masked_fill(~mask[..., None], 0.0)
        frame = AffineFrame.fit(ctx, c.whiten_ridge, mask)
        ctx_w = frame.whiten(ctx).masked_fill(~mask[..., None], 0.0)         # (G, n, d)
        mixture = self.model.fit_mixture(ctx_w, frame, mask, fitter)
        grown = bank_sizes != sizes                                          # some bank sees more points
        P, P_b = max(sizes), max(bank_sizes)
        sub = torch.zeros(len(counts), P, ctx.shape[2], dtype=ctx_w.dtype, device=dev)  # (G, P, d)
        bank = (torch.zeros(len(counts), P_b, ctx.shape[2], dtype=ctx_w.dtype, device=dev)
                if grown else None)                                          # (G, P_b, d)
        for b, (k, size, bank_size) in enumerate(zip(counts, sizes, bank_sizes)):
            order = (torch.randperm(k, generator=torch.Generator().manual_seed(1_000_003 * k))
                     if size < k else torch.arange(k)).to(dev)
            sub[b, :size] = ctx_w[b, order[:size]]
            if grown:
                bank[b, :bank_size] = ctx_w[b, order[:bank_size]]
        sub_mask = torch.arange(P, device=dev) < torch.tensor(sizes, device=dev)[:, None]          # (G, P)
        bank_args = ()
        if grown:
            bank_mask = torch.arange(P_b, device=dev) < torch.tensor(bank_sizes, device=dev)[:, None]  # (G, P_b)
            bank_args = (bank, bank_mask, bank_sizes)
        ellipticals = elliptical_fits(ctx_w, counts, mask) if c.elliptical_candidate else None
        return EncodedContext(frame, sub, self.net.encode_context(sub, sub_mask), mixture, sub_mask, sizes,
                              context_radius(ctx_w, mask), *bank_args, ellipticals=ellipticals, n_points=list(counts))

    #: float32 entries of one attention block (G cells × heads × n × n) in evaluate_cells (128 MiB)
    _CELL_BLOCK = 2 ** 25

    def _cell_groups(self, counts: list[int]):
        """Consecutive groups ``(lo, hi, n_g)`` of cells evaluated together, ``n_g`` the group's
        largest count. Each group's queries go in one chunk: the cross-attention recomputes the
        context's key/value projections for every chunk, and chunks of 16 queries over all 64
        cells of a PIC step made those recomputations 4× the attention itself (measured: 25 of
        30 s at 64 cells × 1560 points). Groups keep ``G·heads·n_g²`` ≤ :attr:`_CELL_BLOCK`."""
        heads, lo = self.net.config.n_heads, 0
        while lo < len(counts):
            hi, n_g = lo + 1, counts[lo]
            while hi < len(counts) and (hi + 1 - lo) * heads * max(n_g, counts[hi]) ** 2 <= self._CELL_BLOCK:
                n_g = max(n_g, counts[hi])
                hi += 1
            yield lo, hi, n_g
            lo = hi

    _CELL_KEYS = ("log_weight", "mean", "chol", "frame_mean", "frame_chol", "frame_log_det", "age", "gain_ref")

    def _cell_ids(self, cells, C: int, state) -> torch.Tensor | None:
        """``cells`` (C,) as int64 ids (default 0…C−1), checked, and ``state`` checked; None
        without a state."""
        if state is None:
            if cells is not None:
                raise ValueError("cells names the contexts in a warm-start state; pass state as well")
            return None
        if not isinstance(state, dict):
            raise ValueError(f"state must be a dict (start with {{}}), got {type(state).__name__}")
        if state and set(state) != set(self._CELL_KEYS):
            raise ValueError(f"not an evaluate_cells state: keys {sorted(state)}, expected {sorted(self._CELL_KEYS)}")
        if state:
            c = self.net.config
            rows = state["age"].shape[0]
            shapes = {"log_weight": (rows, c.mixture_components), "mean": (rows, c.mixture_components, self.dim),
                      "chol": (rows, c.mixture_components, self.dim, self.dim), "frame_mean": (rows, 1, self.dim),
                      "frame_chol": (rows, self.dim, self.dim), "frame_log_det": (rows,), "age": (rows,),
                      "gain_ref": (rows,)}
            wrong = [k for k, shape in shapes.items() if tuple(state[k].shape) != shape]
            if wrong:
                raise ValueError(f"evaluate_cells state does not fit this DiScoFormer (d = {self.dim}, "
                                 f"{c.mixture_components} mixture components): wrong shapes of {wrong}")
        if cells is None:
            return torch.arange(C)
        ids = torch.as_tensor(np.asarray(cells) if not isinstance(cells, torch.Tensor) else cells).cpu()
        if ids.shape != (C,) or ids.is_floating_point() or ids.dtype == torch.bool or (C and int(ids.min()) < 0):
            raise ValueError(f"cells must be {C} non-negative integer ids, got {tuple(ids.shape)} of {ids.dtype}")
        ids = ids.to(torch.int64)
        if len(torch.unique(ids)) != C:
            raise ValueError("cells must name each context once (repeated ids)")
        return ids

    def _warm_cells_fit(self, ctx_w: torch.Tensor, frame: AffineFrame, valid: torch.Tensor, counts: list[int],
                        state: dict, ids: torch.Tensor) -> Mixture:
        """The mixtures of a padded batch of cells (B,n,d) warm-started from ``state`` (see
        :meth:`evaluate_cells`); the rules of :meth:`_warm_fit` per cell. Updates ``state``."""
        c = self.net.config
        B, n, d = ctx_w.shape
        dev, ftype = ctx_w.device, ctx_w.dtype
        n_b = torch.tensor(counts, dtype=torch.float64, device=dev)          # (B,)
        rows = state["age"].shape[0] if state else 0
        ids_dev = ids.to(dev)
        known = ids_dev < rows
        age = torch.full((B,), -1, dtype=torch.int64, device=dev)
        age[known] = state["age"].to(dev)[ids_dev[known]] if state else age[known]
        warm = age >= 0                                                       # (B,) cells with a fit to refine
        new_age = torch.zeros(B, dtype=torch.int64, device=dev)
        gain_ref = torch.zeros(B, dtype=torch.float64, device=dev)
        mix_lw = torch.full((B, c.mixture_components), -math.inf, dtype=ftype, device=dev)
        mix_mean = torch.zeros(B, c.mixture_components, d, dtype=ftype, device=dev)
        mix_chol = torch.eye(d, dtype=ftype, device=dev).expand(B, c.mixture_components, d, d).clone()
        search = ~warm
        w = torch.nonzero(warm)[:, 0]
        if len(w):
            sid = ids_dev[w]
            old = AffineFrame(state["frame_mean"].to(dev)[sid], state["frame_chol"].to(dev)[sid],
                              state["frame_log_det"].to(dev)[sid])
            new = AffineFrame(frame.mean[w], frame.chol[w], frame.log_det[w])
            try:
                start = reframe_mixture(Mixture(state["log_weight"].to(dev)[sid], state["mean"].to(dev)[sid],
                                                state["chol"].to(dev)[sid]), *old.change_to(new))
            except torch.linalg.LinAlgError:   # some frame moved too far for float32: search these cells
                search[w], w = True, w[:0]
        if len(w):
            sid = ids_dev[w]
            mix, gain = refit_mixture(ctx_w[w], start, self.warm_iters, c.mixture_shrink, c.mixture_ridge, valid[w],
                                      unbiased=c.mixture_unbiased)
            due = (age[w] + 1 >= self.refit_every) | fit_degraded(gain, state["gain_ref"].to(dev)[sid], n_b[w], d)
            keep, redo = w[~due], w[due]
            mix_lw[keep], mix_mean[keep], mix_chol[keep] = (t[~due] for t in mix)
            gain_ref[keep] = state["gain_ref"].to(dev)[ids_dev[keep]]
            new_age[keep] = age[keep] + 1
            if len(redo):
                chosen, gain_ref[redo] = self._search_against(ctx_w[redo], Mixture(*(t[due] for t in mix)),
                                                              gain[due], valid[redo])
                mix_lw[redo], mix_mean[redo], mix_chol[redo] = chosen
                new_age[redo] = 0
        s = torch.nonzero(search)[:, 0]
        if len(s):
            mix, gain = self._warm_search(ctx_w[s], valid[s])
            mix_lw[s], mix_mean[s], mix_chol[s] = mix
            gain_ref[s] = gain
            # first search of a cell: start its age at id mod refit_every (spreads the searches)
            new_age[s] = torch.where(age[s] < 0, ids_dev[s] % self.refit_every, 0)
        values = {"log_weight": mix_lw, "mean": mix_mean, "chol": mix_chol, "frame_mean": frame.mean,
                  "frame_chol": frame.chol, "frame_log_det": frame.log_det, "age": new_age, "gain_ref": gain_ref}
        size = max(rows, int(ids.max()) + 1)
        for key, value in values.items():
            table = state.get(key)
            if table is None or table.shape[0] < size:
                grown = (torch.full((size,) + tuple(value.shape[1:]), -1, dtype=value.dtype, device=dev)
                         if key == "age" else torch.zeros((size,) + tuple(value.shape[1:]), dtype=value.dtype,
                                                          device=dev))
                if key == "chol":
                    grown[:] = torch.eye(d, dtype=value.dtype, device=dev)
                if table is not None:
                    grown[:table.shape[0]] = table.to(dev)
                table = grown
            else:
                table = table.to(dev).clone()
            table[ids_dev] = value.detach().to(table.dtype)
            state[key] = table
        return Mixture(mix_lw, mix_mean, mix_chol)

    def _evaluate(self, context, queries):
        self._check(context)
        enc = self._prepare(context, queries.shape[0])
        if self.adapt_steps > 0:
            if not self.warm_start:
                self.reset()
            self._last_consistency = self._adapt(enc, context)
        with torch.no_grad():
            log_f, score = self.model.predict(enc, queries.to(self._model_dtype())[None])  # (1, m), (1, m, d)
        score = score[0].to(context.dtype)                                   # (m, d)
        if self.moment_projection and queries is context:
            score = project_score(context, score)                            # (n, d) Stein on the particles
        return log_f[0].to(context.dtype), score


def context_sizes(n: int, m: int, max_context: int | None = 2048, max_pairs: int = 2 ** 23,
                  bank_growth: float = 0.2) -> tuple[int, int]:
    """``(P, P_b)``: the points the attention and the kernel bank see for n context points and m
    queries (module docstring, "Bounded cost"): all n while ``n·m ≤ max_pairs``, else
    ``P = min(n, max(max_context, max_pairs // m))`` and ``P_b = min(n, ⌊P·(n/P)^γ⌋)``, γ = ``bank_growth``."""
    if max_context is None or n * m <= max_pairs:
        return n, n
    size = min(n, max(max_context, max_pairs // m))
    if size >= n:
        return n, n
    return size, min(n, max(size, int(size * (n / size) ** bank_growth)))


def bounded_subsamples(n: int, m: int, generator: torch.Generator, max_context: int | None = 2048,
                       max_pairs: int = 2 ** 23, bank_growth: float = 0.2):
    """Indices of the attention's and the bank's points among n for m queries: the first ``P``
    and ``P_b`` (:func:`context_sizes`) of one random order (nested), each None where it is every
    point or (the bank's) the attention's. Training draws them the same way (``--solver-regime-above``)."""
    size, bank_size = context_sizes(n, m, max_context, max_pairs, bank_growth)
    if size >= n:
        return None, None
    order = torch.randperm(n, generator=generator)
    return order[:size], (order[:bank_size] if bank_size > size else None)


def _pretrained_for(network: str):
    """The registry's build function for ``network`` (see :meth:`DiScoFormer.pretrained`): the
    shipped weights for the problem's dimension (checksum verified) with the configured options."""
    def build(factory, options: dict, *, problem, seed: int) -> DiScoFormer:
        shipped = factory.pretrained(problem.dim, network=network)
        return factory(shipped.net, dim=shipped.dim, source=shipped.source, sha256=shipped.sha256, **options)
    return build


# "discoformer": the per-d weights where shipped, else the any-d network; "discoformer_equivariant": always it
registry.register("estimator", "discoformer", DiScoFormer, exclude=("net", "dim", "source", "sha256"),
                  build=_pretrained_for("auto"))
registry.register("estimator", "discoformer_equivariant", DiScoFormer, exclude=("net", "dim", "source", "sha256"),
                  build=_pretrained_for(EQUIVARIANT))
# "discoformer_gmm": the per-d weights trained on Gaussian mixtures alone (gmm_only_key)
registry.register("estimator", "discoformer_gmm", DiScoFormer, exclude=("net", "dim", "source", "sha256"),
                  build=_pretrained_for(PER_DIM_GMM))
