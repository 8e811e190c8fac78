"""Weighted k-nearest-neighbour classification on frozen features (the DINO k-NN protocol).

For a query feature ``q`` (L2-normalized, shape ``[D]``) and a bank of train features
``X`` (L2-normalized, ``[N, D]``) with labels ``y``, let ``s_j = q . x_j`` (cosine similarity)
and ``N_k(q)`` the ``k`` most similar bank entries. The score of class ``c`` is

    score_c(q) = sum_{j in N_k(q)} exp(s_j / T) * [y_j == c]        (T = 0.07 in DINO)

and the prediction is the class with the highest score; top-5 asks whether the true label is
among the five highest-scoring classes.

Memory is bounded at any scale: queries go in chunks of ``query_chunk`` rows, and each chunk
meets the bank ``bank_chunk`` rows at a time, keeping a running top-k (never an
``N_queries x N_train`` matrix, never even a ``query_chunk x N_train`` one). The bank may be
stored in float16 (similarities are computed in float32 from it, one bank chunk at a time).
Across processes the bank stays sharded: each rank finds the top-k of its own slice for the
same query chunk, the candidates (``[chunk, k]`` similarities and labels per rank) are
all-gathered and merged with one more top-k — the same merge as between bank chunks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass
class KnnScores:
    """Counts of correct top-1 / top-5 predictions per k, over ``total`` queries; top-1 also per class."""

    total: int = 0
    top1: dict[int, int] = field(default_factory=dict)
    top5: dict[int, int] = field(default_factory=dict)
    class_top1: dict[int, Tensor] = field(default_factory=dict)
    """Per k: correct top-1 predictions of each class's queries."""
    class_total: Tensor | None = None
    """Queries of each class."""

    def accuracy(self) -> dict[int, dict[str, float]]:
        """``{k: {"top1": %, "top5": %}}``."""
        t = max(self.total, 1)
        return {k: {"top1": 100.0 * self.top1[k] / t, "top5": 100.0 * self.top5[k] / t} for k in sorted(self.top1)}

    def class_accuracy(self) -> dict[int, list[float | None]]:
        """``{k: [top-1 % of each class]}`` (None for a class without queries)."""
        n = self.class_total.tolist() if self.class_total is not None else []
        return {k: [100.0 * h / t if t else None for h, t in zip(hits.tolist(), n)]
                for k, hits in sorted(self.class_top1.items())}


def merge_topk(similarities: Tensor, labels: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Keep the ``k`` most similar of ``m`` candidates per query.

    ``similarities`` ``[Q, m]`` float, ``labels`` ``[Q, m]`` int64 -> ``[Q, min(k, m)]`` each,
    sorted by decreasing similarity. Padding candidates carry similarity ``-inf`` and label -1.
    """
    k = min(k, similarities.shape[1])
    top, pos = similarities.topk(k, dim=1, largest=True, sorted=True)
    return top, labels.gather(1, pos)


def _padded(similarities: Tensor, labels: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Pad ``[Q, m]`` candidates (m < k) to ``[Q, k]`` with ``-inf`` / -1."""
    q, m = similarities.shape
    if m >= k:
        return similarities, labels
    s = torch.full((q, k), float("-inf"), dtype=similarities.dtype, device=similarities.device)
    y = torch.full((q, k), -1, dtype=labels.dtype, device=labels.device)
    s[:, :m] = similarities
    y[:, :m] = labels
    return s, y


def bank_topk(
    queries: Tensor, bank: Tensor, bank_labels: Tensor, k: int, bank_chunk: int = 65536
) -> tuple[Tensor, Tensor]:
    """The ``k`` nearest bank entries of each query, scanning the bank in chunks.

    ``queries`` ``[Q, D]``, ``bank`` ``[N, D]`` (any float dtype), ``bank_labels`` ``[N]`` ->
    (similarities ``[Q, k]`` float32 sorted descending, labels ``[Q, k]`` int64), padded with
    ``-inf`` / -1 when ``N < k``. Peak extra memory: one ``[Q, bank_chunk]`` float32 block plus
    one float32 copy of a bank chunk.
    """
    q32 = queries.float()
    best_s = torch.full((q32.shape[0], 0), float("-inf"), device=queries.device)
    best_y = torch.full((q32.shape[0], 0), -1, dtype=torch.long, device=queries.device)
    for start in range(0, bank.shape[0], bank_chunk):
        block = bank[start : start + bank_chunk].float()
        sims = q32 @ block.T  # [Q, chunk]
        s, pos = sims.topk(min(k, sims.shape[1]), dim=1, largest=True, sorted=True)
        y = bank_labels[start : start + bank_chunk].to(queries.device, torch.long)[pos]
        del sims, block
        best_s, best_y = merge_topk(torch.cat([best_s, s], 1), torch.cat([best_y, y], 1), k)
    return _padded(best_s, best_y, k)


def merge_across_ranks(similarities: Tensor, labels: Tensor, k: int, group=None) -> tuple[Tensor, Tensor]:
    """All-gather every rank's ``[Q, k]`` candidates for the same queries and keep the global top-k."""
    world = dist.get_world_size(group)
    all_s = [torch.empty_like(similarities) for _ in range(world)]
    all_y = [torch.empty_like(labels) for _ in range(world)]
    dist.all_gather(all_s, similarities.contiguous(), group=group)
    dist.all_gather(all_y, labels.contiguous(), group=group)
    return merge_topk(torch.cat(all_s, 1), torch.cat(all_y, 1), k)


def class_scores(similarities: Tensor, labels: Tensor, num_classes: int, temperature: float) -> Tensor:
    """``score[q, c] = sum_j exp(s[q, j] / T) * [labels[q, j] == c]`` -> ``[Q, num_classes]``.

    Padding neighbours (label -1, similarity -inf) contribute nothing.
    """
    weights = (similarities.float() / temperature).exp()
    valid = labels >= 0
    weights = torch.where(valid, weights, torch.zeros_like(weights))
    scores = torch.zeros(similarities.shape[0], num_classes, device=similarities.device)
    return scores.scatter_add_(1, labels.clamp(min=0), weights)


def knn_classify(
    queries: Tensor,
    query_labels: Tensor,
    bank: Tensor,
    bank_labels: Tensor,
    *,
    num_classes: int,
    ks: tuple[int, ...] | list[int] = (10, 20, 100, 200),
    temperature: float = 0.07,
    query_chunk: int = 1024,
    bank_chunk: int = 65536,
    group=None,
    progress=None,
) -> KnnScores:
    """Weighted k-NN top-1 / top-5 counts for each k in ``ks``.

    ``queries`` ``[Q, D]`` and ``bank`` ``[N_local, D]`` must be L2-normalized. With a process
    group (``group`` or the default one when initialized), every rank passes the SAME queries and
    its own slice of the bank; each k is then taken over the union of the slices (callers clip
    k to the total bank size first). ``progress``: optional callable(n_queries_done).
    """
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1
    k_max = max(ks)
    scores = KnnScores(total=0, top1={k: 0 for k in ks}, top5={k: 0 for k in ks},
                       class_top1={k: torch.zeros(num_classes, dtype=torch.long) for k in ks},
                       class_total=torch.zeros(num_classes, dtype=torch.long))
    n_top = min(5, num_classes)
    for start in range(0, queries.shape[0], query_chunk):
        q = queries[start : start + query_chunk]
        target = query_labels[start : start + query_chunk].to(q.device, torch.long)
        s, y = bank_topk(q, bank, bank_labels, k_max, bank_chunk)
        if distributed:
            s, y = merge_across_ranks(s, y, k_max, group)
        for k in ks:
            predicted = class_scores(s[:, :k], y[:, :k], num_classes, temperature).topk(n_top, dim=1).indices
            hit = predicted == target[:, None]
            scores.top1[k] += int(hit[:, 0].sum())
            scores.top5[k] += int(hit.any(dim=1).sum())
            scores.class_top1[k] += torch.bincount(target[hit[:, 0]], minlength=num_classes).cpu()
        scores.class_total += torch.bincount(target.clamp(min=0), minlength=num_classes).cpu()
        scores.total += q.shape[0]
        if progress is not None:
            progress(q.shape[0])
    return scores
