"""dino-pipe: DINO self-supervised training fed by NVIDIA DALI over validated WebDataset shards.

Packages, in the order the data flows: ``shards`` (write, verify) -> ``data`` (DALI pipelines) ->
``models`` (backbone, head) -> ``objective`` (loss, centering) -> ``train`` (loop, EMA,
schedules, checkpoints) -> ``eval`` (k-NN, linear, attention, export); ``cli`` ties them together.
They depend one way (CONTRIBUTING.md, "Layers"): a package imports only from the layers below it.
"""

__version__ = "0.1.0"
