"""Chinese-CLIP's LMDB layout, ours to write and read: the builder (writer, journal, records, tables,
digest, splits, validation of the input rows) and the readers the trainer and the evaluator use.

The writing side imports no torch (a build of 1M rows runs in a few hundred MiB); the readers decode
into arrays for the model's transforms.
"""
