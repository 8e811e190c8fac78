"""A training run as files, what training writes and evaluation reads (so it sits below both):

* :mod:`~dino_pipe.runs.run_dir` - the run folder's names: its marker, ``data.json``, the checkpoint files
  and which config changes a resume accepts (no torch);
* :mod:`~dino_pipe.runs.checkpoint_file` - a checkpoint file's format, its atomic write and its
  ``weights_only`` read.
"""
