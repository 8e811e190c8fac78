"""Where bytes live: a local folder or an ``s3://bucket/prefix`` in an S3-compatible store.

* :mod:`~dino_pipe.storage.store` is the seam: the :class:`~dino_pipe.storage.store.Store` protocol
  (list, stat, get, download, put, delete) and ``open_store(url)``, which picks the implementation by
  URL scheme from one registry;
* :mod:`~dino_pipe.storage.local` (a folder) and :mod:`~dino_pipe.storage.s3` (boto3; every failure
  one :class:`~dino_pipe.errors.UserError` line) implement it;
* :mod:`~dino_pipe.storage.url` tells a URL from a path and refuses URLs where none is supported;
* :mod:`~dino_pipe.storage.cache` fetches the files it is given from a store, whole file by whole file
  (one GET each), into a bounded local cache, checking each sha256; readers (DALI's webdataset
  reader) then read local files.

This package knows nothing of shard sets' manifests: :mod:`dino_pipe.shards.fetch` reads a
manifest and hands the cache plain file names, sizes and checksums.
"""
