"""The GPU-side training features exercised on the CPU: bf16 autocast, fused AdamW, the fp16
GradScaler step (fused AdamW skipping an overflowing step), SyncBatchNorm models (ResNet + BN
head) and, in the slow tests, ``torch.compile``. On a GPU machine ``tests/test_train_gpu.py``
runs the same paths on CUDA."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from dino_pipe.config import load_config
from dino_pipe.distributed import DistEnv
from dino_pipe.train import trainer as trainer_mod
from dino_pipe.train.optim import build_optimizer
from dino_pipe.train.trainer import DINOTrainer

TINY = ["model.arch=vit_tiny_patch16_224", "model.arch_kwargs={img_size: 32, patch_size: 8, depth: 1}",
        "model.out_dim=64", "model.hidden_dim=32", "model.bottleneck_dim=16", "data.batch_size=4",
        "data.global_size=32", "data.local_size=16", "data.n_local=2", "optim.warmup_epochs=0",
        "optim.freeze_last_layer_epochs=0", "optim.base_lr=0.05", "train.cpu_threads=1"]
RESNET = ["model.arch=resnet18", "model.arch_kwargs={}", "model.use_bn_in_head=true", "model.out_dim=64",
          "model.hidden_dim=32", "model.bottleneck_dim=16", "data.batch_size=4", "data.global_size=32",
          "data.local_size=16", "data.n_local=2", "optim.optimizer=sgd", "optim.warmup_epochs=0",
          "optim.freeze_last_layer_epochs=0", "model.drop_path=0.0", "train.cpu_threads=1"]


def _views(seed: int = 0, batch: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, s, s, generator=g) for s in (32, 32, 16, 16)]


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_bf16_autocast_step_tracks_the_fp32_step():
    fp32 = DINOTrainer(load_config(None, TINY + ["train.precision=fp32"]), DistEnv(device="cpu"), 100)
    bf16 = DINOTrainer(load_config(None, TINY + ["train.precision=bf16"]), DistEnv(device="cpu"), 100)
    assert bf16.precision == "bf16"
    for i in range(3):
        a = fp32.step(_views(i), i)
        b = bf16.step(_views(i), i)
        assert torch.isfinite(b.loss) and abs(float(a.loss) - float(b.loss)) < 0.05 * float(a.loss)
    wa, wb = _weights(fp32.student), _weights(bf16.student)
    assert all(wb[k].dtype == wa[k].dtype for k in wa)  # autocast: weights stay fp32
    diff = max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)
    assert 0 < diff < 0.05  # bf16 differs, but only by rounding


def test_fused_adamw_matches_the_foreach_adamw():
    cfg = load_config(None, TINY)
    plain = DINOTrainer(cfg, DistEnv(device="cpu"), 100)
    fused = DINOTrainer(cfg, DistEnv(device="cpu"), 100)
    fused.optimizer = build_optimizer(fused.student, cfg.optim, fused=True)
    assert fused.optimizer.defaults["fused"] and not plain.optimizer.defaults.get("fused")
    w0 = _weights(plain.student)
    for i in range(3):
        plain.step(_views(i), i)
        fused.step(_views(i), i)
        wa, wb = _weights(plain.student), _weights(fused.student)
        diff = max((wa[k] - wb[k]).abs().max().item() for k in wa)
        moved = max((wa[k] - w0[k]).abs().max().item() for k in wa)
        # same update up to rounding (amplified later where Adam divides a ~0 gradient, e.g. the key bias)
        assert diff < (1e-6 if i == 0 else 0.05 * moved), (i, diff, moved)
    assert set(fused.optimizer.state_dict()["state"]) == set(plain.optimizer.state_dict()["state"])


def test_fp16_gradscaler_step_with_fused_adamw_skips_an_overflow(monkeypatch):
    """The fp16 path as on a GPU (GradScaler + fused AdamW, which takes the scaler's found_inf and never
    syncs): a normal step updates and keeps the scale; an overflowing step leaves the student untouched
    and halves the scale."""
    monkeypatch.setattr(trainer_mod, "resolve_precision", lambda precision, device: "fp16")
    cfg = load_config(None, TINY)
    t = DINOTrainer(cfg, DistEnv(device="cpu"), 100)
    t.optimizer = build_optimizer(t.student, cfg.optim, fused=True)
    assert t.precision == "fp16" and t.scaler.is_enabled()
    t.scaler = torch.amp.GradScaler("cpu", init_scale=32.0)  # this tiny model's fp16 backward overflows at >= 256
    scale0 = t.scaler.get_scale()
    before = _weights(t.student)
    res = t.step(_views(0), 0)
    assert torch.isfinite(res.loss) and t.scaler.get_scale() == scale0
    after = _weights(t.student)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert 0 < float(res.grad_norm) < 1e3  # clipping saw unscaled gradients
    t.scaler.update(new_scale=float(torch.finfo(torch.float32).max))  # the next backward overflows
    res = t.step(_views(1), 1, sync=False)
    assert torch.isfinite(res.loss)  # the loss is fine, its scaled gradients are not
    assert all(torch.equal(after[k], v) for k, v in _weights(t.student).items()), "overflowing step was applied"
    assert t.scaler.get_scale() == pytest.approx(float(torch.finfo(torch.float32).max) / 2)
    t.check_finite()


def test_syncbatchnorm_resnet_with_bn_head(monkeypatch):
    """ResNet + BN head as converted for several GPU ranks: same weights, same checkpoint keys and (one
    process: no statistics to share) bitwise the same steps as plain BatchNorm; eval loads its backbone."""
    cfg = load_config(None, RESNET)
    plain = DINOTrainer(cfg, DistEnv(device="cpu"), 100)
    monkeypatch.setattr(trainer_mod, "uses_sync_batchnorm", lambda env: True)
    synced = DINOTrainer(cfg, DistEnv(device="cpu"), 100)
    bns = [m for m in synced.student.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns and all(isinstance(m, nn.SyncBatchNorm) for m in bns)
    assert any(isinstance(m, nn.SyncBatchNorm) for m in synced.student.head.modules())  # the BN head too
    assert all(
        isinstance(m, nn.SyncBatchNorm)
        for m in synced.teacher.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    )
    for i in range(2):
        a, b = plain.step(_views(i), i), synced.step(_views(i), i)
        assert torch.equal(a.loss, b.loss)
    wa, wb = _weights(plain.student), _weights(synced.student)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    from dino_pipe.models.backbone import create_backbone

    backbone = create_backbone(cfg.model)
    state = {k[len("backbone."):]: v for k, v in synced.teacher.state_dict().items() if k.startswith("backbone.")}
    assert not backbone.load_state_dict(state, strict=True).missing_keys


@pytest.mark.slow
def test_torch_compile_step_matches_eager():
    cfg = load_config(None, TINY + ["model.drop_path=0.0"])
    eager = DINOTrainer(cfg, DistEnv(device="cpu"), 100)
    compiled = DINOTrainer(
        load_config(None, TINY + ["model.drop_path=0.0", "train.compile=true"]), DistEnv(device="cpu"), 100
    )
    w0 = _weights(eager.student)
    for i in range(2):
        a, b = eager.step(_views(i), i), compiled.step(_views(i), i)
        assert abs(float(a.loss) - float(b.loss)) < 1e-4
    wa, wb = _weights(eager.student), _weights(compiled.student)
    moved = max((wa[k] - w0[k]).abs().max().item() for k in wa)
    # rounding differences, amplified where Adam divides a ~0 gradient (the attention key bias)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 0.25 * moved
