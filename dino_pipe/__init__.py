"""dino-pipe: DINO self-supervised training fed by NVIDIA DALI over validated WebDataset shards.

Rooms, in the order the data flows: ``shards`` (write, verify) -> ``data`` (DALI pipelines) ->
``models`` (backbone, head) -> ``objective`` (loss, centering) -> ``train`` (loop, EMA,
schedules, checkpoints) -> ``eval`` (k-NN, linear, attention, export); ``cli`` ties them together.
"""

__version__ = "0.1.0"
