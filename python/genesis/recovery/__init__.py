"""Recovery: restore the database to an instant, rebuild positions from the
events, reconcile orders with the exchange, validate a database.

Every call runs the Rust engine (the same code as the ``genesis-recovery``
command line); the coroutines await a worker thread and the engine releases
the GIL, so a trading process's event loop keeps running during a restore.
``python -m genesis.recovery COMMAND ...`` is the command line itself.
"""

import json
import os
import sqlite3
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

from genesis import _engine
from genesis._engine import PathLike
from genesis.backup import BackupManager
from genesis.errors import (
    BadInputError,
    ReconciliationError,
    RecoveryError,
    ValidationFailedError,
)

__all__ = [
    "BadInputError",
    "ReconciliationError",
    "RecoveryEngine",
    "RecoveryError",
    "StateReconstructor",
    "ValidationFailedError",
]


class RecoveryEngine:
    """Restores the database of ``backup_manager``'s repository.

    Args:
        backup_manager: the repository (and default database) to use.
        database_path: the live database a restore replaces (default: the
            manager's, else the CLI's default).
        recovery_staging_dir: where restores build the database (default:
            ``staging_dir`` of the settings file, else ``.genesis/recovery``).
    """

    def __init__(
        self,
        backup_manager: BackupManager,
        database_path: Optional[PathLike] = None,
        recovery_staging_dir: Optional[PathLike] = None,
    ) -> None:
        self.backup_manager = backup_manager
        self.database_path: Optional[Path] = _engine.path_or_none(
            database_path if database_path is not None else backup_manager.database_path
        )
        self.recovery_staging_dir: Optional[Path] = _engine.path_or_none(recovery_staging_dir)

    def _flags(self) -> List[str]:
        return self.backup_manager.global_flags(self.database_path)

    async def recover_to_timestamp(
        self,
        target_timestamp: Union[datetime, str],
        validate: bool = True,
        dry_run: bool = False,
        *,
        exchange_orders: Optional[PathLike] = None,
        output: Optional[PathLike] = None,
        strict: bool = False,
        integrity_check: bool = False,
    ) -> Dict[str, Any]:
        """Restores the database to ``target_timestamp`` (``restore
        --timestamp``): the last commit captured at or before it, then the
        archived events up to it. A naive datetime is UTC; an aware one is
        converted.

        ``dry_run`` builds and validates the database in the staging
        directory and applies nothing (``recovered_db_path`` is the staged
        file); otherwise the live database is replaced, the old one kept as
        ``<db>.pre-recovery-<time>``. ``validate=False`` skips validation.
        ``exchange_orders`` (a Binance or CCXT orders file) reconciles the
        result; ``output`` writes the database there and leaves the live one
        alone; ``strict`` fails instead of falling back over a gap.

        Returns the CLI's ``--json`` result (``success``,
        ``recovery_time_seconds``, ``recovered_db_path``, ``restored_txid``,
        ``restore_point_timestamp``, ``validation``, ``data_loss``,
        ``fallback``, ...) plus ``exit_code``, the CLI's exit code (5: restored,
        but history before the target is missing).

        Raises:
            BadInputError: a target outside the repository, bad paths.
            ValidationFailedError: the built database failed validation
                (nothing applied; ``.result`` has the errors).
            ReconciliationError: the exchange's orders disagree (``.result``).
            RecoveryError: any other failure, with the CLI's message.
        """
        argv = self._flags() + ["restore", "--timestamp", _engine.engine_timestamp(target_timestamp)]
        if self.recovery_staging_dir is not None:
            argv += ["--staging-dir", os.fspath(self.recovery_staging_dir)]
        if dry_run:
            argv.append("--dry-run")
        if not validate:
            argv.append("--no-validate")
        if integrity_check:
            argv.append("--integrity-check")
        if strict:
            argv.append("--strict")
        if output is not None:
            argv += ["--output", os.fspath(output)]
        if exchange_orders is not None:
            argv += ["--reconcile", "--exchange-orders", os.fspath(exchange_orders)]
        result, code = await _engine.run_async(argv)
        return _restore_outcome(result, code)

    async def recover_positions(self, until: Optional[Union[datetime, str]] = None) -> Dict[str, Any]:
        """Positions rebuilt from the database's events alone
        (``recover-positions``): ``total_positions``, ``open_positions``,
        ``positions`` (id -> symbol, side, entry_price, quantity, status,
        ...) and ``divergences`` from the positions table. ``until`` stops the
        rebuild at that instant."""
        argv = self._flags() + ["recover-positions"]
        if until is not None:
            argv += ["--timestamp", _engine.engine_timestamp(until)]
        result, _ = await _engine.run_async(argv)
        return result

    async def verify_order_reconciliation(
        self, exchange_orders: List[Mapping[str, Any]], tolerance: float = 1e-9
    ) -> Dict[str, Any]:
        """Compares the database's open orders with ``exchange_orders``, the
        list of order dicts an exchange gateway returns (Binance
        ``openOrders`` or CCXT ``fetch_open_orders`` shapes)
        (``reconcile-orders``). Returns ``is_reconciled``, ``missing_in_db``,
        ``missing_on_exchange``, ``status_mismatches``,
        ``quantity_mismatches``, ``accuracy`` and ``actions``; discrepancies
        are a result, not an error. Raises BadInputError for orders the
        engine cannot read (naming the order and field)."""
        if not isinstance(exchange_orders, (list, tuple)):
            raise BadInputError(
                "exchange_orders must be the list of order dicts the exchange returned, "
                f"not {type(exchange_orders).__name__}",
                kind="usage",
                exit_code=2,
            )
        with tempfile.TemporaryDirectory(prefix="genesis-orders-") as tmp:
            path = Path(tmp) / "exchange-orders.json"
            path.write_text(json.dumps(list(exchange_orders), default=str))
            argv = self._flags() + [
                "reconcile-orders",
                "--exchange-orders",
                str(path),
                "--tolerance",
                repr(float(tolerance)),
            ]
            result, _ = await _engine.run_async(argv)
        return result


def _restore_outcome(result: Optional[Dict[str, Any]], code: int) -> Dict[str, Any]:
    """The restore's result, or the typed exception of its exit code."""
    result = dict(result or {})
    result["exit_code"] = code
    if code == 3:
        v = result.get("validation") or {}
        errors = v.get("errors") or []
        detail = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors[:5])
        raise ValidationFailedError(
            f"validation: FAILED ({len(errors)} errors, {len(v.get('warnings') or [])} warnings)"
            + (f": {detail}" if detail else "")
            + "; nothing was applied",
            kind="validation",
            exit_code=code,
            result=result,
        )
    if code == 4:
        raise ReconciliationError(
            "reconciliation: DISCREPANCIES between the restored open orders and the exchange's",
            kind="reconciliation",
            exit_code=code,
            result=result,
        )
    if code not in (0, 5):
        why = result.get("not_applied_reason") or "the restore did not succeed"
        raise RecoveryError(f"restore failed: {why}", kind="failed", exit_code=code, result=result)
    return result


class StateReconstructor:
    """Validates a database: SQLite's checks and the trading rules.

    Args:
        full: SQLite's full ``integrity_check`` and every checkpoint's hash
            (``validate --full``) instead of ``quick_check``.
    """

    def __init__(self, full: bool = False) -> None:
        self.full = full

    def validate_state(self, conn: sqlite3.Connection) -> Dict[str, Any]:
        """Validates the database file ``conn`` is open on (``validate``):
        returns ``is_consistent``, ``errors`` and ``warnings`` (each a dict
        with ``code`` and ``message``) and the checks run.

        The engine reads the file itself (its path from ``PRAGMA
        database_list``), so it sees what is committed: a connection inside
        a transaction that has written is refused (commit or roll back
        first), since its uncommitted changes would not be validated. An
        in-memory or temporary database is refused too. Releases the GIL
        while it works."""
        if not isinstance(conn, sqlite3.Connection):
            raise BadInputError(
                f"validate_state takes an open sqlite3.Connection, not {type(conn).__name__}",
                kind="usage",
                exit_code=2,
            )
        path = _main_file(conn)
        if conn.in_transaction:
            raise BadInputError(
                f"the connection to {path} has an open transaction, whose uncommitted changes "
                "validate_state would not see (it reads the committed database file): "
                "commit or roll back first",
                kind="usage",
                exit_code=2,
            )
        argv = ["--db", path, "validate"] + (["--full"] if self.full else [])
        result, _ = _engine.run(argv)
        return result


def _main_file(conn: sqlite3.Connection) -> str:
    try:
        rows = conn.execute("PRAGMA database_list").fetchall()
    except sqlite3.ProgrammingError as e:
        raise BadInputError(
            f"validate_state needs an open connection: {e}", kind="usage", exit_code=2
        ) from None
    path = next((row[2] for row in rows if row[1] == "main"), "")
    if not path:
        raise BadInputError(
            "validate_state needs a connection to a database file; this one is in memory or temporary",
            kind="usage",
            exit_code=2,
        )
    return path
