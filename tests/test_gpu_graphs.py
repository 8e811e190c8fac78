"""Every DALI graph of dino-pipe (train views, eval, linear-probe views, verify) defined for the GPU on
any machine: DALI checks each operator and argument against its schema and refuses illegal
GPU->CPU transitions when the graph is defined and serialized, which needs no CUDA (the pipelines
are defined with ``device_id=None`` and never built)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dino_pipe.config import DataConfig, load_config
from dino_pipe.data.loader import EvalLoader, ViewLoader
from dino_pipe.shards.dali_decode import image_pipeline, reader_pipeline

SMALL = dict(global_size=64, local_size=32, n_local=2, batch_size=16)


def _is_gpu_graph(serialized: bytes) -> bool:
    return b"decoders__Image" in serialized and b"mixed" in serialized


@pytest.mark.parametrize("extra", [{}, {"output_dtype": "float16"}, {"output_dtype": "bfloat16"},
                                   {"contrast_center": "128", "interp": "cubic"}])
@pytest.mark.parametrize("debug", [False, True])
def test_train_graph_defines_on_gpu(tiny_shardset, extra, debug):
    gpu_cfg = DataConfig(**SMALL, **extra)
    loader = ViewLoader(tiny_shardset, replace(gpu_cfg, output_dtype="float32"), debug=debug)  # a CPU loader
    assert not _is_gpu_graph(loader.definition("cpu"))
    loader.cfg = gpu_cfg  # half output types exist on the GPU graph only
    assert _is_gpu_graph(loader.definition("cuda"))


def test_eval_and_linear_probe_graphs_define_on_gpu(tiny_shardset):
    assert _is_gpu_graph(EvalLoader(tiny_shardset, DataConfig(eval_resize=40, eval_crop=32), batch_size=8).definition())
    loader = EvalLoader(tiny_shardset, DataConfig(), batch_size=8)
    loader.cfg = DataConfig(output_dtype="float16")
    assert _is_gpu_graph(loader.definition())
    from dino_pipe.eval.linear import probe_train_loader
    from dino_pipe.eval.workers import WorkerContext

    cfg = load_config(None, ["data.eval_crop=32"])
    assert _is_gpu_graph(probe_train_loader(str(tiny_shardset), cfg, WorkerContext(), 8).definition())


def test_verify_graphs_define_on_gpu(tiny_shardset):
    task = {"paths": [str(p) for p in sorted(tiny_shardset.glob("*.tar"))],
            "index_paths": [str(p) for p in sorted(tiny_shardset.glob("*.idx"))], "exts": "jpg"}
    assert _is_gpu_graph(reader_pipeline(task, "mixed", 2).serialize())
    assert _is_gpu_graph(image_pipeline("mixed").serialize())


def test_the_old_verify_graph_is_refused_at_definition():
    """The check catches the defect it was written for: ``.shape()`` of mixed output without the dynamic executor."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=1, num_threads=1, device_id=None, exec_async=False, exec_pipelined=False)
    def old():
        data = fn.external_source(name="data", dtype=types.UINT8, ndim=1)
        return fn.decoders.image(data, device="mixed", output_type=types.RGB).shape()

    with pytest.raises(RuntimeError, match="transition from GPU to CPU"):
        old()


def test_decoder_memory_at_dali_defaults_and_gpu_threads_capped(tiny_shardset, monkeypatch):
    """nvJPEG pools are not pre-sized for ImageNet's largest JPEG per thread (GBs at every build): DALI's
    defaults grow them on demand; automatic thread counts stop at GPU_MAX_THREADS per GPU pipeline."""
    from dino_pipe.data import loader as loader_mod

    graph = ViewLoader(tiny_shardset, DataConfig(**SMALL)).definition("cuda")
    for arg in (b"device_memory_padding", b"host_memory_padding", b"preallocate_width_hint"):
        assert arg not in graph
    assert b"hw_decoder_load" in graph  # explicit arguments do appear in the serialized graph
    monkeypatch.setattr(loader_mod, "available_cores", lambda: 64)
    assert loader_mod.default_threads(DataConfig(), 1, "cuda") == loader_mod.GPU_MAX_THREADS
    assert loader_mod.default_threads(DataConfig(), 2, "cpu") == 32
    assert loader_mod.default_threads(DataConfig(threads=12), 1, "cuda") == 12
