"""Training-step speed: a plain-PyTorch reference DINO step vs dino-pipe's ``DINOTrainer.step``.

    .venv/bin/python tools/bench_train.py                       # GPU: ViT-S/16, 2x224 + 10x96, batch 64
    .venv/bin/python tools/bench_train.py --cpu --arch vit_tiny_patch16_224 --global-size 32 \\
        --local-size 16 --n-local 2 --batch-size 8 --steps 5 --warmup 2 --arch-kwargs '{"patch_size": 8, "depth": 2}'

Both sides see the same synthetic views already on the device (the loader is measured by
``dino-pipe bench train``). The reference side is written here, in the style of the reference
DINO code: timm backbone + MLP head with weight-normalized last layer, a multi-crop wrapper that
loops over resolution groups, the loss as a Python loop over (teacher view, student view) pairs,
per-parameter clipping and the EMA as Python loops, fp16 autocast with a GradScaler, unfused AdamW,
no compile. Ours runs with each precision given by ``--ours`` (default: bf16 and fp16 on a GPU,
fp32 on the CPU). Prints median step time, images/s, peak GPU memory and the ratio to the reference
(``--json FILE`` also writes them).
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parent))
from install_hint import needs_install, require  # noqa: E402

require('timm')

import argparse
import json
import statistics
import time

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

# -- the plain-PyTorch reference step ---------------------------------------------------------


class RefHead(nn.Module):
    def __init__(self, in_dim, out_dim, hidden=2048, bottleneck=256):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, bottleneck))
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck, out_dim, bias=False))
        g = self.last_layer.parametrizations.weight.original0
        g.data.fill_(1)
        g.requires_grad = False

    def forward(self, x):
        return self.last_layer(F.normalize(self.mlp(x), dim=-1, p=2))


class RefMultiCrop(nn.Module):
    def __init__(self, backbone, head):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x):
        sizes = torch.tensor([v.shape[-1] for v in x])
        ends = torch.cumsum(torch.unique_consecutive(sizes, return_counts=True)[1], 0)
        start, out = 0, []
        for end in ends.tolist():
            out.append(self.backbone(torch.cat(x[start:end])))
            start = end
        return self.head(torch.cat(out))


class RefLoss(nn.Module):
    def __init__(self, out_dim, ncrops, student_temp=0.1, center_momentum=0.9):
        super().__init__()
        self.ncrops, self.student_temp, self.center_momentum = ncrops, student_temp, center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student_output, teacher_output, temp):
        student_out = (student_output / self.student_temp).chunk(self.ncrops)
        teacher_out = F.softmax((teacher_output - self.center) / temp, dim=-1).detach().chunk(2)
        total, n = 0, 0
        for iq, q in enumerate(teacher_out):
            for v in range(len(student_out)):
                if v == iq:
                    continue
                total = total + torch.sum(-q * F.log_softmax(student_out[v], dim=-1), dim=-1).mean()
                n += 1
        with torch.no_grad():
            batch_center = teacher_output.sum(dim=0, keepdim=True) / len(teacher_output)
            self.center = self.center * self.center_momentum + batch_center * (1 - self.center_momentum)
        return total / n


def make_reference(args, device):
    kw = dict(pretrained=False, num_classes=0, **json.loads(args.arch_kwargs))
    if args.arch.startswith("vit"):
        kw.update(dynamic_img_size=True)
    student_bb = timm.create_model(args.arch, drop_path_rate=0.1, **kw)
    teacher_bb = timm.create_model(args.arch, **kw)
    dim = student_bb.num_features
    student = RefMultiCrop(student_bb, RefHead(dim, args.out_dim)).to(device)
    teacher = RefMultiCrop(teacher_bb, RefHead(dim, args.out_dim)).to(device)
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad = False
    reg = [p for n, p in student.named_parameters() if p.requires_grad and not (n.endswith(".bias") or p.ndim == 1)]
    noreg = [p for n, p in student.named_parameters() if p.requires_grad and (n.endswith(".bias") or p.ndim == 1)]
    opt = torch.optim.AdamW([{"params": reg}, {"params": noreg, "weight_decay": 0.0}], lr=1e-4)
    loss_fn = RefLoss(args.out_dim, 2 + args.n_local).to(device)
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    def step(views):
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            t_out = teacher(views[:2])
            s_out = student(views)
            loss = loss_fn(s_out, t_out, 0.04)
        if not torch.isfinite(loss).item():
            raise RuntimeError("reference loss is not finite")
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        for p in student.parameters():  # per-parameter clipping, as the reference
            if p.grad is not None:
                norm = p.grad.data.norm(2)
                coef = 3.0 / (norm + 1e-6)
                if coef < 1:
                    p.grad.data.mul_(coef)
        scaler.step(opt)
        scaler.update()
        with torch.no_grad():
            m = 0.996
            for q, k in zip(student.parameters(), teacher.parameters()):
                k.data.mul_(m).add_((1 - m) * q.detach().data)

    return step


# -- ours -------------------------------------------------------------------------------------


def make_ours(args, device, precision):
    from dino_pipe.config import load_config
    from dino_pipe.distributed import DistEnv
    from dino_pipe.train.trainer import DINOTrainer

    cfg = load_config(None, [f"model.arch={args.arch}", f"model.arch_kwargs={args.arch_kwargs}",
                             f"model.out_dim={args.out_dim}", f"data.batch_size={args.batch_size}",
                             f"data.n_local={args.n_local}", f"train.precision={precision}",
                             f"train.compile={str(args.compile).lower()}"])
    trainer = DINOTrainer(cfg, DistEnv(device=device.type), steps_per_epoch=10_000)
    counter = {"i": 0}

    def step(views):
        trainer.step(views, counter["i"], sync=False)  # as training's non-logging steps
        counter["i"] += 1

    return step


def measure(step, views, steps, warmup, device) -> dict:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        step(views)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    out = {"median_step_s": med, "images_per_s": views[0].shape[0] / med}
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="vit_small_patch16_224")
    ap.add_argument("--arch-kwargs", default="{}", help="JSON dict of extra timm kwargs")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--global-size", type=int, default=224)
    ap.add_argument("--local-size", type=int, default=96)
    ap.add_argument("--n-local", type=int, default=10)
    ap.add_argument("--out-dim", type=int, default=65536)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--ours", default=None, help="comma-separated precisions for our step (default bf16,fp16 / fp32)")
    ap.add_argument("--compile", action="store_true", help="torch.compile our step")
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--json", default=None, help="also write the results as JSON to this file")
    args = ap.parse_args()
    args.arch_kwargs = json.dumps(json.loads(args.arch_kwargs))
    device = torch.device("cpu" if args.cpu or not torch.cuda.is_available() else "cuda")
    precisions = (args.ours or ("bf16,fp16" if device.type == "cuda" else "fp32")).split(",")

    g = torch.Generator().manual_seed(0)
    sizes = [args.global_size] * 2 + [args.local_size] * args.n_local
    views = [torch.randn(args.batch_size, 3, s, s, generator=g).to(device) for s in sizes]
    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "arch": args.arch,
               "batch_size": args.batch_size, "views": f"2x{args.global_size} + {args.n_local}x{args.local_size}"}
    torch.manual_seed(0)
    results["reference (fp16 GradScaler, no compile)" if device.type == "cuda" else "reference (fp32)"] = \
        ref = measure(make_reference(args, device), views, args.steps, args.warmup, device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    for p in precisions:
        torch.manual_seed(0)
        r = measure(make_ours(args, device, p), views, args.steps, args.warmup, device)
        r["speedup_vs_reference"] = r["images_per_s"] / ref["images_per_s"]
        results[f"dino-pipe ({p}{', compile' if args.compile else ''})"] = r
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(json.dumps(results, indent=2))
    if args.json:
        from pathlib import Path

        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    with needs_install(''):
        main()
