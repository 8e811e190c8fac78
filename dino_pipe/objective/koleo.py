"""The KoLeo regulariser (Sablayrolles et al. 2019, used by DINOv2): spread the backbone embeddings of a batch.

For the L2-normalised embeddings ``x_1 .. x_B`` of one view of a batch (this rank's images)::

    L_koleo = - 1/B * sum_i log( min_{j != i} ||x_i - x_j||_2 + eps )

It is large when two images of the batch get nearly the same embedding, and so pushes the untrained network's
nearly identical embeddings of different images apart from the first step (what a k-NN reads).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def koleo_loss(embeddings: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``embeddings [B, D]`` (B >= 2) -> the scalar KoLeo loss (module docstring), in float32."""
    x = F.normalize(embeddings.float(), dim=-1, eps=eps)
    with torch.no_grad():  # the nearest neighbour of each row (the argmin needs no gradient)
        sim = x @ x.t()
        sim.fill_diagonal_(-2.0)
        nearest = sim.argmax(dim=1)
    dist = (x - x[nearest]).norm(dim=-1)
    return -torch.log(dist + eps).mean()
