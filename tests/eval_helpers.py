"""Helpers for the eval-package tests: tiny checkpoints in the trainer's format."""

from __future__ import annotations

from pathlib import Path

import torch

from dino_pipe.config import load_config
from dino_pipe.models.dino import create_student_teacher
from dino_pipe.runs.checkpoint_file import save_checkpoint

TINY_OVERRIDES = [
    "model.arch=vit_tiny_patch16_224",
    "model.out_dim=64", "model.hidden_dim=32", "model.bottleneck_dim=16",
    "data.eval_resize=40", "data.eval_crop=32", "eval.batch_size=16",
]


def write_tiny_checkpoint(run_dir: Path, *, patch: int = 8, img_size: int = 32, arch: str = "vit_tiny_patch16_224",
                          extra: list[str] = (), step: int = 10, seed: int = 0, depth: int = 4) -> Path:
    """A run dir with one checkpoint of a tiny ViT; student and teacher differ (teacher = EMA-like mix)."""
    overrides = TINY_OVERRIDES + [
        f"model.arch={arch}",
        f"model.arch_kwargs={{img_size: {img_size}, patch_size: {patch}, depth: {depth}}}",
        *extra,
    ]
    cfg = load_config(None, overrides)
    torch.manual_seed(seed + 1)
    student, teacher = create_student_teacher(cfg.model)
    with torch.no_grad():  # make the teacher differ from the student (and from a fresh random init)
        for p in teacher.parameters():
            p.mul_(0.9).add_(0.05 * torch.randn_like(p))
    state = {"config": cfg.to_dict(), "step": step, "epoch": 1, "world_size": 1,
             "student": student.state_dict(), "teacher": teacher.state_dict()}
    return save_checkpoint(run_dir, state)
