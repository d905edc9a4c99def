"""The API beyond the guide's snippets: the event loop during a restore,
typed exceptions with the CLI's messages, naive and aware datetimes,
validate_state's connection handling, and `python -m genesis.recovery`'s
exit codes against the binary's."""

import asyncio
import json
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import List

import pytest

from conftest import Captured, cli, cli_binary
from genesis import _engine
from genesis.backup import BackupManager
from genesis.errors import BadInputError, ReconciliationError, RecoveryError, ValidationFailedError
from genesis.recovery import RecoveryEngine, StateReconstructor

DB = ".genesis/data/genesis.db"


def engine() -> RecoveryEngine:
    return RecoveryEngine(backup_manager=BackupManager(), recovery_staging_dir=Path(".genesis/recovery"))


def test_the_event_loop_keeps_running_during_a_dry_run(captured: Captured) -> None:
    async def main() -> List[float]:
        ticks: List[float] = []

        async def ticker() -> None:
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.001)

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0.01)
        start = time.monotonic()
        result = await engine().recover_to_timestamp(captured.between(0.9), dry_run=True)
        end = time.monotonic()
        task.cancel()
        assert result["success"] and result["dry_run"] and not result["applied"]
        return [t for t in ticks if start < t < end]

    during = asyncio.run(main())
    # Held on the loop's thread (or holding the GIL), the restore would let
    # no tick through until it returned.
    assert len(during) >= 3, f"the ticker advanced {len(during)} times during the restore"


def test_a_target_before_the_first_backup_is_bad_input_with_the_cli_message(captured: Captured) -> None:
    early = captured.first_point - timedelta(hours=1)
    with pytest.raises(BadInputError) as raised:
        asyncio.run(engine().recover_to_timestamp(early, dry_run=True))
    assert raised.value.exit_code == 2 and raised.value.kind == "usage"
    assert "is before the first backup: restore points exist from" in str(raised.value)
    done = cli("restore", "--timestamp", _engine.engine_timestamp(early), "--dry-run",
               "--staging-dir", ".genesis/recovery", cwd=captured.root, check=False)
    assert done.returncode == 2
    assert f"error: {raised.value.message}" in done.stderr.splitlines()


def test_a_database_failing_validation_raises_and_applies_nothing(captured: Captured) -> None:
    conn = sqlite3.connect(DB)
    with conn:
        conn.execute("UPDATE balances SET total_balance = total_balance + 1000")
    conn.close()
    cli("--quiet", "backup", "full", cwd=captured.root)
    before = Path(DB).read_bytes()
    with pytest.raises(ValidationFailedError) as raised:
        asyncio.run(engine().recover_to_timestamp(datetime.now(timezone.utc), validate=True))
    err = raised.value
    assert err.exit_code == 3 and isinstance(err, RecoveryError)
    assert str(err).startswith("validation: FAILED (") and "balance_inconsistent" in str(err)
    assert err.result is not None and err.result["validation"]["is_consistent"] is False
    assert err.result["applied"] is False and Path(DB).read_bytes() == before
    # Without validation it is applied.
    result = asyncio.run(engine().recover_to_timestamp(datetime.now(timezone.utc), validate=False))
    assert result["applied"] and result["validation"] is None and result["exit_code"] == 0


def test_discrepancies_with_the_exchange_raise_reconciliation_error(captured: Captured) -> None:
    orders = Path("exchange.json")
    orders.write_text(json.dumps([{"id": "x-1", "clientOrderId": "not-ours", "symbol": "BTC/USDT",
                                   "side": "buy", "amount": 1.0, "price": 1.0, "status": "open"}]))
    with pytest.raises(ReconciliationError) as raised:
        asyncio.run(engine().recover_to_timestamp(captured.between(0.9), dry_run=True,
                                                  exchange_orders=orders))
    assert raised.value.exit_code == 4
    assert raised.value.result["reconciliation"]["missing_in_db"][0]["client_order_id"] == "not-ours"


def test_unreadable_exchange_orders_are_bad_input(captured: Captured) -> None:
    with pytest.raises(BadInputError) as raised:
        asyncio.run(engine().verify_order_reconciliation([{"symbol": "BTC/USDT"}]))
    assert raised.value.exit_code == 2
    with pytest.raises(BadInputError):
        asyncio.run(engine().verify_order_reconciliation({"not": "a list"}))  # type: ignore[arg-type]


def test_naive_datetimes_are_utc_and_aware_ones_are_converted(captured: Captured) -> None:
    naive = captured.between(0.5)
    aware = naive.replace(tzinfo=timezone.utc).astimezone(timezone(timedelta(hours=-5)))
    assert aware.hour != naive.hour
    assert _engine.engine_timestamp(naive) == _engine.engine_timestamp(aware)
    assert _engine.engine_timestamp(datetime(2025, 1, 15, 12, 0, 0)) == "2025-01-15T12:00:00.000000Z"
    results = [asyncio.run(engine().recover_to_timestamp(t, dry_run=True)) for t in (naive, aware)]
    assert results[0]["restored_txid"] == results[1]["restored_txid"]
    assert results[0]["target_timestamp"] == results[1]["target_timestamp"]
    # Read as local time, the naive instant would be hours away: outside the capture.
    full, _ = asyncio.run(BackupManager().get_backup_for_timestamp(naive))
    assert full.timestamp <= naive.replace(tzinfo=timezone.utc)
    with pytest.raises(BadInputError):
        asyncio.run(engine().recover_to_timestamp(12345, dry_run=True))  # type: ignore[arg-type]


def test_validate_state_reads_the_connection_file_and_refuses_uncommitted_changes(captured: Captured) -> None:
    reconstructor = StateReconstructor()
    conn = sqlite3.connect(DB)
    assert reconstructor.validate_state(conn)["is_consistent"] is True
    conn.execute("UPDATE balances SET total_balance = total_balance + 1000")
    with pytest.raises(BadInputError, match="uncommitted changes"):
        reconstructor.validate_state(conn)
    conn.commit()
    report = reconstructor.validate_state(conn)
    assert report["is_consistent"] is False
    assert any(e["code"] == "balance_inconsistent" for e in report["errors"])
    conn.close()
    with pytest.raises(BadInputError, match="in memory"):
        reconstructor.validate_state(sqlite3.connect(":memory:"))
    with pytest.raises(BadInputError, match="open connection"):
        reconstructor.validate_state(conn)


def _both(args: List[str], cwd: Path) -> List[subprocess.CompletedProcess]:
    return [
        subprocess.run([str(cli_binary()), *args], cwd=cwd, capture_output=True, text=True, timeout=120),
        subprocess.run([sys.executable, "-m", "genesis.recovery", *args], cwd=cwd,
                       capture_output=True, text=True, timeout=120),
    ]


def test_python_m_genesis_recovery_is_the_cli(captured: Captured) -> None:
    Path("exchange.json").write_text("[]")
    Path("bad.json").write_text("{")
    cases = [
        (["list-backups", "--days", "7"], 0),
        (["validate"], 0),
        (["recover-positions"], 0),
        (["reconcile-orders", "--exchange-orders", "exchange.json"], 4),
        (["reconcile-orders", "--exchange-orders", "bad.json"], 2),
        (["restore", "--timestamp", "2001-01-01T00:00:00", "--dry-run"], 2),
        (["restore", "--backup-id", "no_such_backup", "--dry-run"], 2),
        (["list-backups", "--days", "-3"], 2),
        (["no-such-command"], 2),
        (["--help"], 0),
        (["--json", "verify-backups"], 0),
    ]
    for args, code in cases:
        binary, module = _both(args, captured.root)
        assert (binary.returncode, module.returncode) == (code, code), (args, binary.stderr, module.stderr)
        assert module.stdout == binary.stdout, args
        assert module.stderr == binary.stderr, args
    # A real restore: the same exit code and the same result document.
    target = _engine.engine_timestamp(captured.between(0.5))
    binary, module = _both(["--json", "restore", "--timestamp", target, "--dry-run"], captured.root)
    assert binary.returncode == module.returncode == 0, module.stderr
    keys = ("success", "restored_txid", "restore_point_timestamp", "events_replayed", "checksum")
    docs = [json.loads(d.stdout) for d in (binary, module)]
    assert [{k: d[k] for k in keys} for d in docs][0] == {k: docs[1][k] for k in keys}


def test_a_repository_url_is_never_taken_for_a_folder(
    captured: Captured, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A scheme the engine does not know is bad input, named, with nothing created.
    manager = BackupManager(repository="gs://bucket/backups")
    with pytest.raises(BadInputError, match=r'has the scheme "gs"'):
        asyncio.run(manager.list_backups())
    with pytest.raises(BadInputError, match=r'has the scheme "gs"'):
        asyncio.run(manager.get_backup_for_timestamp(captured.between(0.5)))
    done = cli("--repo", "gs://bucket/backups", "backup", "full", cwd=captured.root, check=False)
    assert done.returncode == 2 and not (captured.root / "gs:").exists()
    # An s3:// repository is an object store (issue 15): one that cannot be
    # reached is an error naming it, never a local folder `s3:`.
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_ALLOW_HTTP": "true",
    }.items():
        monkeypatch.setenv(key, value)
    manager = BackupManager(repository="s3://bucket/backups")
    with pytest.raises(RecoveryError, match=r"s3://bucket/backups"):
        asyncio.run(manager.list_backups())
    assert not (captured.root / "s3:").exists() and not Path("s3:").exists()


