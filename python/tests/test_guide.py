"""Every Python snippet of the recovery guide, run against a database made by
`simulate` and captured by `backup replicate`, with only paths and times
substituted; each snippet's printed lines are checked."""

import json
import re
import sqlite3
import sys
import types
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Dict, List

import pytest

import guide
from conftest import Captured


def literal(dt: datetime) -> str:
    return f"datetime({dt.year}, {dt.month}, {dt.day}, {dt.hour}, {dt.minute}, {dt.second}, {dt.microsecond})"


def open_orders(db: str) -> List[Dict[str, Any]]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    rows = conn.execute(
        "SELECT * FROM orders WHERE status IN ('new', 'partially_filled') ORDER BY order_id"
    ).fetchall()
    conn.close()
    return [dict(r) for r in rows]


def first_open_order_time(db: str) -> datetime:
    """When the oldest order still open at the end of the capture was created."""
    created = [o["created_at"] for o in open_orders(db)]
    assert created, "the simulated trading left no open order"
    return datetime.fromisoformat(min(created))


def ccxt(order: Dict[str, Any]) -> Dict[str, Any]:
    """An order as CCXT's fetch_open_orders returns it."""
    return {
        "id": order["order_id"],
        "clientOrderId": order["client_order_id"],
        "symbol": order["symbol"],
        "side": order["side"],
        "type": order["order_type"],
        "amount": order["quantity"],
        "filled": order["filled_quantity"] or 0.0,
        "price": order["price"],
        "status": "open",
    }


class FileGateway:
    """The trading system's exchange gateway (`genesis.exchange.Gateway`,
    not part of this package): here it answers with the open orders the
    exchange holds, from a JSON file the test writes."""

    def __init__(self, orders_file: Path) -> None:
        self.orders_file = orders_file

    async def get_open_orders(self) -> List[Dict[str, Any]]:
        return json.loads(self.orders_file.read_text())


@pytest.fixture
def gateway_module(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("genesis.exchange")
    module.Gateway = FileGateway  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "genesis.exchange", module)


def test_guide_copy_is_the_shared_guide() -> None:
    if not guide.SHARED_GUIDE.exists():
        pytest.skip(f"{guide.SHARED_GUIDE} is not beside this clone")
    assert guide.GUIDE.read_text() == guide.SHARED_GUIDE.read_text()


def test_every_python_snippet_of_the_guide(captured: Captured, gateway_module: None) -> None:
    blocks = guide.snippets()
    headings = [h for h, _ in blocks]
    assert headings == [
        "Quick Recovery (Last Known Good State)",
        "Point-in-Time Recovery",
        "Position Recovery",
        "Order Reconciliation",
        "Pre-Recovery Validation",
        "Post-Recovery Validation",
        "Scenario 2: Accidental Data Deletion",
        "Scenario 3: Rollback After Bad Deployment",
    ], "the guide's Python snippets changed: this test runs each one"
    code = dict(blocks)
    ns: Dict[str, Any] = {"__name__": "recovery_guide"}
    db = str(captured.root / ".genesis/data/genesis.db")

    oldest_open_order = first_open_order_time(db)

    # Quick Recovery: "1 hour ago" becomes an instant 80% into the capture.
    ago = datetime.utcnow() - captured.between(0.8)
    lines = guide.run(
        guide.substitute(
            code["Quick Recovery (Last Known Good State)"],
            {
                "BackupManager(...)": 'BackupManager(repository=Path(".genesis/backups"), '
                'database_path=Path(".genesis/data/genesis.db"))',
                "timedelta(hours=1)": f"timedelta(seconds={ago.total_seconds()!r})",
            },
        ),
        ns,
    )
    assert len(lines) == 1 and re.fullmatch(r"Recovery completed in \d+\.\d+(e-\d+)? seconds", lines[0]), lines
    assert ns["result"]["success"] and ns["result"]["applied"] and not ns["result"]["dry_run"]
    assert Path(ns["result"]["recovered_db_path"]).resolve() == Path(db).resolve()

    # Point-in-Time Recovery, to an instant 60% into the capture, or later
    # when no order stays open from there on (the reconciliation below needs one).
    target = max(captured.between(0.6), oldest_open_order + timedelta(milliseconds=1))
    assert target < captured.last_point.replace(tzinfo=None)
    lines = guide.run(
        guide.substitute(
            code["Point-in-Time Recovery"],
            {"datetime(2025, 1, 15, 14, 30, 0)": literal(target)},
        ),
        ns,
    )
    backups = ns["backups"]
    listed = [f"{b.timestamp}: {b.backup_type} - {b.backup_id}" for b in backups[:5]]
    assert len(listed) == 5 and lines[:5] == listed, lines
    assert all(re.fullmatch(r"\S+ \S+: (full|incremental) - (full|incr)_\S+", line) for line in listed)
    full, incrementals = ns["full_backup"], ns["incremental_backups"]
    assert full.backup_type == "full" and full.timestamp.replace(tzinfo=None) <= target
    assert incrementals and all(i.backup_type == "incremental" for i in incrementals)
    assert incrementals[-1].timestamp.replace(tzinfo=None) <= target
    assert lines[5] == f"Will use full backup from: {full.timestamp}"
    assert lines[6] == f"Will apply {len(incrementals)} incremental backups"
    staged = re.fullmatch(r"Dry run successful\. Database would be at: (\S+)", lines[7])
    assert staged and len(lines) == 8, lines
    assert ".genesis/recovery" in staged.group(1)
    assert ns["result"]["applied"] and ns["result"]["incremental_count"] == len(incrementals)
    restored_txid = ns["result"]["restored_txid"]
    assert restored_txid == incrementals[-1].txid_max

    # Position Recovery, on the database just restored.
    lines = guide.run(code["Position Recovery"], ns)
    conn = sqlite3.connect(db)
    in_db = dict(conn.execute("SELECT position_id, symbol FROM positions").fetchall())
    open_in_db = conn.execute("SELECT COUNT(*) FROM positions WHERE status = 'open'").fetchone()[0]
    conn.close()
    assert lines[0] == f"Total positions: {len(in_db)}"
    assert lines[1] == f"Open positions: {open_in_db}"
    # `positions` holds the open ones.
    assert len(lines) == 2 + open_in_db and open_in_db > 0
    for line in lines[2:]:
        m = re.fullmatch(r"(\S+): (\S+) (long|short) @ (\S+)", line)
        assert m and in_db[m.group(1)] == m.group(2), line

    # Order Reconciliation: the exchange lacks one of our open orders and
    # holds one we do not know.
    orders = open_orders(db)
    assert orders, "the simulated trading left no open order"
    dropped = orders[0]
    foreign = dict(ccxt(dropped), id="exchange-only-1", clientOrderId="manual-order-1")
    (captured.root / "exchange-open-orders.json").write_text(
        json.dumps([ccxt(o) for o in orders[1:]] + [foreign])
    )
    lines = guide.run(
        guide.substitute(
            code["Order Reconciliation"],
            {"Gateway(...)": 'Gateway(orders_file=Path("exchange-open-orders.json"))'},
        ),
        ns,
    )
    assert lines == [
        "Discrepancies found:",
        "Missing in DB: 1",
        "Missing on exchange: 1",
        f"Cancel local order: {dropped['client_order_id']}",
    ]

    # Pre-Recovery Validation: the latest backup is intact: nothing printed.
    assert guide.run(code["Pre-Recovery Validation"], ns) == []
    assert ns["is_valid"] is True

    # Post-Recovery Validation.
    assert guide.run(code["Post-Recovery Validation"], ns) == ["Recovery validation passed"]

    # Scenario 2, to an instant 30% into the capture.
    target = captured.between(0.3)
    lines = guide.run(
        guide.substitute(
            code["Scenario 2: Accidental Data Deletion"],
            {"datetime(2025, 1, 15, 10, 0, 0)": literal(target)},
        ),
        ns,
    )
    dry_run_db = sqlite3.connect(db)
    count_after = dry_run_db.execute("SELECT COUNT(*) FROM positions").fetchone()[0]
    dry_run_db.close()
    assert lines == [f"Recovered positions: {count_after}"], lines
    assert ns["result"]["applied"] and ns["result"]["restored_txid"] < restored_txid

    # Scenario 3: the deployment 5 minutes after an instant 50% into the
    # capture; the application's reconcile_with_exchange asks the gateway.
    reconciled: List[Dict[str, Any]] = []

    async def reconcile_with_exchange() -> None:
        exchange = await FileGateway(captured.root / "exchange-open-orders.json").get_open_orders()
        reconciled.append(await ns["recovery_engine"].verify_order_reconciliation(exchange))

    ns["reconcile_with_exchange"] = reconcile_with_exchange
    deployment = captured.between(0.5) + timedelta(minutes=5)
    assert guide.run(
        guide.substitute(
            code["Scenario 3: Rollback After Bad Deployment"],
            {"datetime(2025, 1, 15, 9, 0, 0)": literal(deployment)},
        ),
        ns,
    ) == []
    assert ns["result"]["success"] and ns["result"]["applied"]
    assert len(reconciled) == 1 and "is_reconciled" in reconciled[0]


def test_pre_recovery_validation_warns_about_a_damaged_backup(captured: Captured) -> None:
    ns: Dict[str, Any] = {"__name__": "recovery_guide"}
    guide.run(
        "from genesis.backup import BackupManager\n"
        "backup_manager = BackupManager()\n"
        "backups = await backup_manager.list_backups()\n",
        ns,
    )
    latest = ns["backups"][0]
    obj = next(p for p in (captured.root / ".genesis/backups").rglob("*") if p.is_file() and latest.backup_id in p.name and not p.name.endswith(".json"))
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0xFF
    obj.write_bytes(bytes(data))
    lines = guide.run(dict(guide.snippets())["Pre-Recovery Validation"], ns)
    assert lines == [f"WARNING: Backup {latest.backup_id} failed integrity check"]
