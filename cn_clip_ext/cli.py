"""Shared plumbing for the command-line programs (``data_prep/``, ``eval/`` …).

The programs own their argument parsers; this module only runs them uniformly: logging to
stderr, a user error becomes one line and exit status 2, Ctrl-C exit status 130.
"""
from __future__ import annotations

import argparse
import logging
import math
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
    from .devices import pick_device

    try:
        return str(pick_device(text, 0))
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Help that shows an option's default once: appended as ``(default: X)`` only when the help text
    does not already speak of its default, and never for flags or options without one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or any(action.default is v for v in (None, False, True, argparse.SUPPRESS)):
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return f"{text} (default: %(default)s)"
        return text


def bounded_int(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """argparse ``type`` for an integer in ``[low, high]`` (either bound may be open): anything else,
    a negative count for instance, is a usage error at parse time."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text[:40]!r}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {_range_text(low, high)}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def bounded_float(low: float | None = None, high: float | None = None) -> Callable[[str], float]:
    """argparse ``type`` for a finite number in ``[low, high]`` (``nan`` and ``inf`` are refused)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text[:40]!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text[:40]}")
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {_range_text(low, high)}, got {value:g}")
        return value

    parse.__name__ = "number"
    return parse


def _range_text(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"in [{low:g}, {high:g}]"
    return f">= {low:g}" if low is not None else f"<= {high:g}"


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
