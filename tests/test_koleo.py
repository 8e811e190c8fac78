"""The KoLeo regulariser against a direct implementation of its formula, and its effect on embeddings."""

from __future__ import annotations

import math

import torch

from dino_pipe.objective.koleo import koleo_loss


def direct_koleo(x: torch.Tensor) -> float:
    """- 1/B sum_i log min_{j != i} || x_i/|x_i| - x_j/|x_j| ||, one pair at a time."""
    rows = [[float(v) for v in r] for r in x]
    unit = [[v / math.sqrt(sum(w * w for w in r)) for v in r] for r in rows]
    total = 0.0
    for i, a in enumerate(unit):
        d = min(math.sqrt(sum((p - q) ** 2 for p, q in zip(a, b))) for j, b in enumerate(unit) if j != i)
        total += math.log(d + 1e-8)
    return -total / len(unit)


def test_koleo_matches_direct_formula():
    torch.manual_seed(0)
    x = torch.randn(9, 6)
    assert abs(float(koleo_loss(x)) - direct_koleo(x)) < 1e-5


def test_koleo_is_larger_for_nearly_identical_embeddings_and_descending_it_spreads_them():
    torch.manual_seed(0)
    close = torch.randn(1, 16) + 0.01 * torch.randn(32, 16)
    assert float(koleo_loss(close)) > float(koleo_loss(torch.randn(32, 16))) + 2.0
    x = close.clone().requires_grad_(True)
    opt = torch.optim.SGD([x], lr=0.1)
    before = float(koleo_loss(x.detach()))
    for _ in range(50):
        opt.zero_grad()
        koleo_loss(x).backward()
        opt.step()
    assert float(koleo_loss(x.detach())) < before - 1.0


def test_trainer_step_adds_weighted_koleo_of_each_global_view_to_the_sinkhorn_dino_loss():
    """One training step with ``loss.centering=sinkhorn loss.koleo_weight=0.5``: the reported loss is the
    Sinkhorn DINO loss of the head outputs plus 0.5 x the KoLeo of each global view's backbone embeddings."""
    from dino_pipe.config import load_config
    from dino_pipe.distributed import DistEnv
    from dino_pipe.objective import DINOLoss
    from dino_pipe.train.trainer import DINOTrainer

    tiny = ["model.arch=vit_tiny_patch16_224", "model.arch_kwargs={img_size: 32, patch_size: 8, depth: 1}",
            "model.out_dim=64", "model.hidden_dim=32", "model.bottleneck_dim=16", "data.batch_size=4",
            "data.global_size=32", "data.local_size=16", "data.n_local=2", "optim.warmup_epochs=0",
            "train.cpu_threads=1", "loss.centering=sinkhorn", "loss.koleo_weight=0.5"]
    t = DINOTrainer(load_config(None, tiny), DistEnv(device="cpu"), 100)
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(4, 3, s, s, generator=g) for s in (32, 32, 16, 16)]
    with torch.no_grad():
        teacher_out = t.teacher(views[:2])
        student_out, embed = t.student(views, return_embed=True)
    tau = t.schedules.at(0)["teacher_temp"]
    want = DINOLoss(64, centering="sinkhorn")(student_out, teacher_out, tau, update_center=False)
    want = want + 0.5 * (koleo_loss(embed[:4]) + koleo_loss(embed[4:8]))
    got = t.step(views, 0).loss
    assert abs(float(got) - float(want)) < 1e-4
