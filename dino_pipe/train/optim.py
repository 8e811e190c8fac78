"""Optimizer construction, gradient clipping and the last-layer freeze of the DINO recipe.

* Two parameter groups: ``regularized`` (weight decay from the schedule) and ``not_regularized``
  (biases and every parameter with ``ndim <= 1``, e.g. norm weights: no weight decay).
* AdamW (default), SGD with momentum 0.9, or LARS (as the reference's ResNet-50 runs).
* Clipping ``per_param`` (the reference): each parameter's gradient is rescaled on its own,
  ``g <- g * min(1, clip / (||g||_2 + 1e-6))``; ``global``: ``torch.nn.utils.clip_grad_norm_`` over all.
* ``cancel_last_layer_grads``: during the first ``freeze_last_layer_epochs`` epochs the gradients of
  the head's last layer are dropped (the reference's trick against early instability).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from dino_pipe.config import OptimConfig


def param_groups(model: nn.Module) -> list[dict]:
    """``[{"params": regularized, "name": "regularized"}, {"params": ..., "weight_decay": 0.0, ...}]``."""
    reg, no_reg = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_reg if name.endswith(".bias") or p.ndim <= 1 else reg).append(p)
    return [{"params": reg, "name": "regularized"},
            {"params": no_reg, "name": "not_regularized", "weight_decay": 0.0, "apply_wd_schedule": False}]


class LARS(torch.optim.Optimizer):
    """SGD + momentum with layer-wise adaptive rate scaling (You et al. 2017), as the DINO reference.

    For parameters with ``ndim > 1``: ``d = g + wd * p``; ``d <- d * eta * ||p|| / ||d||`` (when
    both norms are > 0); ``mu <- momentum * mu + d``; ``p <- p - lr * mu``. 1-d parameters skip
    weight decay and the trust ratio.
    """

    def __init__(self, params, lr: float = 0.0, weight_decay: float = 0.0, momentum: float = 0.9, eta: float = 0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta))

    @torch.no_grad()
    def step(self, closure=None):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if p.ndim > 1:
                    d = d.add(p, alpha=g["weight_decay"])
                    p_norm, d_norm = torch.norm(p), torch.norm(d)
                    one = torch.ones_like(p_norm)
                    q = torch.where(p_norm > 0, torch.where(d_norm > 0, g["eta"] * p_norm / d_norm, one), one)
                    d = d.mul(q)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(g["momentum"]).add_(d)
                p.add_(mu, alpha=-g["lr"])


def build_optimizer(model: nn.Module, cfg: OptimConfig, *, fused: bool = False) -> torch.optim.Optimizer:
    """The optimizer over :func:`param_groups`; lr and wd are set from the schedules every step."""
    groups = param_groups(model)
    if cfg.optimizer == "adamw":
        kw = {"fused": True} if fused else {}
        return torch.optim.AdamW(groups, lr=0.0, weight_decay=0.0, **kw)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=0.0, momentum=0.9, weight_decay=0.0)
    if cfg.optimizer == "lars":
        return LARS(groups, lr=0.0, weight_decay=0.0)
    raise ValueError(f"unknown optimizer {cfg.optimizer}")


def set_lr_wd(optimizer: torch.optim.Optimizer, lr: float, wd: float) -> None:
    """Set every group's lr; weight decay only on groups that follow the schedule (the regularized one)."""
    for g in optimizer.param_groups:
        g["lr"] = lr
        if g.get("apply_wd_schedule", True):
            g["weight_decay"] = wd


@torch.no_grad()
def clip_gradients(model: nn.Module, max_norm: float, mode: str = "per_param") -> torch.Tensor:
    """Clip gradients and return the total gradient norm before clipping (a 0-d tensor).

    ``per_param``: each parameter's gradient separately to norm ``max_norm`` (the reference);
    ``global``: all gradients together. No host sync: the norms come from one fused
    ``_foreach_norm`` and the coefficients stay on the device (a coefficient of 1 leaves a
    gradient unchanged, as the reference's ``if coef < 1``).
    """
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norms = torch._foreach_norm(grads)
    total = torch.linalg.vector_norm(torch.stack(norms))
    if max_norm <= 0:
        return total
    if mode == "global":
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        torch._foreach_mul_(grads, coef)
    else:  # one vector of coefficients (3 kernels), never read on the host
        coefs = torch.clamp(max_norm / (torch.stack(norms) + 1e-6), max=1.0)
        torch._foreach_mul_(grads, list(coefs.unbind(0)))
    return total


def cancel_last_layer_grads(model: nn.Module, epoch: int, freeze_epochs: int) -> None:
    """Drop the gradients of the head's ``last_layer`` while ``epoch < freeze_epochs``."""
    if epoch >= freeze_epochs:
        return
    for name, p in model.named_parameters():
        if "last_layer" in name:
            p.grad = None
