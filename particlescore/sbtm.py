"""Score-based transport modelling (SBTM) baseline: a small network retrained every step.

Boffi & Vanden-Eijnden, "Probability flow solution of the Fokker–Planck equation", Mach.
Learn.: Sci. Technol. 2023 (SBTM); Ilin, Hu & Wang, "A score-based particle method for
homogeneous Landau equation", 2024 (the same idea for Landau). DESIGN §3.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .estimators import ScoreEstimator

__all__ = ["SBTM"]


class SBTM(ScoreEstimator):
    """Per-simulation neural score ``s_θ: R^d → R^d`` trained on the current particles.

    Network: MLP ``d → hidden → … → hidden → d`` (``layers`` hidden layers, softplus
    activations, float64). At each call it takes ``steps_per_call`` Adam steps (learning rate
    ``lr``) on the implicit score-matching loss (Hyvärinen 2005) over the context particles,

        ``L(θ) = mean_i (|s_θ(x_i)|² + 2 ∇·s_θ(x_i))``,

    whose minimiser over all fields is the score of the particles' law; the divergence is exact
    (forward-mode Jacobian trace through the MLP) when ``hutchinson_probes = 0`` and a
    Hutchinson estimate with that many Rademacher probes otherwise (for large ``d``). Chosen over denoising score matching
    because it has no noise-scale bias. The network and the Adam state are kept between calls
    (warm start: the solver's mode); :meth:`reset` reinitialises them.

    ``initial_score``: optional callable ``x -> ∇ log f0(x)`` (torch (n, d) -> (n, d)); at the
    first call the network is fitted to it at the particles by ``initial_fit_steps`` Adam steps
    on the mean squared error, and no implicit-loss steps are taken at that call (the first
    network is the exact initial score, as in Boffi & Vanden-Eijnden).

    SBTM gives no density: ``log_density`` is an array of NaN (the solver then records
    ``entropy = NaN``). Randomness (initialisation, Hutchinson probes) comes from a private
    ``torch.Generator`` seeded with ``seed``. :meth:`diagnostics` returns the last training loss
    as ``sbtm_loss``.
    """

    min_particles = 2
    min_particles_reason = "to train the score network"

    def __init__(self, hidden: int = 64, layers: int = 2, steps_per_call: int = 25, lr: float = 1e-3,
                 initial_score: Callable | None = None, initial_fit_steps: int = 500,
                 hutchinson_probes: int = 0, seed: int = 0):
        for name, value, minimum in (("hidden", hidden, 1), ("layers", layers, 1),
                                     ("steps_per_call", steps_per_call, 0),
                                     ("initial_fit_steps", initial_fit_steps, 0),
                                     ("hutchinson_probes", hutchinson_probes, 0), ("seed", seed, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a positive finite float, got {lr!r}")
        if initial_score is not None and not callable(initial_score):
            raise ValueError(f"initial_score must be a callable x -> score or None, got {type(initial_score).__name__}")
        self.hidden = hidden
        self.layers = layers
        self.steps_per_call = steps_per_call
        self.lr = float(lr)
        self.initial_score = initial_score
        self.initial_fit_steps = initial_fit_steps
        self.hutchinson_probes = hutchinson_probes
        self.seed = seed
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Drop the network and optimiser; the next call starts from a fresh initialisation."""
        self.net: torch.nn.Sequential | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.generator = torch.Generator().manual_seed(self.seed)
        self.last_loss = math.nan
        self.calls = 0

    def _build(self, dim: int) -> None:
        sizes = [dim] + [self.hidden] * self.layers + [dim]
        modules: list[torch.nn.Module] = []
        for i in range(len(sizes) - 1):
            linear = torch.nn.Linear(sizes[i], sizes[i + 1], dtype=torch.float64)
            bound = 1.0 / math.sqrt(sizes[i])          # PyTorch's default U(±1/√fan_in), seeded here
            with torch.no_grad():
                for p in (linear.weight, linear.bias):
                    p.copy_((2.0 * torch.rand(p.shape, generator=self.generator, dtype=torch.float64) - 1.0) * bound)
            modules.append(linear)
            if i < len(sizes) - 2:
                modules.append(torch.nn.Softplus())
        self.net = torch.nn.Sequential(*modules)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=self.lr)

    # ------------------------------------------------------------------ losses
    def _score_and_divergence(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``s_θ(x)`` and ``∇·s_θ(x)`` in one forward pass (differentiable in θ).

        Forward-mode through the MLP: with ``h_{l+1} = softplus(W_l h_l + b_l)`` the tangents
        ``T_{l+1} = sigmoid(W_l h_l + b_l) ⊙ (W_l T_l)`` start from ``T_0 = I`` (exact
        divergence ``tr J``) or from Rademacher probes ``Z`` (Hutchinson: ``mean_p z_pᵀ J z_p``).
        Cost O(n·width²·q) with ``q = d`` or the number of probes.
        """
        n, d = x.shape
        if self.hutchinson_probes == 0:
            probes = None
            tangent = torch.eye(d, dtype=x.dtype).expand(n, d, d)                   # (n, d, q=d)
        else:
            probes = torch.randint(0, 2, (n, d, self.hutchinson_probes), generator=self.generator)
            probes = probes.to(x.dtype) * 2.0 - 1.0
            tangent = probes                                                         # (n, d, q=p)
        h = x
        linears = [m for m in self.net if isinstance(m, torch.nn.Linear)]
        for layer in linears[:-1]:
            pre = layer(h)                                                           # (n, width)
            tangent = torch.sigmoid(pre)[:, :, None] * torch.einsum("ok,nkq->noq", layer.weight, tangent)
            h = torch.nn.functional.softplus(pre)
        out = linears[-1]
        s = out(h)                                                                   # (n, d)
        tangent = torch.einsum("ok,nkq->noq", out.weight, tangent)                   # (n, d, q)
        if probes is None:
            div = torch.diagonal(tangent, dim1=1, dim2=2).sum(1)
        else:
            div = (probes * tangent).sum(1).mean(1)
        return s, div

    def implicit_loss(self, x: torch.Tensor) -> torch.Tensor:
        """``mean_i (|s_θ(x_i)|² + 2 ∇·s_θ(x_i))`` (differentiable in θ)."""
        s, div = self._score_and_divergence(x.detach().to(torch.float64))
        return ((s * s).sum(1) + 2.0 * div).mean()

    def _train(self, loss_fn, steps: int) -> None:
        for _ in range(steps):
            self.optimizer.zero_grad(set_to_none=True)
            loss = loss_fn()
            loss.backward()
            self.optimizer.step()
            self.last_loss = float(loss.detach())

    # ------------------------------------------------------------------ estimator interface
    def _evaluate(self, context, queries):
        n, d = context.shape
        if self.net is None:
            self._build(d)
        elif self.net[0].in_features != d:
            raise ValueError(f"this SBTM network was built for dimension {self.net[0].in_features}, "
                             f"got context of shape {tuple(context.shape)}; call reset() first")
        x = context.detach().to(torch.float64)
        with torch.enable_grad():
            if self.calls == 0 and self.initial_score is not None:
                target = torch.as_tensor(self.initial_score(x), dtype=torch.float64).detach()
                if target.shape != x.shape:
                    raise ValueError(f"initial_score returned shape {tuple(target.shape)}, expected {tuple(x.shape)}")
                self._train(lambda: ((self.net(x) - target) ** 2).sum(1).mean(), self.initial_fit_steps)
            else:
                self._train(lambda: self.implicit_loss(x), self.steps_per_call)
        self.calls += 1
        with torch.no_grad():
            score = self.net(queries.detach().to(torch.float64))
        log_density = torch.full((queries.shape[0],), math.nan, dtype=queries.dtype, device=queries.device)
        return log_density, score.to(dtype=queries.dtype, device=queries.device)

    def diagnostics(self) -> dict[str, float]:
        return {"sbtm_loss": self.last_loss}

    def describe(self) -> dict:
        return {"estimator": "SBTM", "hidden": self.hidden, "layers": self.layers,
                "steps_per_call": self.steps_per_call, "lr": self.lr, "loss": "implicit score matching",
                "hutchinson_probes": self.hutchinson_probes, "initial_fit_steps": self.initial_fit_steps,
                "initial_score": self.initial_score is not None, "seed": self.seed}
