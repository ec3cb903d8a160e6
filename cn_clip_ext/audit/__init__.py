"""Leakage and memorisation audit: near-duplicates of evaluation images in a training corpus.

::

    from cn_clip_ext.audit import AuditConfig, VesselEncoder, open_corpus, run_audit, write_audit_report
    result = run_audit(open_corpus("lmdb/"), {"fives": fives_set}, VesselEncoder(), cache_root=None)
    write_audit_report(result, "reports/audit")

Two levels: perceptual hashes of the vessel-enhanced field of view (:mod:`.hashing`) and nearest
neighbours in an embedding space (:mod:`.encoders`, :mod:`.neighbours`); thresholds measured in
:mod:`.calibrate`. ``vclip-audit`` is the program.
"""
from .calibrate import COPY_TRANSFORMS, Calibration, make_copy, measure
from .corpus import ConcatSource, EvalSetSource, FileSource, ImageSource, LmdbSplitSource, open_corpus
from .encoders import Encoder, ModelEncoder, VesselEncoder
from .exclude import excluded_name, exclusion_sets, read_exclude, without
from .features import Features, corpus_features, extract
from .hashing import MAX_HASH_DISTANCE, QUERY_ROTATIONS, fov_circle, fov_view, hamming, perceptual_hash
from .neighbours import search, search_rotated
from .report import EXCLUDE_FILE, write_audit_report
from .run import AuditConfig, AuditResult, Pair, run_audit

__all__ = [
    "AuditConfig", "AuditResult", "COPY_TRANSFORMS", "Calibration", "ConcatSource", "EXCLUDE_FILE", "Encoder",
    "EvalSetSource", "Features", "FileSource", "ImageSource", "LmdbSplitSource", "MAX_HASH_DISTANCE",
    "ModelEncoder", "Pair", "QUERY_ROTATIONS", "VesselEncoder", "corpus_features", "excluded_name",
    "exclusion_sets", "extract",
    "fov_circle", "fov_view", "hamming", "make_copy", "measure", "open_corpus", "perceptual_hash",
    "read_exclude", "run_audit", "search", "search_rotated", "without", "write_audit_report",
]
