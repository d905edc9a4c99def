"""Backups: list them, find the ones a restore reads, check them.

``BackupManager`` names the repository (and the database it protects); its
coroutines run the engine on a worker thread, so the event loop keeps
running meanwhile.
"""

import asyncio
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from genesis import _engine, _native
from genesis._engine import PathLike


@dataclass(frozen=True)
class BackupMetadata:
    """One backup (a row of ``list-backups``).

    Attributes:
        backup_id: the id ``restore --backup-id`` and ``verify-backups`` take.
        backup_type: ``full`` or ``incremental`` (``events`` with
            ``include_events``).
        timestamp: the newest instant the backup reaches, an aware UTC
            datetime (to the microsecond; ``timestamp_exact`` has every digit).
        timestamp_exact: the same instant as the engine's RFC 3339 text, to the
            nanosecond: given back as a target it restores exactly this point.
        size_bytes: stored size. checksum: BLAKE3 of the stored bytes.
    """

    backup_id: str
    backup_type: str
    timestamp: datetime
    timestamp_exact: str
    size_bytes: int
    checksum: str
    generation: str
    txid_min: int
    txid_max: int
    db_checksum: Optional[str]
    transactions: int

    @classmethod
    def from_row(cls, row: Dict[str, Any]) -> "BackupMetadata":
        """From one row of the engine's ``list-backups --json``."""
        return cls(
            backup_id=row["backup_id"],
            backup_type=row["backup_type"],
            timestamp=_engine.parse_timestamp(row["timestamp"]),
            timestamp_exact=row["timestamp"],
            size_bytes=row["size_bytes"],
            checksum=row["checksum"],
            generation=row["generation"],
            txid_min=row["txid_min"],
            txid_max=row["txid_max"],
            db_checksum=row.get("db_checksum"),
            transactions=row["transactions"],
        )


class BackupManager:
    """The backup repository of one database.

    Args:
        repository: the repository's folder (default: ``repository`` of the
            settings file, else ``.genesis/backups``). Only local folders are
            supported by the engine today: an ``s3://`` URL raises
            BadInputError saying so.
        database_path: the live database (default: ``database`` of the
            settings file, else ``.genesis/data/genesis.db``).
        config: a ``genesis-recovery.toml`` settings file instead of (or
            under) the paths (default: ``./genesis-recovery.toml`` when present).
    """

    def __init__(
        self,
        repository: Optional[PathLike] = None,
        database_path: Optional[PathLike] = None,
        config: Optional[PathLike] = None,
    ) -> None:
        # A URL is kept as given: pathlib would fold its `//`.
        self.repository: Optional[Union[Path, str]] = (
            repository if isinstance(repository, str) and "://" in repository
            else _engine.path_or_none(repository)
        )
        self.database_path: Optional[Path] = _engine.path_or_none(database_path)
        self.config: Optional[Path] = _engine.path_or_none(config)

    def global_flags(self, database_path: Optional[PathLike] = None) -> List[str]:
        """The CLI's global flags for this repository (and ``database_path``
        instead of the manager's own, when given)."""
        db = database_path if database_path is not None else self.database_path
        return _engine.global_flags(self.repository, db, self.config)

    async def list_backups(
        self, days: Optional[int] = None, include_events: bool = False
    ) -> List[BackupMetadata]:
        """The backups, newest first (``list-backups``): only those reaching
        the last ``days`` days when given; event archive objects too with
        ``include_events``."""
        argv = self.global_flags() + ["list-backups"]
        if days is not None:
            argv += ["--days", str(days)]
        if include_events:
            argv.append("--all")
        rows, _ = await _engine.run_async(argv)
        return [BackupMetadata.from_row(r) for r in rows or []]

    async def get_backup_for_timestamp(
        self, timestamp: Union[datetime, str]
    ) -> Tuple[BackupMetadata, List[BackupMetadata]]:
        """The full backup and the incremental backups (oldest first) a
        restore to ``timestamp`` reads, as the restore planner chooses them.
        A naive datetime is UTC. Raises BadInputError for an instant before
        the first backup (naming the range the repository holds)."""
        at = _engine.engine_timestamp(timestamp)
        repo = None if self.repository is None else str(self.repository)
        config = None if self.config is None else str(self.config)
        text = await asyncio.to_thread(_native.backups_for_timestamp, at, repo, config)
        planned = json.loads(text)
        full = BackupMetadata.from_row(planned["full_backup"])
        return full, [BackupMetadata.from_row(r) for r in planned["incremental_backups"]]

    async def verify_backup_integrity(self, metadata: Union[BackupMetadata, str]) -> bool:
        """Re-reads the chain that restores this backup (``verify-backups
        --backup-id``): every object's size and BLAKE3, txid contiguity, the
        chained checksums. True when nothing is wrong."""
        backup_id = metadata if isinstance(metadata, str) else metadata.backup_id
        report, _ = await _engine.run_async(
            self.global_flags() + ["verify-backups", "--backup-id", backup_id]
        )
        return bool(report and report.get("ok"))
