"""SAM: sharpness-aware minimisation (Foret et al. 2021), the default optimiser of the AAM paper (seed 002, §3.5).

Two steps per update: `first_step` moves the weights to the (approximate) worst point within radius ρ,
`e_w = ρ·g/‖g‖` (ASAM, `adaptive=True`: `e_w = ρ·p²·g/‖p·g‖`); after a second forward/backward there,
`second_step` restores the weights and applies the base optimiser with the new gradients. Facts from
`tosfaq/deep-object-reid` `torchreid/optim/sam.py` (ρ = 0.05, adaptive off, base SGD momentum 0.9 in the paper's
configs). Any base optimiser works; its parameter groups (the no-decay split) are shared, so schedules act on it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class SAM(torch.optim.Optimizer):
    """Sharpness-aware wrapper of `base_optimizer` over the same parameter groups."""

    def __init__(self, params: Any, base_optimizer: Callable[..., torch.optim.Optimizer], *, rho: float = 0.05,
                 adaptive: bool = False, **base_kwargs: Any) -> None:
        if rho < 0:
            raise ValueError(f"rho must be non-negative, got {rho}")
        super().__init__(params, dict(rho=rho, adaptive=adaptive, **base_kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)

    @torch.no_grad()
    def _grad_norm(self) -> torch.Tensor:
        norms = [((torch.abs(p) if group["adaptive"] else 1.0) * p.grad).norm(p=2)
                 for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not norms:
            return torch.tensor(0.0)
        return torch.norm(torch.stack([n.to(norms[0].device) for n in norms]), p=2)

    @torch.no_grad()
    def first_step(self) -> None:
        """Perturb the weights towards higher loss (saving the perturbation to undo it)."""
        scale_norm = self._grad_norm() + 1e-12
        for group in self.param_groups:
            scale = group["rho"] / scale_norm
            for p in group["params"]:
                if p.grad is None:
                    continue
                e_w = (torch.pow(p, 2) if group["adaptive"] else 1.0) * p.grad * scale.to(p)
                p.add_(e_w)
                self.state[p]["e_w"] = e_w

    @torch.no_grad()
    def second_step(self) -> None:
        """Undo the perturbation and step the base optimiser with the gradients taken at the perturbed point."""
        for group in self.param_groups:
            for p in group["params"]:
                e_w = self.state[p].pop("e_w", None)
                if e_w is not None:
                    p.sub_(e_w)
        self.base_optimizer.step()

    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> None:  # type: ignore[override]
        """Both steps with a closure that recomputes the loss and gradients (the engine calls the steps itself)."""
        if closure is None:
            raise ValueError("SAM.step needs a closure that re-evaluates the loss; or call first_step/second_step")
        self.first_step()
        self.zero_grad(set_to_none=True)
        with torch.enable_grad():
            closure()
        self.second_step()

    def state_dict(self) -> dict[str, Any]:
        """The base optimiser's state (SAM's own state is only the transient perturbation)."""
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_optimizer.load_state_dict(state_dict)
