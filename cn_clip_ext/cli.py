"""Shared plumbing for the command-line programs (``data_prep/``, ``eval/`` …).

The programs own their argument parsers; this module only runs them uniformly: logging to
stderr, a user error becomes one line and exit status 2, Ctrl-C exit status 130.
"""
from __future__ import annotations

import logging
import sys
from typing import Callable, Sequence

from .errors import UserError

Main = Callable[[Sequence[str] | None], int]


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr at INFO (DEBUG with ``verbose``), once per process."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def device_arg(text: str) -> str:
    """argparse ``type`` for ``--device``: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``, checked against
    this machine (an unknown name or CUDA without a GPU is a one-line usage error)."""
    import argparse

    from .devices import pick_device

    try:
        return str(pick_device(text, 0))
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run_program(prog: str, body: Callable[[], int | None]) -> int:
    """Run a program body; map :class:`UserError` and interrupts to a one-line message."""
    try:
        return int(body() or 0)
    except UserError as exc:
        sys.stderr.write(f"{prog}: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        return 130
