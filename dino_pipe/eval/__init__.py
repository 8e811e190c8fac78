"""Evaluation package: what a trained backbone is worth, and what it looks at.

In the order the work flows:

* :mod:`~dino_pipe.eval.inputs` - the checkpoint's config (+ overrides) and labelled shard sets, checked up front
* :mod:`~dino_pipe.eval.trained_backbone` - a checkpoint's teacher/student backbone (or a random init) in timm
* :mod:`~dino_pipe.eval.workers` - run an evaluation on N processes (GPUs with NCCL, CPUs with gloo)
* :mod:`~dino_pipe.eval.features` - frozen features of a shard set: extraction, exactly-once check, order, files
* :mod:`~dino_pipe.eval.knn` - weighted k-NN classification, chunked and sharded (the algorithm)
* :mod:`~dino_pipe.eval.knn_eval` - ``dino-pipe eval knn``: the DINO k-NN protocol end to end
* :mod:`~dino_pipe.eval.linear` - ``dino-pipe eval linear``: the linear probe on frozen features
* :mod:`~dino_pipe.eval.attention` - ``dino-pipe viz attention``: last-layer CLS attention maps as PNGs
* :mod:`~dino_pipe.eval.export` - ``dino-pipe export``: the backbone as a timm safetensors file
"""
