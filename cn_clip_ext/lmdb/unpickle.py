"""``pairs`` records without code execution: a restricted unpickler and the record shapes.

``pickle.loads`` on a file from elsewhere can run any code. :func:`safe_loads_pair` and
:func:`safe_loads_patient` unpickle with a :class:`RestrictedUnpickler` that resolves no globals
at all (so no callable can be reached) and then accept only tuples, ``str`` and ``int`` in the
record's shape. Torch-free, so digests and checks load no model code.
"""
from __future__ import annotations

import io
import pickle
from typing import Any, NamedTuple

from ..errors import UserError


class UnsafeRecordError(UserError, pickle.UnpicklingError):
    """A ``pairs`` record that is not a plain tuple of the expected shape (a one-line user error:
    the readers re-raise it with the database and record named)."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global (class, function) and persistent id."""

    def find_class(self, module: str, name: str) -> Any:
        # the names are the record's data, not shown
        raise UnsafeRecordError("refusing to load a global (a class or function) from an LMDB record")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeRecordError("refusing a persistent id in an LMDB record")


def _plain(obj: Any) -> bool:
    if type(obj) in (str, int):
        return True
    return type(obj) is tuple and all(_plain(x) for x in obj)


class PairRecord(NamedTuple):
    image_id: int | str
    text_id: int | str
    text: str


def _restricted_load(data: bytes) -> Any:
    try:
        return RestrictedUnpickler(io.BytesIO(bytes(data))).load()
    except UnsafeRecordError:
        raise
    except Exception as exc:  # noqa: BLE001 - garbage bytes raise any of a dozen types
        raise UnsafeRecordError(f"not a pickle ({type(exc).__name__})") from None


def safe_loads_pair(data: bytes) -> PairRecord:
    """Unpickle a ``pairs`` value: ``(image_id, text_id, text)`` of ``int``/``str`` or raise."""
    obj = _restricted_load(data)
    if not _plain(obj) or len(obj) != 3 or type(obj[2]) is not str:
        raise UnsafeRecordError(f"expected (image_id, text_id, text), got {type(obj).__name__}")
    return PairRecord(*obj)


class PatientRecord(NamedTuple):
    patient_id: str
    left_image_id: int
    """``-1`` when the left eye is not stored."""
    right_image_id: int
    report: str


def safe_loads_patient(data: bytes) -> PatientRecord:
    """Unpickle a patient ``pairs`` value: ``(patient_id, left_image_id, right_image_id, report)``
    with ``str`` id and report, ``int`` image ids (``-1``: no image, not both), or raise."""
    obj = _restricted_load(data)
    shape_ok = (_plain(obj) and len(obj) == 4 and type(obj[0]) is str and type(obj[3]) is str
                and type(obj[1]) is int and type(obj[2]) is int and obj[1] >= -1 and obj[2] >= -1)
    if not shape_ok:
        raise UnsafeRecordError(f"expected (patient_id, left_image_id, right_image_id, report), "
                                f"got {type(obj).__name__}")
    if obj[1] < 0 and obj[2] < 0:
        raise UnsafeRecordError("the patient record has no eye image")
    return PatientRecord(*obj)


__all__ = ["PairRecord", "PatientRecord", "RestrictedUnpickler", "UnsafeRecordError", "safe_loads_pair",
           "safe_loads_patient"]
