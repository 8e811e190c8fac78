"""Models: timm backbones, the DINO head and the multi-crop forward."""

from dino_pipe.models.backbone import create_backbone, is_vit, patch_size
from dino_pipe.models.dino import DINOModel, create_dino_model, create_student_teacher
from dino_pipe.models.head import DINOHead

__all__ = ["create_backbone", "is_vit", "patch_size", "DINOHead", "DINOModel", "create_dino_model",
           "create_student_teacher"]
