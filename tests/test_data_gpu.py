"""The GPU graph (nvJPEG mixed decode, GPU augmentation ops): shapes, dtypes, CPU agreement, resume.

Skipped without CUDA; ``tools/gpu_check.sh`` runs them on a GPU machine.
"""

from __future__ import annotations

import pytest
import torch

from dino_pipe.config import DataConfig
from dino_pipe.data.graph import FLAG_NAMES
from dino_pipe.data.loader import EvalLoader, ViewLoader

pytestmark = pytest.mark.gpu
SMALL = dict(global_size=64, local_size=32, n_local=4, batch_size=16)


@pytest.mark.parametrize("dtype,torch_dtype", [("float32", torch.float32), ("float16", torch.float16),
                                                ("bfloat16", torch.bfloat16)])
def test_gpu_views_shapes_dtypes(tiny_shardset, dtype, torch_dtype):
    loader = ViewLoader(tiny_shardset, DataConfig(output_dtype=dtype, **SMALL), device="cuda")
    batch = next(iter(loader))
    assert len(batch.views) == 6
    for i, v in enumerate(batch.views):
        size = 64 if i < 2 else 32
        assert v.shape == (16, 3, size, size) and v.dtype == torch_dtype and v.is_cuda
    assert batch.labels.shape == (16,)


def _moments(device: str, tiny_shardset):
    cfg = DataConfig(**SMALL)
    loader = ViewLoader(tiny_shardset, cfg, device=device, debug=True, seed=4)
    views = {k: [] for k in range(6)}
    flags = []
    for _ in range(4):
        for b in loader:
            for k, v in enumerate(b.views):
                views[k].append(v.float().cpu())
            flags.append(torch.cat(b.flags))
    glob = torch.cat(views[0] + views[1])
    loc = torch.cat(sum((views[k] for k in range(2, 6)), []))
    return glob, loc, torch.cat(flags)


def test_gpu_and_cpu_view_statistics_agree(tiny_shardset):
    g_cpu, l_cpu, f_cpu = _moments("cpu", tiny_shardset)
    g_gpu, l_gpu, f_gpu = _moments("cuda", tiny_shardset)
    for a, b in ((g_cpu, g_gpu), (l_cpu, l_gpu)):
        assert (a.mean(dim=(0, 2, 3)) - b.mean(dim=(0, 2, 3))).abs().max() < 0.12
        assert (a.std(dim=(0, 2, 3)) - b.std(dim=(0, 2, 3))).abs().max() < 0.12
    # the random draws are made on the CPU with the same seeds: the flags agree exactly
    assert torch.equal(f_cpu, f_gpu), "same seed -> same crops, coins and factors on both devices"
    assert f_cpu.shape[1] == len(FLAG_NAMES)


def test_gpu_eval_matches_cpu_eval(tiny_shardset):
    cfg = DataConfig(eval_resize=72, eval_crop=64)
    cpu = list(EvalLoader(tiny_shardset, cfg, batch_size=32))
    gpu = list(EvalLoader(tiny_shardset, cfg, device="cuda", batch_size=32))
    assert [b[2].tolist() for b in cpu] == [b[2].tolist() for b in gpu]
    for (xc, yc, _), (xg, yg, _) in zip(cpu, gpu):
        assert torch.equal(yc, yg)
        assert (xc - xg.cpu()).abs().mean() < 0.05  # nvJPEG vs libjpeg-turbo IDCT/upsampling differences


def test_gpu_resume_mid_epoch(tiny_shardset):
    cfg = DataConfig(**SMALL)
    a = ViewLoader(tiny_shardset, cfg, device="cuda", seed=9)
    it = iter(a)
    for _ in range(3):
        next(it)
    state = a.state_dict()
    expected = [next(it) for _ in range(2)]
    b = ViewLoader(tiny_shardset, cfg, device="cuda", seed=9)
    b.load_state_dict(state)
    it_b = iter(b)
    for x in expected:
        y = next(it_b)
        assert all(torch.equal(u, v) for u, v in zip(x.views, y.views))


def test_gpu_batches_reach_torch_without_a_host_wait(tiny_shardset):
    """Views come to torch through DLPack on the current stream: no copy, no torch-side sync."""
    loader = ViewLoader(tiny_shardset, DataConfig(output_dtype="bfloat16", **SMALL), device="cuda")
    it = iter(loader)
    next(it)  # the pipeline is built (and warmed up) outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        batch = next(it)
        total = sum(v.float().sum() for v in batch.views)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(total) and all(v.dtype == torch.bfloat16 and v.is_cuda for v in batch.views)
    images, labels, _ = next(iter(EvalLoader(tiny_shardset, DataConfig(eval_resize=72, eval_crop=64), device="cuda",
                                             batch_size=32)))
    assert images.is_cuda and images.shape == (32, 3, 64, 64) and torch.isfinite(images).all()
