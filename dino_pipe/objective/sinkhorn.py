"""Sinkhorn-Knopp centering of the teacher (as in DINOv2 and SwAV): an alternative to the EMA centre.

Instead of ``softmax((t - c) / tau_t)``, the teacher targets for a batch of ``N`` rows (all global views of
all ranks together, ``N = T B W`` for ``T`` global views) and ``K`` prototypes are the transport plan::

    Q = exp(t / tau_t)                                  [N, K]
    repeat n_iters times:
        Q <- Q / (K * colsum(Q))       every prototype gets 1/K of the batch's mass
        Q <- Q / (N * rowsum(Q))       every row gets 1/N
    return N * Q                       rows sum to 1

The column sums are all-reduced over ranks, so every rank sees the plan of the whole global batch. The
prototype constraint is what the EMA centre only approximates: within each batch the teacher must spread its
mass over all prototypes, so it cannot settle on a few of them.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist


def _all_reduce(x: torch.Tensor, op=None) -> torch.Tensor:
    if op is None:
        op = dist.ReduceOp.SUM
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(x, op=op)
    return x


def _global_logsumexp_rows(log_q: torch.Tensor) -> torch.Tensor:
    """``log sum_n exp(log_q[n, k])`` over the rows of all ranks, ``[1, K]``."""
    m = _all_reduce(log_q.max(dim=0, keepdim=True).values, dist.ReduceOp.MAX)
    return m + torch.log(_all_reduce(torch.exp(log_q - m).sum(dim=0, keepdim=True)))


@torch.no_grad()
def sinkhorn_knopp(teacher_out: torch.Tensor, teacher_temp: float, n_iters: int = 3) -> torch.Tensor:
    """Teacher targets ``[N_local, K]`` (float32, rows sum to 1) by ``n_iters`` Sinkhorn-Knopp iterations over
    the global batch (module docstring), computed in the log domain so that sharp temperatures neither
    overflow nor leave a prototype with zero mass. No host sync: the row count is a Python number."""
    log_q = teacher_out.detach().float() / teacher_temp
    n_rows = log_q.shape[0]
    if dist.is_available() and dist.is_initialized():
        n_rows *= dist.get_world_size()
    log_k, log_n = math.log(log_q.shape[1]), math.log(n_rows)
    for _ in range(n_iters):
        log_q = log_q - _global_logsumexp_rows(log_q) - log_k
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) - log_n
    return torch.exp(log_q + log_n)
