"""The reference loader: webdataset + PIL + torchvision transforms in a torch DataLoader.

This is the DINO reference augmentation (``DataAugmentationDINO`` of Caron et al. 2021) written
from the same :class:`~dino_pipe.data.recipe.ViewSpec` list as the DALI graph, so the two can be
compared view for view (:mod:`dino_pipe.data.fidelity`) and raced (``tools/bench_loader.py``):

    RandomResizedCrop(size, scale, ratio, bicubic) -> RandomHorizontalFlip(p)
    (bilinear only for a spec with ``interp="linear"``; ``"gaussian"``, DALI's default, compares to bicubic)
    -> RandomApply([ColorJitter(b, c, s, h)], p) (torchvision: random order of the four)
    -> RandomGrayscale(p) -> PIL GaussianBlur(radius = U(sigma)) with p -> Solarize(128) with p
    -> ToTensor -> Normalize(mean, std)

Each image is decoded once (PIL) and every view is cut from that decoded image, as in the reference.
"""

from __future__ import annotations

import random

import torch
from PIL import Image, ImageFilter, ImageOps

from dino_pipe.config import DataConfig
from dino_pipe.data.recipe import ViewSpec, multicrop_recipe
from dino_pipe.data.shardset import open_shardset


class RandomPILGaussianBlur:
    """With probability ``p``: ``PIL.ImageFilter.GaussianBlur(radius=U(sigma_min, sigma_max))``."""

    def __init__(self, p: float, sigma: tuple[float, float]):
        self.p, self.sigma = p, sigma

    def __call__(self, img: Image.Image) -> Image.Image:
        if self.p <= 0 or random.random() >= self.p:
            return img
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))


class RandomSolarize:
    """With probability ``p``: pixels ``>= 128`` become ``255 - pixel`` (``PIL.ImageOps.solarize``)."""

    def __init__(self, p: float):
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        if self.p <= 0 or random.random() >= self.p:
            return img
        return ImageOps.solarize(img, threshold=128)


def view_transform(spec: ViewSpec, mean, std):
    """The torchvision transform of one view spec (PIL image in, normalized float CHW tensor out)."""
    from torchvision import transforms as T

    steps = [
        T.RandomResizedCrop(spec.size, scale=spec.scale, ratio=spec.aspect_ratio,
                            interpolation=T.InterpolationMode.BILINEAR if spec.interp == "linear"
                            else T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(p=spec.flip_p),
        T.RandomApply([T.ColorJitter(brightness=spec.brightness, contrast=spec.contrast,
                                     saturation=spec.saturation, hue=spec.hue)], p=spec.jitter_p),
        T.RandomGrayscale(p=spec.grayscale_p),
        RandomPILGaussianBlur(spec.blur_p, spec.blur_sigma),
        RandomSolarize(spec.solarize_p),
        T.ToTensor(),
        T.Normalize(mean, std),
    ]
    return T.Compose(steps)


class MultiCropTransform:
    """PIL image -> list of view tensors (the recipe's global views, then N local), like ``DataAugmentationDINO``."""

    def __init__(self, cfg: DataConfig, n_local: int | None = None):
        self.specs = multicrop_recipe(cfg, n_local)
        self.transforms = [view_transform(s, cfg.mean, cfg.std) for s in self.specs]

    def __call__(self, img: Image.Image) -> list[torch.Tensor]:
        img = img.convert("RGB")
        return [t(img) for t in self.transforms]


def _label(sample: dict) -> int:
    cls = sample.get("cls")
    return int(cls) if cls is not None else -1


def reference_loader(shardset, cfg: DataConfig, *, batch_size: int | None = None, workers: int = 2,
                     n_local: int | None = None, endless: bool = True):
    """A ``torch.utils.data.DataLoader`` of ``(views list, labels)`` batches over the shard set.

    ``endless=True`` resamples shards forever (``webdataset`` ``resampled=True``) so a benchmark
    measures steady state, not epoch restarts; ``workers`` processes run the PIL transforms.
    """
    import webdataset as wds

    shards = open_shardset(shardset)
    transform = MultiCropTransform(cfg, n_local)
    ds = (
        wds.WebDataset(list(shards.tars), resampled=endless, shardshuffle=False,
                       nodesplitter=None, workersplitter=None if endless else wds.split_by_worker,
                       empty_check=False)
        .shuffle(min(cfg.shuffle_buffer, 1000))
        .decode("pil")
        .map(lambda s: (transform(s["jpg"]), _label(s)))
    )
    return torch.utils.data.DataLoader(ds, batch_size=int(batch_size or cfg.batch_size), num_workers=workers,
                                       persistent_workers=workers > 0, drop_last=True)
