"""The DINO head, the multi-crop forward and the student/teacher pair."""

from __future__ import annotations

import pytest
import torch

from dino_pipe.config import ModelConfig
from dino_pipe.models import DINOHead, DINOModel, create_dino_model, create_student_teacher

TINY = dict(arch="vit_tiny_patch16_224", arch_kwargs={"img_size": 32, "patch_size": 8, "depth": 2},
            out_dim=64, hidden_dim=48, bottleneck_dim=16)


def test_head_shapes_cosine_logits_and_frozen_gain():
    torch.manual_seed(0)
    head = DINOHead(24, 100, hidden_dim=32, bottleneck_dim=8, layers=3, norm_last_layer=True)
    y = head(torch.randn(5, 24) * 10)
    assert y.shape == (5, 100)
    # g fixed to 1 and the bottleneck L2-normalized: each logit is a cosine similarity
    assert y.abs().max() <= 1.0 + 1e-5
    g = head.last_layer.parametrizations.weight.original0
    v = head.last_layer.parametrizations.weight.original1
    assert g.shape == (100, 1) and not g.requires_grad and torch.all(g == 1)
    assert v.shape == (100, 8) and v.requires_grad
    w = head.last_layer.weight
    torch.testing.assert_close(w.norm(dim=1), torch.ones(100))
    # the direct formula: normalize(mlp(x)) @ (v / ||v||)^T
    x = torch.randn(3, 24)
    z = torch.nn.functional.normalize(head.mlp(x), dim=-1)
    torch.testing.assert_close(head(x), z @ (v / v.norm(dim=1, keepdim=True)).T)
    keys = set(head.state_dict())
    assert {"last_layer.parametrizations.weight.original0", "last_layer.parametrizations.weight.original1"} <= keys


def test_head_trainable_gain_init_and_bn():
    torch.manual_seed(0)
    head = DINOHead(64, 32, hidden_dim=512, bottleneck_dim=256, layers=3, use_bn=True, norm_last_layer=False)
    assert head.last_layer.parametrizations.weight.original0.requires_grad
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in head.mlp) == 2
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert [tuple(m.weight.shape) for m in linears] == [(512, 64), (512, 512), (256, 512)]
    w = torch.cat([m.weight.detach().flatten() for m in linears])
    # trunc_normal_(std=0.02) with the reference's absolute bounds [-2, 2]: effectively N(0, 0.02^2)
    assert abs(float(w.std()) - 0.02) < 0.001 and abs(float(w.mean())) < 0.001
    assert all(torch.all(m.bias == 0) for m in linears)
    one = DINOHead(64, 32, bottleneck_dim=16, layers=1)
    assert isinstance(one.mlp, torch.nn.Linear) and one(torch.randn(2, 64)).shape == (2, 32)


def test_multicrop_forward_batches_per_resolution_and_matches_per_view():
    torch.manual_seed(0)
    model = create_dino_model(ModelConfig(**TINY)).eval()
    calls = []
    model.backbone.register_forward_hook(lambda m, i, o: calls.append(tuple(i[0].shape)))
    views = [torch.randn(3, 3, 32, 32) for _ in range(2)] + [torch.randn(3, 3, 16, 16) for _ in range(4)]
    out = model(views)
    assert out.shape == (6 * 3, 64)
    assert calls == [(6, 3, 32, 32), (12, 3, 16, 16)]  # one backbone call per resolution
    per_view = torch.cat([model(v) for v in views])
    torch.testing.assert_close(out, per_view, atol=1e-5, rtol=1e-4)
    assert all(k.startswith(("backbone.", "head.")) for k in model.state_dict())
    assert "backbone.cls_token" in model.state_dict()


def test_vit_patch16_takes_96px_locals_and_resnet_pools():
    torch.manual_seed(0)
    vit = create_dino_model(ModelConfig(arch="vit_tiny_patch16_224", arch_kwargs={"depth": 1}, out_dim=32,
                                        hidden_dim=32, bottleneck_dim=16))
    assert vit.backbone(torch.randn(1, 3, 96, 96)).shape == (1, 192)
    assert vit([torch.randn(1, 3, 224, 224)] * 2 + [torch.randn(1, 3, 96, 96)]).shape == (3, 32)
    cnn = create_dino_model(ModelConfig(arch="resnet18", out_dim=32, hidden_dim=32, bottleneck_dim=16))
    assert cnn.backbone.embed_dim == 512
    assert cnn.backbone(torch.randn(2, 3, 64, 64)).shape == (2, 512)


def test_student_teacher_pair():
    torch.manual_seed(0)
    student, teacher = create_student_teacher(ModelConfig(drop_path=0.1, **TINY))
    s, t = student.state_dict(), teacher.state_dict()
    assert s.keys() == t.keys()
    assert all(torch.equal(s[k], t[k]) for k in s)
    assert not any(p.requires_grad for p in teacher.parameters())
    assert any(p.requires_grad for p in student.parameters())
    assert student.backbone.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    assert not hasattr(teacher.backbone.blocks[-1].drop_path1, "drop_prob")  # Identity: no stochastic depth
    assert isinstance(student, DINOModel)
