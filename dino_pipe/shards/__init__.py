"""The shards package: image trees -> validated, deterministic WebDataset shard sets, and their check.

* :mod:`~dino_pipe.shards.source` recognises what SRC is (ImageNet in any form, ImageFolder, unlabeled);
  :mod:`~dino_pipe.shards.layout` walks folders, :mod:`~dino_pipe.shards.imagenet` builds ImageNet's
  splits (labels from :mod:`~dino_pipe.shards.imagenet_labels`, archives read in place by
  :mod:`~dino_pipe.shards.archive`).
* :mod:`~dino_pipe.shards.image` validates / normalizes one image (original JPEG bytes or RGB JPEG).
* :mod:`~dino_pipe.shards.plan` shuffles samples into shards with a seed.
* :mod:`~dino_pipe.shards.tar` and :mod:`~dino_pipe.shards.index` write the tar and DALI ``.idx``.
* :mod:`~dino_pipe.shards.options` holds what decides a shard set's bytes (``ShardOptions``).
* :mod:`~dino_pipe.shards.writer` runs it all in parallel (:mod:`~dino_pipe.shards.pool`), resumably
  (:mod:`~dino_pipe.shards.journal`, :mod:`~dino_pipe.shards.outdir`), into a folder or, through
  :mod:`~dino_pipe.shards.remote`, any store of :mod:`dino_pipe.storage`.
* :mod:`~dino_pipe.shards.manifest` is the schema the data package reads (``load_manifest``) and its builder.
* :mod:`~dino_pipe.shards.verify` re-reads a shard set: checksums, index, every image through DALI
  (:mod:`~dino_pipe.shards.verify_remote` for a set in a store).
* :mod:`~dino_pipe.shards.fetch` makes a set in a store a local folder, through the shard cache.
"""

from dino_pipe.shards.manifest import load_manifest

__all__ = ["load_manifest"]
