"""The training step on CUDA: steps between logs never wait for the device, and the precisions
(bf16 autocast, fp16 GradScaler + fused AdamW) run. Skipped without CUDA; ``tools/gpu_check.sh``
runs them on a GPU machine."""

from __future__ import annotations

import pytest
import torch

from dino_pipe.config import load_config
from dino_pipe.distributed import DistEnv
from dino_pipe.train.diagnostics import CollapseMonitor
from dino_pipe.train.trainer import DINOTrainer

pytestmark = pytest.mark.gpu
TINY = ["model.arch=vit_tiny_patch16_224", "model.arch_kwargs={img_size: 32, patch_size: 8, depth: 2}",
        "model.out_dim=256", "model.hidden_dim=64", "model.bottleneck_dim=32", "data.batch_size=8",
        "data.global_size=32", "data.local_size=16", "data.n_local=2", "optim.warmup_epochs=0",
        "optim.freeze_last_layer_epochs=0"]


def _views(batch: int = 8) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(batch, 3, s, s, generator=g).cuda() for s in (32, 32, 16, 16)]


@pytest.mark.parametrize(
    "extra", [[], ["train.precision=fp16"], ["optim.clip_mode=global"], ["model.use_bn_in_head=true"]]
)
def test_steps_without_sync_never_wait_for_the_device(extra):
    cfg = load_config(None, TINY + extra)
    trainer = DINOTrainer(cfg, DistEnv(device="cuda"), steps_per_epoch=100)
    monitor = CollapseMonitor(cfg.model.out_dim)
    views = _views()
    res = trainer.step(views, 0, sync=True)  # lazy state (optimizer moments, cuBLAS) made on a sync step
    monitor.observe(res.teacher_probs)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i in range(1, 5):
            res = trainer.step(views, i, sync=False)
            monitor.observe(res.teacher_probs)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    trainer.check_finite()
    assert torch.isfinite(res.loss) and monitor.summary()["prototypes_used"] >= 1


def test_bf16_default_and_fused_adamw_on_cuda():
    cfg = load_config(None, TINY)
    trainer = DINOTrainer(cfg, DistEnv(device="cuda"), steps_per_epoch=100)
    assert trainer.precision == "bf16" and trainer.optimizer.defaults.get("fused")
    before = {k: v.clone() for k, v in trainer.student.state_dict().items()}
    for i in range(3):
        res = trainer.step(_views(), i, sync=True)
        assert torch.isfinite(res.loss)
    after = trainer.student.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
