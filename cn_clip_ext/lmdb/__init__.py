"""Chinese-CLIP's LMDB layout, ours to write and read: the builder (writer, journal, records, tables,
digest, splits; the annotation CSV's rows and the image checks) and the readers the trainer and the evaluator use.

The writing side imports no torch (a build of 1M rows runs in a few hundred MiB); the readers decode
into arrays for the model's transforms.
"""
