"""The data package: shard set -> DALI multi-crop graph -> PyTorch batches of views.

``recipe`` (view specs from :class:`~dino_pipe.config.DataConfig`), ``shardset`` (manifest and
checks), ``graph`` (the DALI pipelines, one definition for CPU and GPU), ``loader``
(:class:`ViewLoader`, :class:`EvalLoader`), ``reference`` (the PIL/torchvision baseline),
``bench`` (loader throughput), ``fidelity`` (DALI vs reference view statistics).
Import the submodules directly; this package imports nothing heavy on its own.
"""
