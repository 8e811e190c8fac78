"""Where a shard set lives: a local folder or an ``s3://bucket/prefix`` in an S3-compatible store.

* :mod:`~dino_pipe.storage.url` tells a URL from a path and refuses URLs where none is supported;
* :mod:`~dino_pipe.storage.s3` talks to the store (list, GET, atomic PUT, HEAD) and turns every
  failure into one :class:`~dino_pipe.errors.UserError` line;
* :mod:`~dino_pipe.storage.cache` fetches a remote shard set, whole shard by whole shard (one GET per
  file), into a bounded local cache, checking each tar's sha256 against the manifest; readers
  (DALI's webdataset reader) then read local files.
"""
