"""DINOLoss and the center update against loop-based implementations of the paper's formulas."""

from __future__ import annotations

import math

import torch

from dino_pipe.objective import DINOLoss


def direct_dino_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], center: torch.Tensor,
                     tau_s: float, tau_t: float) -> float:
    """Eq. (1) of Caron et al. 2021 with multi-crop, one sample and one pair at a time."""
    total, pairs = 0.0, 0
    batch, k = teacher[0].shape
    for i, t in enumerate(teacher):
        for v, s in enumerate(student):
            if v == i:
                continue
            pair = 0.0
            for b in range(batch):
                zt = [(float(t[b, j]) - float(center[0, j])) / tau_t for j in range(k)]
                mt = max(zt)
                pt = [math.exp(z - mt) for z in zt]
                pt = [p / sum(pt) for p in pt]
                zs = [float(s[b, j]) / tau_s for j in range(k)]
                ms = max(zs)
                logz = ms + math.log(sum(math.exp(z - ms) for z in zs))
                pair += -sum(pt[j] * (zs[j] - logz) for j in range(k))
            total += pair / batch
            pairs += 1
    return total / pairs


def test_loss_matches_direct_formula():
    torch.manual_seed(0)
    batch, k, n_views = 3, 7, 5
    student = [torch.randn(batch, k) for _ in range(n_views)]
    teacher = [torch.randn(batch, k) for _ in range(2)]
    loss_fn = DINOLoss(k, student_temp=0.1, center_momentum=0.9)
    loss_fn.center.copy_(torch.randn(1, k) * 0.3)
    center = loss_fn.center.clone()
    got = loss_fn(torch.cat(student), torch.cat(teacher), teacher_temp=0.04, update_center=False)
    want = direct_dino_loss(student, teacher, center, 0.1, 0.04)
    assert abs(float(got) - want) < 1e-4 * max(1.0, abs(want))
    assert torch.equal(loss_fn.center, center)  # update_center=False leaves it alone


def test_center_update_matches_ema_of_batch_mean():
    torch.manual_seed(1)
    k = 6
    loss_fn = DINOLoss(k, center_momentum=0.9)
    c = [0.0] * k
    for _ in range(3):
        t = torch.randn(2 * 4, k)
        s = torch.randn(5 * 4, k)
        loss_fn(s, t, teacher_temp=0.05)
        for j in range(k):
            mean_j = sum(float(t[r, j]) for r in range(t.shape[0])) / t.shape[0]
            c[j] = 0.9 * c[j] + 0.1 * mean_j
    torch.testing.assert_close(loss_fn.center, torch.tensor([c]), atol=1e-6, rtol=1e-5)


def test_gradient_reaches_student_only_and_same_view_pairs_skipped():
    torch.manual_seed(2)
    b, k = 4, 5
    s = torch.randn(4 * b, k, requires_grad=True)
    t = torch.randn(2 * b, k, requires_grad=True)
    loss = DINOLoss(k)(s, t, teacher_temp=0.04)
    loss.backward()
    assert t.grad is None and s.grad is not None and s.grad.abs().sum() > 0
    # with only the two global views, each is trained only against the other teacher view
    s2 = torch.randn(2 * b, k)
    t2 = torch.randn(2 * b, k)
    fn = DINOLoss(k)
    got = fn(s2, t2, teacher_temp=0.04, update_center=False)
    swapped_teacher = torch.cat([t2[b:], t2[:b]])  # pairs (0,1),(1,0) only
    q = torch.softmax(swapped_teacher / 0.04, -1)
    want = -(q * torch.log_softmax(s2 / 0.1, -1)).sum(-1).mean()
    torch.testing.assert_close(got, want)


def _previous_loss(cfg, student_out, teacher_out, embed, tau):
    """The loss as the trainer computed it before the objective was one module (DINO term + KoLeo inline)."""
    from dino_pipe.objective.koleo import koleo_loss

    fn = DINOLoss(student_out.shape[1], student_temp=cfg.student_temp, center_momentum=cfg.center_momentum,
                  centering=cfg.centering, sinkhorn_iters=cfg.sinkhorn_iters)
    loss = fn.cross_entropy(student_out, fn.teacher_probs(teacher_out, tau))
    if cfg.koleo_weight > 0:
        loss = loss + cfg.koleo_weight * sum(koleo_loss(e) for e in embed[: teacher_out.shape[0]].chunk(2))
    return loss


def test_objective_total_is_the_weighted_sum_of_its_terms_and_equals_the_previous_computation():
    from dino_pipe.config import LossConfig
    from dino_pipe.objective import DINOObjective
    from dino_pipe.objective.koleo import koleo_loss

    torch.manual_seed(3)
    b, k, d, n_views = 6, 16, 8, 4
    student, teacher, embed = torch.randn(n_views * b, k), torch.randn(2 * b, k), torch.randn(n_views * b, d)
    for centering in ("ema", "sinkhorn"):
        cfg = LossConfig(centering=centering, koleo_weight=0.3)
        obj = DINOObjective(cfg, k, n_global=2)
        out = obj(student, obj.teacher_probs(teacher, 0.05), embed)
        assert set(out) == {"loss", "loss_dino", "loss_koleo"}
        want_koleo = koleo_loss(embed[:b]) + koleo_loss(embed[b: 2 * b])
        torch.testing.assert_close(out["loss_koleo"], want_koleo)
        torch.testing.assert_close(out["loss"], out["loss_dino"] + 0.3 * out["loss_koleo"])
        assert torch.equal(out["loss"], _previous_loss(cfg, student, teacher, embed, 0.05))  # bitwise unchanged
    off = DINOObjective(LossConfig(koleo_weight=0.0), k, n_global=2)
    assert not off.needs_embeddings
    out = off(student, off.teacher_probs(teacher, 0.05))  # no embeddings needed: the term is not computed
    assert set(out) == {"loss", "loss_dino"} and torch.equal(out["loss"], out["loss_dino"])
    assert torch.equal(out["loss"], _previous_loss(LossConfig(), student, teacher, None, 0.05))


def test_objective_owns_its_centre_in_its_state_dict():
    from dino_pipe.config import LossConfig
    from dino_pipe.objective import DINOObjective

    torch.manual_seed(4)
    obj = DINOObjective(LossConfig(center_momentum=0.9), 5, n_global=2)
    assert list(obj.state_dict()) == ["dino.center"]
    teacher = torch.randn(8, 5)
    obj.update(teacher)
    torch.testing.assert_close(obj.state_dict()["dino.center"], 0.1 * teacher.mean(0, keepdim=True))
    other = DINOObjective(LossConfig(), 5, n_global=2)
    other.load_state_dict(obj.state_dict())
    assert torch.equal(other.dino.center, obj.dino.center)
