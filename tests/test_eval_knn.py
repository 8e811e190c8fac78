"""Weighted k-NN: agreement with the formula, chunking, a sharded bank over 2 ranks, fp16 banks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dino_pipe.eval.knn import bank_topk, class_scores, knn_classify, merge_topk
from dino_pipe.eval.workers import WorkerContext, run_workers


def naive_knn(queries, query_labels, bank, bank_labels, num_classes, k, T):
    """The DINO formula on the full similarity matrix, one query at a time (float64)."""
    sims = queries.double() @ bank.double().T
    top1 = top5 = 0
    for i in range(queries.shape[0]):
        order = sims[i].argsort(descending=True)[:k]
        score = torch.zeros(num_classes, dtype=torch.float64)
        for j in order.tolist():
            score[bank_labels[j]] += torch.exp(sims[i, j] / T)
        ranked = score.argsort(descending=True)
        top1 += int(ranked[0] == query_labels[i])
        top5 += int(query_labels[i] in ranked[: min(5, num_classes)].tolist())
    return top1, top5


def clustered(n, num_classes, dim, noise, seed):
    """Realistic-ish features: class centres + noise, L2-normalized (labels are the classes)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(1234))
    labels = torch.randint(0, num_classes, (n,), generator=g)
    x = centres[labels] + noise * torch.randn(n, dim, generator=g)
    return F.normalize(x, dim=1), labels


def test_matches_the_formula_on_random_features():
    g = torch.Generator().manual_seed(0)
    C, D = 7, 16
    bank = F.normalize(torch.randn(300, D, generator=g), dim=1)
    bank_labels = torch.randint(0, C, (300,), generator=g)
    queries = F.normalize(torch.randn(50, D, generator=g), dim=1)
    query_labels = torch.randint(0, C, (50,), generator=g)
    ks = (1, 5, 20, 300)
    got = knn_classify(queries, query_labels, bank, bank_labels, num_classes=C, ks=ks, temperature=0.07,
                       query_chunk=16, bank_chunk=64)
    assert got.total == 50
    for k in ks:
        top1, top5 = naive_knn(queries, query_labels, bank, bank_labels, C, k, 0.07)
        assert got.top1[k] == top1, k
        if k >= 20:  # with fewer neighbours, several classes score 0 and top-5 is decided by ties
            assert got.top5[k] == top5, k
    # random labels: accuracies are near chance, not trivially 0 or 100
    assert 0 < got.top1[20] < 50 and got.top5[20] > got.top1[20]


def test_same_answer_for_any_chunking():
    bank, bank_labels = clustered(1000, 10, 32, 1.5, seed=1)
    queries, query_labels = clustered(200, 10, 32, 1.5, seed=2)
    ref = None
    for qc, bc in [(200, 1000), (7, 1000), (64, 33), (1, 10_000), (50, 201)]:
        got = knn_classify(queries, query_labels, bank, bank_labels, num_classes=10, ks=(10, 20, 100),
                           query_chunk=qc, bank_chunk=bc)
        if ref is None:
            ref = got
        assert got.top1 == ref.top1 and got.top5 == ref.top5, (qc, bc)


def test_bank_topk_pads_when_the_bank_is_smaller_than_k():
    bank = F.normalize(torch.randn(3, 4), dim=1)
    s, y = bank_topk(bank[:2], bank, torch.tensor([0, 1, 2]), k=5, bank_chunk=2)
    assert s.shape == (2, 5) and torch.isinf(s[:, 3:]).all() and (y[:, 3:] == -1).all()
    assert torch.allclose(s[:, 0], torch.ones(2))  # each query finds itself first
    scores = class_scores(s, y, num_classes=3, temperature=0.07)
    assert torch.isfinite(scores).all() and scores.argmax(1).tolist() == [0, 1]


def test_merge_topk_keeps_the_best_candidates():
    s = torch.tensor([[0.1, 0.9, 0.5, float("-inf")]])
    y = torch.tensor([[1, 2, 3, -1]])
    top, lab = merge_topk(s, y, 2)
    assert torch.allclose(top, torch.tensor([[0.9, 0.5]])) and lab.tolist() == [[2, 3]]


def _sharded_knn(ctx: WorkerContext, queries, query_labels, bank, bank_labels, ks):
    """Each rank holds an uneven slice of the bank; candidates are merged across ranks."""
    cut = 137  # rank 0 gets 137 rows, rank 1 the rest
    part = slice(0, cut) if ctx.rank == 0 else slice(cut, None)
    got = knn_classify(queries, query_labels, bank[part], bank_labels[part], num_classes=10, ks=ks,
                       query_chunk=64, bank_chunk=50)
    return got.top1, got.top5


def test_two_ranks_with_a_sharded_bank_give_the_single_process_answer():
    bank, bank_labels = clustered(400, 10, 32, 1.5, seed=3)
    queries, query_labels = clustered(150, 10, 32, 1.5, seed=4)
    ks = (10, 20, 200)
    single = knn_classify(queries, query_labels, bank, bank_labels, num_classes=10, ks=ks)
    top1, top5 = run_workers(_sharded_knn, gpus=0, procs=2, args=(queries, query_labels, bank, bank_labels, ks))
    assert top1 == single.top1 and top5 == single.top5


def test_float16_bank_gives_the_float32_answer():
    """Realistic case: 20 classes, 5k train / 1k queries of 128-d features with strong overlap."""
    bank, bank_labels = clustered(5000, 20, 128, 4.0, seed=5)
    queries, query_labels = clustered(1000, 20, 128, 4.0, seed=6)
    ks = (10, 20, 100, 200)
    full = knn_classify(queries, query_labels, bank, bank_labels, num_classes=20, ks=ks)
    half = knn_classify(queries.half(), query_labels, bank.half(), bank_labels, num_classes=20, ks=ks)
    acc = full.accuracy()
    assert 30 < acc[20]["top1"] < 95  # a hard-enough problem for rounding to matter
    assert half.top1 == full.top1
    for k in ks:  # top-5 may move by a borderline query or two (a 0.1% change)
        assert abs(half.top5[k] - full.top5[k]) <= 2


@pytest.mark.gpu
def test_cuda_gives_the_cpu_answer():
    bank, bank_labels = clustered(3000, 20, 64, 3.0, seed=7)
    queries, query_labels = clustered(500, 20, 64, 3.0, seed=8)
    cpu = knn_classify(queries.half(), query_labels, bank.half(), bank_labels, num_classes=20, bank_chunk=1000)
    gpu = knn_classify(queries.half().cuda(), query_labels.cuda(), bank.half().cuda(), bank_labels.cuda(),
                       num_classes=20, bank_chunk=1000)
    assert gpu.top1 == cpu.top1 and gpu.top5 == cpu.top5
