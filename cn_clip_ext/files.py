"""Reading the files users give: the small structured files they write (prompt sets, dataset tables,
training configs) and the input files a command opens (images, tables), checked before reading."""
from __future__ import annotations

import contextlib
import json
import os
import stat
from pathlib import Path
from typing import Iterator

from .errors import UserError, first_line


MAX_STRUCTURED_BYTES = 16 * 1024 * 1024
"""The largest prompt set, dataset table, config or report read (they are kilobytes; a bound keeps a stray
multi-GB file out of memory)."""
MAX_YAML_NODES = 100_000
"""The most YAML nodes a document may hold once its aliases are expanded (the built-in prompt sets hold a
few hundred). A "billion laughs" document, nine aliases of nine aliases, expands to 10^9 from a few lines:
it is refused before anything is built from it, so no later walk of the data (a loop, an error message)
can explode."""


def _expanded_nodes(root: object, limit: int) -> int | None:
    """How many nodes the YAML node graph ``root`` holds with every alias expanded, counted without
    expanding (each distinct node is sized once); ``None`` above ``limit`` or for a cycle (an alias inside
    its own anchor)."""
    import yaml

    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[object, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            kids = _children(node, yaml)
            sizes[key] = min(limit + 1, 1 + sum(sizes[id(c)] for c in kids))
            continue
        if key in sizes:
            continue
        if key in on_path:
            return None
        on_path.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node, yaml) if id(c) not in sizes)
    total = sizes[id(root)]
    return None if total > limit else total


def _children(node: object, yaml) -> list:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _load_yaml(text: str, path: Path, max_nodes: int) -> object:
    """``yaml.safe_load`` that refuses a document whose aliases expand beyond ``max_nodes`` nodes."""
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_nodes(node, max_nodes) is None:
            raise UserError(f"{path}: YAML aliases expand to more than {max_nodes} nodes or refer to "
                            "themselves (an alias bomb?); refused without expanding them")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _is_empty_file(path: Path) -> bool:
    """Whether ``path`` is an empty regular file (``is_file`` only stats: a FIFO is never opened)."""
    try:
        return path.is_file() and path.stat().st_size == 0
    except OSError:
        return False


def read_structured(path: str | Path, what: str | None = None, *, max_bytes: int = MAX_STRUCTURED_BYTES,
                    max_nodes: int = MAX_YAML_NODES) -> object:
    """Parse a ``.yaml``/``.yml`` or ``.json`` file; a one-line :class:`UserError` otherwise.

    ``what`` (e.g. ``"bundle config"``) names the file's role in those errors. The file must be a
    regular file of at most ``max_bytes`` (a FIFO or device is refused at once, never opened), and a
    YAML file's aliases may expand to at most ``max_nodes`` nodes. Error messages quote at most the
    parser's first line, never the content.
    """
    path = Path(path)
    kind = path.suffix.lstrip(".").upper() or "JSON"
    if _is_empty_file(path):
        if path.suffix.lower() in (".yaml", ".yml"):
            return None  # an empty YAML document, as yaml.safe_load reads it
        raise UserError(f"{path}: empty file (expected {kind})")
    check_input_file(path, what or "file", max_bytes)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: {what or 'file'} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or first_line(exc, 120)
        raise UserError(f"{path}: not a readable {kind} {what or 'file'} ({reason})") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            return _load_yaml(text, path, max_nodes)
        return json.loads(text)
    except UserError:
        raise
    except RecursionError:
        raise UserError(f"{path}: {kind} {what or 'file'} nested too deeply to read") from None
    except Exception as exc:  # yaml and json raise different types
        first = first_line(exc, 160)
        if what:
            raise UserError(f"{path}: not a readable {kind} {what} ({first})") from None
        raise UserError(f"{path}: not valid {kind} ({first})") from None


def read_text_lines(path: str | Path, what: str) -> list[str]:
    """Lines of a UTF-8 text file (a BOM is allowed); ``what`` names the file in one-line errors.

    A FIFO, device or folder is refused at once, and so is a file above :data:`DEFAULT_MAX_INPUT_BYTES`."""
    path = Path(path)
    if _is_empty_file(path):
        return []
    check_input_file(path, what, DEFAULT_MAX_INPUT_BYTES)
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise UserError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a readable UTF-8 {what} ({getattr(exc, 'strerror', None) or first_line(exc, 120)})") from None


DEFAULT_MAX_INPUT_BYTES = 256 * 1024 * 1024
"""The largest single input file read by default (a fundus photograph is a few MiB; 256 MiB leaves room
for uncompressed TIFFs and stops a stray multi-GB file from being read into memory)."""


MAX_IMAGE_BYTES_VARIABLE = "VCLIP_MAX_IMAGE_BYTES"
"""The environment variable that bounds the size of one image file (bytes); the programs set it from
``--max-image-mb``, and decoding worker processes inherit it."""


def max_image_bytes() -> int:
    """The largest image file read: ``$VCLIP_MAX_IMAGE_BYTES``, else :data:`DEFAULT_MAX_INPUT_BYTES`."""
    value = os.environ.get(MAX_IMAGE_BYTES_VARIABLE, "")
    return int(value) if value.isdigit() and int(value) > 0 else DEFAULT_MAX_INPUT_BYTES


@contextlib.contextmanager
def image_size_limit(max_bytes: int | None) -> Iterator[None]:
    """Bound image files to ``max_bytes`` (``None``: leave the bound as it is) inside the block, in
    this process and in the worker processes it starts."""
    if max_bytes is None:
        yield
        return
    before = os.environ.get(MAX_IMAGE_BYTES_VARIABLE)
    os.environ[MAX_IMAGE_BYTES_VARIABLE] = str(int(max_bytes))
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(MAX_IMAGE_BYTES_VARIABLE, None)
        else:
            os.environ[MAX_IMAGE_BYTES_VARIABLE] = before


def image_mb_arg(text: str) -> int:
    """argparse ``type`` for ``--max-image-mb``: a positive number of MiB, returned in bytes."""
    import argparse
    import math

    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of MiB, got {text[:40]!r}")
    return max(1, int(value * 1024 * 1024))
class InputFileError(UserError):
    """A one-line :class:`UserError` about an input file, with ``problem``, one of :data:`FILE_PROBLEMS`
    (so that a caller that keeps going, like the LMDB build's row rejects, can file it by kind)."""

    def __init__(self, message: str, problem: str):
        super().__init__(message)
        self.problem = problem


FILE_MISSING, FILE_UNREADABLE, FILE_NOT_REGULAR, FILE_EMPTY, FILE_TOO_LARGE = (
    "missing", "unreadable", "not_regular", "empty", "too_large")
FILE_PROBLEMS: tuple[str, ...] = (FILE_MISSING, FILE_UNREADABLE, FILE_NOT_REGULAR, FILE_EMPTY, FILE_TOO_LARGE)


def _kind_of(mode: int) -> str:
    return ("a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")


def _check_stat(path: Path, st: os.stat_result, what: str, max_bytes: int | None, allow_empty: bool = False) -> int:
    if not stat.S_ISREG(st.st_mode):
        raise InputFileError(f"{path}: {what} is {_kind_of(st.st_mode)}, not a regular file", FILE_NOT_REGULAR)
    if st.st_size == 0 and not allow_empty:
        raise InputFileError(f"{path}: empty file", FILE_EMPTY)
    if max_bytes is not None and st.st_size > max_bytes:
        raise InputFileError(f"{path}: {what} is {st.st_size} bytes, above the limit of {max_bytes}",
                             FILE_TOO_LARGE)
    return st.st_size


def _os_problem(path: Path, what: str, exc: OSError) -> InputFileError:
    if isinstance(exc, FileNotFoundError):
        return InputFileError(f"{path}: {what} not found", FILE_MISSING)
    return InputFileError(f"{path}: cannot read the {what} ({exc.strerror or exc})", FILE_UNREADABLE)


def check_input_file(path: str | Path, what: str = "file", max_bytes: int | None = DEFAULT_MAX_INPUT_BYTES, *,
                     allow_empty: bool = False) -> int:
    """The size of ``path`` after checking, without opening it, that it is a regular file of at most
    ``max_bytes`` (``None``: no bound) and, unless ``allow_empty``, not empty.

    A FIFO, device, socket or folder is refused at once (opening a FIFO would block forever), with a
    one-line :class:`InputFileError` (a :class:`UserError`) naming the path and the reason; so is a
    missing file.
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise _os_problem(path, what, exc) from None
    return _check_stat(path, st, what, max_bytes, allow_empty)


def read_input_file(path: str | Path, what: str = "file", max_bytes: int | None = DEFAULT_MAX_INPUT_BYTES) -> bytes:
    """The bytes of ``path`` under the checks of :func:`check_input_file`, made on the opened file
    itself (opened non-blocking, so a FIFO swapped in after a check cannot hang the read either);
    never more than ``max_bytes`` are read."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise _os_problem(path, what, exc) from None
    try:
        _check_stat(path, os.fstat(fd), what, max_bytes)
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read() if max_bytes is None else fh.read(max_bytes + 1)
    except OSError as exc:
        raise _os_problem(path, what, exc) from None
    finally:
        os.close(fd)
    if not data:
        raise InputFileError(f"{path}: empty file", FILE_EMPTY)
    if max_bytes is not None and len(data) > max_bytes:  # it grew while being read
        raise InputFileError(f"{path}: {what} is above the limit of {max_bytes} bytes", FILE_TOO_LARGE)
    return data
