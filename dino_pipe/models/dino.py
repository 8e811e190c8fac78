"""The network DINO trains: a backbone and a head, with the multi-crop forward.

``DINOModel(backbone, head)`` maps a list of views (the global crops ``[B, 3, G, G]`` then
``n_local`` local crops ``[B, 3, L, L]``) to head outputs ``[n_views * B, out_dim]`` in view order
(rows ``v*B .. (v+1)*B`` belong to view ``v``). Consecutive views of the same resolution are
concatenated and go through the backbone in one call (one call for the globals, one for the
locals), then all embeddings go through the head in one call.

State-dict keys are ``backbone.<timm keys>`` and ``head.<DINOHead keys>``; student and teacher are
two ``DINOModel`` instances of the same architecture.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from dino_pipe.config import ModelConfig
from dino_pipe.models.backbone import create_backbone
from dino_pipe.models.head import DINOHead


class DINOModel(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def embed(self, views: list[torch.Tensor]) -> torch.Tensor:
        """Backbone embeddings ``[n_views * B, embed_dim]``, one backbone call per resolution run."""
        if isinstance(views, torch.Tensor):
            views = [views]
        outputs = []
        start = 0
        while start < len(views):
            end = start + 1
            while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
                end += 1
            batch = views[start] if end == start + 1 else torch.cat(views[start:end], dim=0)
            outputs.append(self.backbone(batch))
            start = end
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=0)

    def forward(self, views: list[torch.Tensor], return_embed: bool = False):
        """Head outputs ``[n_views * B, out_dim]`` for a list of views (or one tensor); with ``return_embed``
        also the backbone embeddings ``[n_views * B, embed_dim]`` they came from."""
        embed = self.embed(views)
        out = self.head(embed)
        return (out, embed) if return_embed else out


def create_dino_model(cfg: ModelConfig, *, drop_path: float = 0.0) -> DINOModel:
    """Backbone from timm (``cfg.arch``) + a :class:`DINOHead` sized from ``cfg``."""
    backbone = create_backbone(cfg, drop_path=drop_path)
    head = DINOHead(backbone.embed_dim, cfg.out_dim, hidden_dim=cfg.hidden_dim, bottleneck_dim=cfg.bottleneck_dim,
                    layers=cfg.head_layers, use_bn=cfg.use_bn_in_head, norm_last_layer=cfg.norm_last_layer)
    return DINOModel(backbone, head)


def create_student_teacher(cfg: ModelConfig) -> tuple[DINOModel, DINOModel]:
    """Student (drop path ``cfg.drop_path``) and teacher (no drop path, same weights, no gradients).

    The teacher starts as an exact copy of the student's weights, as in the reference.
    """
    student = create_dino_model(cfg, drop_path=cfg.drop_path)
    teacher = create_dino_model(cfg, drop_path=0.0)
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad_(False)
    return student, teacher
