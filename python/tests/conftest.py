"""Fixtures: a trading database made by `simulate` while `backup replicate`
captures it (both run through `python -m genesis.recovery`, the engine's own
command line), copied afresh for each test that changes it."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import List

import pytest

from genesis._engine import parse_timestamp

REPO_ROOT = Path(__file__).resolve().parents[2]
DB = Path(".genesis/data/genesis.db")
BACKUPS = Path(".genesis/backups")


def cli(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m genesis.recovery ARGS` in `cwd`."""
    done = subprocess.run(
        [sys.executable, "-m", "genesis.recovery", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"{args} exited {done.returncode}: {done.stderr}")
    return done


@dataclass
class Captured:
    """A folder with the live database and its repository."""

    root: Path
    first_point: datetime
    last_point: datetime

    def between(self, fraction: float) -> datetime:
        """A naive UTC instant `fraction` of the way through the capture."""
        at = self.first_point + (self.last_point - self.first_point) * fraction
        return at.replace(tzinfo=None)


def _capture(root: Path) -> Captured:
    root.mkdir(parents=True, exist_ok=True)
    # Commit counts, not durations: the state reached (seed 3 leaves orders
    # open at the end) does not depend on the machine's speed.
    cli("--quiet", "simulate", "--rate", "200", "--max-commits", "200", "--duration", "10s", cwd=root)
    replicate = subprocess.Popen(
        [sys.executable, "-m", "genesis.recovery", "--quiet", "backup", "replicate",
         "--interval", "200ms", "--for", "60s"],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        cli("--quiet", "simulate", "--rate", "200", "--max-commits", "600", "--duration", "10s",
            "--seed", "3", cwd=root)
    finally:
        # SIGTERM: the capturer ships what is left and exits 0.
        time.sleep(0.5)
        replicate.send_signal(signal.SIGTERM)
        _, err = replicate.communicate(timeout=60)
    assert replicate.returncode == 0, err
    rows: List[dict] = json.loads(cli("--json", "list-backups", cwd=root).stdout)
    times = sorted(parse_timestamp(r["timestamp"]) for r in rows)
    assert any(r["backup_type"] == "incremental" for r in rows), rows
    return Captured(root=root, first_point=times[0], last_point=times[-1])


@pytest.fixture(scope="session")
def captured_once(tmp_path_factory: pytest.TempPathFactory) -> Captured:
    return _capture(tmp_path_factory.mktemp("captured") / "app")


@pytest.fixture
def captured(captured_once: Captured, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Captured:
    """A fresh copy of the captured folder, made the working directory (the
    guide's relative paths `.genesis/...` then name it)."""
    root = tmp_path / "app"
    shutil.copytree(captured_once.root, root)
    monkeypatch.chdir(root)
    return Captured(root=root, first_point=captured_once.first_point, last_point=captured_once.last_point)


def cli_binary() -> Path:
    """The `genesis-recovery` binary cargo built (GENESIS_RECOVERY_BIN, else
    target/debug; a relative path is from the repository's root)."""
    path = REPO_ROOT / os.environ.get("GENESIS_RECOVERY_BIN", "target/debug/genesis-recovery")
    if not path.exists():
        pytest.fail(f"{path} is missing: run `cargo build` first (scripts/test.sh does)")
    return path
