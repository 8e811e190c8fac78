"""Sinkhorn-Knopp teacher centering against a direct implementation of its formula, at sharp temperatures,
and over 2 gloo ranks (the plan of the global batch, not of each rank's half)."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dino_pipe.distributed import free_port
from dino_pipe.objective import DINOLoss
from dino_pipe.objective.sinkhorn import sinkhorn_knopp


def direct_sinkhorn(t: torch.Tensor, tau: float, n_iters: int) -> torch.Tensor:
    """The textbook iteration in float64, one entry at a time: Q = exp(t/tau); prototypes to 1/K, rows to 1/N."""
    n, k = t.shape
    q = [[math.exp(float(t[i, j]) / tau) for j in range(k)] for i in range(n)]
    for _ in range(n_iters):
        for j in range(k):
            col = sum(q[i][j] for i in range(n))
            for i in range(n):
                q[i][j] /= col * k
        for i in range(n):
            row = sum(q[i])
            q[i] = [x / (row * n) for x in q[i]]
    return torch.tensor([[x * n for x in r] for r in q], dtype=torch.float64)


def test_sinkhorn_matches_direct_formula():
    torch.manual_seed(0)
    t = torch.randn(12, 7)
    for iters in (1, 3):
        got = sinkhorn_knopp(t, 0.5, iters).double()
        assert torch.allclose(got, direct_sinkhorn(t, 0.5, iters), atol=1e-5), iters


def test_sinkhorn_spreads_a_collapsed_teacher_over_the_prototypes():
    """A teacher whose softmax puts every image on prototype 0 gets targets that use every prototype equally."""
    torch.manual_seed(0)
    n, k = 64, 16
    t = torch.randn(n, k) * 0.05
    t[:, 0] += 1.0  # every row prefers prototype 0
    soft = torch.softmax(t / 0.04, dim=1)
    assert (soft.argmax(1) == 0).all()
    q = sinkhorn_knopp(t, 0.04, 3)
    assert torch.allclose(q.sum(1), torch.ones(n), atol=1e-5)  # each row a distribution
    assert torch.allclose(q.sum(0), torch.full((k,), n / k), rtol=0.05)  # each prototype its share of the batch
    assert len(set(q.argmax(1).tolist())) > k // 2


def test_sinkhorn_survives_temperatures_where_exp_overflows():
    t = torch.randn(32, 64) * 50
    q = sinkhorn_knopp(t, 0.01, 3)  # logits/tau up to ~1e4: exp overflows float32 without the log domain
    assert torch.isfinite(q).all() and torch.allclose(q.sum(1), torch.ones(32), atol=1e-4)


def test_loss_with_sinkhorn_uses_the_plan_not_the_centre():
    torch.manual_seed(1)
    b, k = 4, 9
    student, teacher = torch.randn(4 * b, k), torch.randn(2 * b, k)
    loss_fn = DINOLoss(k, centering="sinkhorn", sinkhorn_iters=3)
    loss_fn.center.copy_(torch.randn(1, k))  # must not matter
    q = direct_sinkhorn(teacher, 0.04, 3).float().view(2, b, k)
    log_p = torch.log_softmax(student / 0.1, dim=1).view(4, b, k)
    pairs = [-(q[i] * log_p[v]).sum(1).mean() for i in range(2) for v in range(4) if v != i]
    want = torch.stack(pairs).mean()
    got = loss_fn(student, teacher, teacher_temp=0.04, update_center=False)
    assert torch.allclose(got, want, atol=1e-4)


def _rank(rank: int, port: int, t: torch.Tensor, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        half = t.shape[0] // 2
        q = sinkhorn_knopp(t[rank * half : (rank + 1) * half], 0.1, 3)
        torch.save(q, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_two_ranks_get_the_plan_of_the_global_batch(tmp_path):
    torch.manual_seed(2)
    t = torch.randn(16, 10)
    mp.spawn(_rank, args=(free_port(), t, str(tmp_path / "q")), nprocs=2, join=True)
    got = torch.cat([torch.load(tmp_path / f"q.{r}") for r in range(2)])
    assert torch.allclose(got, sinkhorn_knopp(t, 0.1, 3), atol=1e-5)
    assert not torch.allclose(got[:8], sinkhorn_knopp(t[:8], 0.1, 3), atol=1e-3)  # not each rank on its own
