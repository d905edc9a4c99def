"""The Rust engine (built by maturin from python/src/lib.rs)."""

from typing import List, Optional, Tuple

def cli_main(argv: List[str]) -> int:
    """Runs the command line ``argv`` (program name first) like the
    ``genesis-recovery`` binary: prints its output, returns its exit code."""

def run_json(argv: List[str]) -> Tuple[Optional[str], int]:
    """Runs one command with ``--json``; returns (its JSON document or None,
    its exit code). Raises the ``genesis.errors`` exception of a failure."""

def backups_for_timestamp(
    timestamp: str, repository: Optional[str] = None, config: Optional[str] = None
) -> str:
    """The JSON text of the full and incremental backups a restore to
    ``timestamp`` reads."""
