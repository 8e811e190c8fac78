"""The DINO projection head (Caron et al. 2021, Sec. 3.1 and Appendix).

``x [N, in_dim] -> MLP -> z [N, bottleneck_dim] -> z / ||z||_2 -> W z  [N, out_dim]``

The MLP has ``layers`` linear layers (hidden width ``hidden_dim``, GELU between them, optional
BatchNorm), the last one projecting to ``bottleneck_dim``. The last layer ``W`` is weight-normalized:
row ``k`` is ``w_k = g_k * v_k / ||v_k||``. With ``norm_last_layer=True`` the gains ``g`` are fixed
to 1 (not trained), so every output is a cosine similarity between the normalized bottleneck feature
and a unit prototype ``v_k/||v_k||``: logits lie in [-1, 1].

Weight normalization uses ``torch.nn.utils.parametrizations.weight_norm``; the trainable tensors
are ``last_layer.parametrizations.weight.original0`` (``g``, shape [out_dim, 1]) and
``...original1`` (``v``, shape [out_dim, bottleneck_dim]).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm


class DINOHead(nn.Module):
    """MLP -> L2 normalization -> weight-normalized linear layer to ``out_dim`` prototypes.

    Linear layers of the MLP are initialized with a truncated normal (std 0.02) and zero biases, as in
    the reference; the last layer keeps PyTorch's default init for ``v`` and ``g = 1``.
    """

    def __init__(self, in_dim: int, out_dim: int = 65536, *, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 layers: int = 3, use_bn: bool = False, norm_last_layer: bool = True):
        super().__init__()
        layers = max(int(layers), 1)
        if layers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck_dim)
        else:
            mods: list[nn.Module] = []
            dim = in_dim
            for _ in range(layers - 1):
                mods.append(nn.Linear(dim, hidden_dim))
                if use_bn:
                    mods.append(nn.BatchNorm1d(hidden_dim))
                mods.append(nn.GELU())
                dim = hidden_dim
            mods.append(nn.Linear(dim, bottleneck_dim))
            self.mlp = nn.Sequential(*mods)
        self.mlp.apply(_init_linear)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        gain = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            gain.fill_(1.0)
        gain.requires_grad_(not norm_last_layer)
        self.out_dim = out_dim
        self.norm_last_layer = norm_last_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [N, in_dim]`` -> logits ``[N, out_dim]``."""
        x = self.mlp(x)
        x = F.normalize(x, dim=-1, p=2, eps=1e-6 if x.dtype == torch.float16 else 1e-12)
        return self.last_layer(x)


def _init_linear(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
