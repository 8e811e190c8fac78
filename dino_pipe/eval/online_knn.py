"""Online k-NN: how good the teacher's features are *while* training runs.

With ``eval.online_knn_train`` and ``eval.online_knn_val`` (two labelled shard sets, e.g. the
``train``/``val`` pair ``dino-pipe shard`` writes) the training loop measures the weighted k-NN
top-1 (``k = eval.online_knn_k``, ``T = eval.knn_temperature``) of the teacher backbone at step 0
(the untrained network), at every epoch end or every ``eval.online_knn_every_steps`` steps, and at
the last step. The protocol is ``dino-pipe eval knn``'s: evaluation resize/crop
(``data.eval_resize``/``eval_crop``), L2-normalized embeddings, the backbone in eval mode. Every
rank extracts its share; the val features are gathered and the train bank stays sharded.

Training imports nothing from this package: the CLI hands :func:`training_probe` down to
``dino_pipe.train.loop.train(..., online_knn=...)`` (see :mod:`dino_pipe.train.knn_hook`).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from dino_pipe.config import Config
from dino_pipe.distributed import DistEnv
from dino_pipe.errors import UserError
from dino_pipe.eval.features import check_exactly_once, cls_features, extract_features, feature_dtype, gather_ordered
from dino_pipe.eval.inputs import labelled_shardset
from dino_pipe.eval.knn import knn_classify
from dino_pipe.eval.workers import WorkerContext


def training_probe(cfg: Config, env: DistEnv) -> "OnlineKnn | None":
    """The online k-NN hook the CLI hands to :func:`dino_pipe.train.loop.train`: this rank's
    :class:`OnlineKnn` when ``cfg`` names the pair, else None."""
    return OnlineKnn(cfg, WorkerContext.from_env(env)) if cfg.eval.online_knn_on else None


class OnlineKnn:
    """``measure(backbone)`` -> ``{"knn_top1", "knn_top5", "knn_k", "knn_seconds"}`` on the configured pair."""

    def __init__(self, cfg: Config, ctx: WorkerContext):
        e = cfg.eval
        if not (e.online_knn_train and e.online_knn_val):
            raise UserError(
                "online k-NN needs both eval.online_knn_train and eval.online_knn_val (labelled shard sets)"
            )
        for key, path in (("eval.online_knn_train", e.online_knn_train), ("eval.online_knn_val", e.online_knn_val)):
            if not (Path(path) / "manifest.json").is_file():
                raise UserError(f"config key {key}: {path} is not a shard set (make one with `dino-pipe shard`)")
        self.train_set, self.val_set = labelled_shardset(e.online_knn_train), labelled_shardset(e.online_knn_val)
        if self.train_set["classes"] != self.val_set["classes"]:
            raise UserError(
                f"eval.online_knn_train {e.online_knn_train} and eval.online_knn_val {e.online_knn_val} "
                "name different classes; k-NN needs the same label set"
            )
        self.cfg, self.ctx = cfg, ctx
        self.k = min(e.online_knn_k, self.train_set["num_samples"])
        self._loaders: dict[str, object] = {}

    def due(self, step: int, steps_per_epoch: int, last_step: int) -> bool:
        every = self.cfg.eval.online_knn_every_steps or steps_per_epoch
        return step % every == 0 or step == last_step

    def _loader(self, split: str):
        if split not in self._loaders:
            from dino_pipe.data.loader import EvalLoader

            ctx = self.ctx
            path = self.cfg.eval.online_knn_train if split == "train" else self.cfg.eval.online_knn_val
            self._loaders[split] = EvalLoader(
                path,
                self.cfg.data,
                device=ctx.device.type,
                device_id=ctx.device.index or 0,
                rank=ctx.rank,
                world_size=ctx.world_size,
                batch_size=self.cfg.eval.batch_size,
            )
        return self._loaders[split]

    def _features(self, backbone: torch.nn.Module, split: str):
        loader = self._loader(split)
        n = loader.num_samples
        local = extract_features(
            backbone,
            loader,
            self.ctx,
            num_samples=n,
            feature_fn=cls_features,
            dtype=feature_dtype(self.cfg.eval.feature_dtype),
        )
        check_exactly_once(local.indices, n, self.ctx)
        return local, n

    @torch.no_grad()
    def measure(self, backbone: torch.nn.Module) -> dict:
        t0 = time.perf_counter()
        was_training = backbone.training
        backbone.eval()
        try:
            train, _ = self._features(backbone, "train")
            val, n_val = self._features(backbone, "val")
        finally:
            backbone.train(was_training)
        queries, query_labels = gather_ordered(val, n_val, self.ctx)
        scores = knn_classify(
            queries,
            query_labels,
            train.features,
            train.labels.to(self.ctx.device),
            num_classes=int(self.train_set["num_classes"]),
            ks=(self.k,),
            temperature=self.cfg.eval.knn_temperature,
            query_chunk=self.cfg.eval.knn_chunk_size,
            bank_chunk=self.cfg.eval.knn_bank_chunk_size,
        )
        acc = scores.accuracy()[self.k]
        return {
            "knn_top1": acc["top1"],
            "knn_top5": acc["top5"],
            "knn_k": self.k,
            "knn_seconds": round(time.perf_counter() - t0, 3),
        }

    def close(self) -> None:
        for loader in self._loaders.values():
            if hasattr(loader, "close"):
                loader.close()
        self._loaders.clear()
