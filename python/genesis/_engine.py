"""Calls into the Rust engine (``genesis._native``): one command of the CLI,
its JSON document and exit code, on a worker thread for the coroutines."""

import asyncio
import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

from genesis import _native
from genesis.errors import BadInputError

PROGRAM = "genesis-recovery"

PathLike = Union[str, "os.PathLike[str]"]


def global_flags(
    repository: Optional[PathLike], database: Optional[PathLike], config: Optional[PathLike]
) -> List[str]:
    """The CLI's global flags for the paths given (None: the CLI's default)."""
    flags: List[str] = []
    for flag, value in (("--repo", repository), ("--db", database), ("--config", config)):
        if value is not None:
            flags += [flag, os.fspath(value)]
    return flags


def run(argv: Sequence[str]) -> Tuple[Any, int]:
    """Runs one CLI command (``argv`` without the program name) with
    ``--json --quiet``; returns its decoded JSON document (None when it
    printed none) and its exit code. Raises the typed exception of an error.
    The GIL is released while the engine works."""
    document, code = _native.run_json([PROGRAM, "--quiet", *argv])
    return (json.loads(document) if document else None), code


async def run_async(argv: Sequence[str]) -> Tuple[Any, int]:
    """:func:`run` on a worker thread: the event loop keeps running."""
    return await asyncio.to_thread(run, list(argv))


def engine_timestamp(value: Union[datetime, str]) -> str:
    """The CLI's text for an instant: a naive datetime is UTC, an aware one
    is converted to UTC; a string is passed as the CLI would take it."""
    if isinstance(value, str):
        return value
    if not isinstance(value, datetime):
        raise BadInputError(
            f"a timestamp must be a datetime or a string, not {type(value).__name__}",
            kind="usage",
            exit_code=2,
        )
    if value.tzinfo is None or value.utcoffset() is None:
        value = value.replace(tzinfo=timezone.utc)
    else:
        value = value.astimezone(timezone.utc)
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_RFC3339 = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?$")


def parse_timestamp(text: str) -> datetime:
    """An aware UTC datetime from the engine's RFC 3339 text (nanoseconds are
    cut to microseconds, Python's resolution)."""
    m = _RFC3339.match(text)
    if m is None:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    whole, frac, zone = m.groups()
    micros = (frac or "")[:6].ljust(6, "0")
    offset = "+00:00" if zone in (None, "Z") else zone
    return datetime.fromisoformat(f"{whole}.{micros}{offset}").astimezone(timezone.utc)


def path_or_none(value: Optional[PathLike]) -> Optional[Path]:
    return None if value is None else Path(value)
