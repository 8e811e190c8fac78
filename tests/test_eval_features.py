"""Feature extraction on real shards: every sample exactly once over 2 gloo processes; k-NN end to end."""

from __future__ import annotations

import pytest
import torch
from eval_helpers import write_tiny_checkpoint

from dino_pipe.errors import UserError
from dino_pipe.eval.features import (
    LocalFeatures,
    check_exactly_once,
    gather_ordered,
    load_features,
    rank_rows,
    save_features,
)
from dino_pipe.eval.knn_eval import evaluate_knn
from dino_pipe.eval.trained_backbone import load_backbone
from dino_pipe.eval.workers import WorkerContext


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    write_tiny_checkpoint(run)
    return run


def test_two_processes_extract_every_sample_once_with_the_same_features(tiny_run, tiny_shardset, tmp_path):
    """k-NN with features saved from 1 process and from 2 gloo processes (each extracting half)."""
    one = evaluate_knn(
        tiny_run, tiny_shardset, tiny_shardset, ks=(5, 20), which="student", save_features=tmp_path / "one"
    )
    two = evaluate_knn(
        tiny_run, tiny_shardset, tiny_shardset, ks=(5, 20), which="student", save_features=tmp_path / "two", procs=2
    )
    assert two["world_size"] == 2 and one["results"] == two["results"]
    for split in ("train", "val"):
        f1, f2 = (
            load_features(tmp_path / "one" / f"{split}.safetensors"),
            load_features(tmp_path / "two" / f"{split}.safetensors"),
        )
        assert f1.features.shape == (96, 192) and f1.features.dtype == torch.float16
        assert torch.allclose(f1.features.float(), f2.features.float(), atol=2e-3)
        assert f1.labels.tolist() == f2.labels.tolist() == [i % 4 for i in range(96)]  # fixture labels: i % 4
        assert torch.allclose(f1.features.float().norm(dim=1), torch.ones(96), atol=2e-3)  # L2-normalized
    # the student and the teacher are different networks
    teacher = load_backbone(tiny_run).model
    student = load_backbone(tiny_run, "student").model
    assert not torch.equal(teacher.cls_token, student.cls_token)


def test_exactly_once_check_catches_a_missing_or_repeated_sample():
    ctx = WorkerContext()
    check_exactly_once(torch.arange(5), 5, ctx)
    with pytest.raises(RuntimeError, match="exactly once"):
        check_exactly_once(torch.tensor([0, 1, 1, 3, 4]), 5, ctx)
    with pytest.raises(RuntimeError, match="out of range"):
        check_exactly_once(torch.tensor([0, 5]), 5, ctx)


def test_feature_files_round_trip_and_rank_slices(tmp_path):
    feats = torch.randn(10, 4).half()
    labels = torch.arange(10) % 3
    save_features(tmp_path / "train.safetensors", feats, labels, {"num_classes": 3, "classes": ["a", "b", "c"]})
    whole = load_features(tmp_path / "train.safetensors")
    assert torch.equal(whole.features, feats) and torch.equal(whole.labels, labels)
    assert whole.metadata["classes"] == ["a", "b", "c"] and whole.num_rows == 10
    parts = [rank_rows(10, WorkerContext(r, 3)) for r in range(3)]
    assert parts == [(0, 4), (4, 8), (8, 10)]
    part = load_features(tmp_path / "train.safetensors", rows=parts[1])
    assert torch.equal(part.features, feats[4:8])
    with pytest.raises(UserError, match="not found"):
        load_features(tmp_path / "val.safetensors")


def test_gather_ordered_places_rows_by_index():
    local = LocalFeatures(torch.tensor([[3.0], [1.0], [2.0]]), torch.tensor([30, 10, 20]), torch.tensor([2, 0, 1]))
    feats, labels = gather_ordered(local, 3, WorkerContext())
    assert feats.flatten().tolist() == [1.0, 2.0, 3.0] and labels.tolist() == [10, 20, 30]


def test_knn_end_to_end_trained_random_saved_and_loaded(tiny_run, tiny_shardset, tmp_path):
    trained = evaluate_knn(tiny_run, tiny_shardset, tiny_shardset, ks=(1, 10, 200), save_features=tmp_path / "feats")
    res = {r["k"]: r for r in trained["results"]}
    # val == train: each query finds itself (similarity 1) first, so k = 1 is always right
    assert res[1]["top1"] == 100.0
    assert res[200]["k_effective"] == 96  # k clipped to the train-set size
    assert trained["knn"]["feature_dim"] == 192 and trained["data"]["train"]["num_classes"] == 4
    assert trained["checkpoint"]["which"] == "teacher" and trained["checkpoint"]["step"] == 10
    # the model as built (patch 8 from arch_kwargs), not only the timm name that says patch16
    assert trained["checkpoint"]["model"].startswith("ViT patch 8, ")
    assert (tmp_path / "feats" / "train.safetensors").is_file()
    again = evaluate_knn(load_features=tmp_path / "feats", ks=(1, 10, 200))
    assert again["results"] == trained["results"]
    assert again["checkpoint"]["checkpoint"] == trained["checkpoint"]["checkpoint"]
    rnd = evaluate_knn(tiny_run, tiny_shardset, tiny_shardset, ks=(10,), random_init=True)
    assert rnd["checkpoint"]["random_init"] is True and rnd["results"][0]["k"] == 10


def test_knn_user_errors(tiny_run, tiny_shardset, tmp_path):
    with pytest.raises(UserError, match="no such checkpoint"):
        evaluate_knn(tmp_path / "nope.pt", tiny_shardset, tiny_shardset)
    with pytest.raises(UserError, match="shard set"):
        evaluate_knn(tiny_run, tmp_path / "missing", tiny_shardset)
    with pytest.raises(UserError, match="--which"):
        evaluate_knn(tiny_run, tiny_shardset, tiny_shardset, which="ema")
    with pytest.raises(UserError, match="feature file not found"):
        evaluate_knn(load_features=tmp_path)


@pytest.mark.gpu
def test_gpu_pipeline_gives_nearly_the_cpu_answer(tiny_run, tiny_shardset):
    """nvJPEG + GPU resize differ from the CPU path by rounding, so accuracies agree to a sample or two."""
    cpu = evaluate_knn(tiny_run, tiny_shardset, tiny_shardset, ks=(10, 20), gpus=0)
    gpu = evaluate_knn(tiny_run, tiny_shardset, tiny_shardset, ks=(10, 20), gpus=1)
    assert gpu["device"] == "cuda"
    for a, b in zip(cpu["results"], gpu["results"]):
        assert abs(a["top1"] - b["top1"]) <= 2 * 100 / 96


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_half_precision_loader_output_feeds_an_fp32_model(half):
    """A run trained with data.output_dtype=bfloat16|float16 hands half images to the fp32 eval backbone
    (k-NN and linear-probe features): they are cast at the model boundary instead of crashing."""
    import timm

    from dino_pipe.eval.features import cls_features, extract_features
    from dino_pipe.eval.linear import ProbeFeatures

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=0).eval()
    images = torch.randn(6, 3, 32, 32).to(half)
    batches = [(images, torch.arange(6), torch.arange(6))]
    for model, fn in ((vit, cls_features), (ProbeFeatures(vit, 2, False), lambda m, x: m(x))):
        with pytest.raises(RuntimeError):  # what reached the model before: half input, fp32 weights
            fn(model, images)
        got = extract_features(model, batches, WorkerContext(), num_samples=6, feature_fn=fn, dtype=torch.float32)
        want = fn(model, images.float())
        assert torch.equal(got.features, want)
