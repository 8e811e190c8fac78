"""Linear probe: the feature recipe, an epoch on tiny shards, exact resume, the JSON result."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from eval_helpers import write_tiny_checkpoint

from dino_pipe.errors import UserError
from dino_pipe.eval.linear import (
    RESULT_FILE,
    STATE_FILE,
    LinearClassifier,
    ProbeFeatures,
    evaluate_linear,
    topk_correct,
)


def test_probe_features_are_the_normed_cls_tokens_of_the_last_blocks():
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=8,
                            depth=4, dynamic_img_size=True).eval()
    x = torch.randn(2, 3, 32, 32)
    # written out: run the blocks, apply the final norm to each of the last n outputs
    with torch.no_grad():
        t = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
        outs = []
        for blk in vit.blocks:
            t = blk(t)
            outs.append(vit.norm(t))
        f4 = ProbeFeatures(vit, 4, False)(x)
        assert f4.shape == (2, 4 * 192)
        assert torch.allclose(f4, torch.cat([o[:, 0] for o in outs], -1), atol=1e-5)
        assert torch.allclose(f4[:, -192:], vit(x), atol=1e-5)  # the last one is the usual embedding
        f1 = ProbeFeatures(vit, 1, True)(x)
        assert f1.shape == (2, 2 * 192)
        assert torch.allclose(f1[:, 192:], outs[-1][:, 1:].mean(1), atol=1e-5)
    assert ProbeFeatures(vit, 4, False).dim == 768 and ProbeFeatures(vit, 1, True).dim == 384
    with pytest.raises(UserError, match="blocks"):
        ProbeFeatures(vit, 5)


def test_classifier_init_and_topk():
    torch.manual_seed(0)
    head = LinearClassifier(100, 7)
    assert head.linear.bias.abs().sum() == 0 and abs(head.linear.weight.std().item() - 0.01) < 0.002
    logits = torch.tensor([[0.0, 3, 2, 1], [5, 0, 0, 0]])
    assert topk_correct(logits, torch.tensor([2, 0])) == (1, 2)
    assert topk_correct(logits, torch.tensor([1, 3])) == (1, 2)  # 4 classes: top-5 covers them all


def test_one_epoch_then_resume_equals_an_uninterrupted_run(tmp_path, tiny_shardset):
    ckpt = write_tiny_checkpoint(tmp_path / "run")
    opts = ["eval.linear_epochs=2", "eval.batch_size=16", "eval.linear_lr=0.05"]
    full = evaluate_linear(ckpt, tiny_shardset, tiny_shardset, tmp_path / "full", overrides=opts)
    assert full["complete"] and [e["epoch"] for e in full["epochs"]] == [1, 2]
    for e in full["epochs"]:
        assert 0 <= e["top1"] <= e["top5"] <= 100 and e["train_loss"] > 0
    assert full["best"]["top1"] == max(e["top1"] for e in full["epochs"])
    assert full["linear"]["feature_dim"] == 4 * 192 and full["linear"]["lr"] == pytest.approx(0.05 * 16 / 256)
    assert full["epochs"][1]["lr"] < full["epochs"][0]["lr"]  # cosine schedule
    assert json.loads((tmp_path / "full" / RESULT_FILE).read_text())["epochs"] == full["epochs"]

    part = evaluate_linear(ckpt, tiny_shardset, tiny_shardset, tmp_path / "part", overrides=opts, stop_after=1)
    assert not part["complete"] and len(part["epochs"]) == 1 and (tmp_path / "part" / STATE_FILE).is_file()
    resumed = evaluate_linear(ckpt, tiny_shardset, tiny_shardset, tmp_path / "part", overrides=opts)
    assert resumed["resumed_from_epoch"] == 1 and resumed["complete"]
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert strip(resumed["epochs"]) == strip(full["epochs"])
    a = torch.load(tmp_path / "full" / STATE_FILE, weights_only=True)["head"]
    b = torch.load(tmp_path / "part" / STATE_FILE, weights_only=True)["head"]
    assert all(torch.equal(a[k], b[k]) for k in a)

    with pytest.raises(UserError, match="other settings"):
        evaluate_linear(ckpt, tiny_shardset, tiny_shardset, tmp_path / "part", overrides=opts + ["eval.linear_lr=0.1"])
