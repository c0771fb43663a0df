"""Pipeline backbone: stages, the Dask runner, HDF5 shards, locks, atomic writes, config
(docs/pipeline.md).  Knows nothing about faces."""
