"""The model side: cn_clip's ``CLIP`` built from tower configs (factory), its tokenizer and fundus
transforms, checkpoint and bundle loading, ONNX export and batch inference.

Nothing here imports the trainer: inference, evaluation and export load models through this package
alone.
"""
