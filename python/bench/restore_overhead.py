"""What the Python binding adds to a restore: the same dry-run restore of the
same repository (a snapshot and the incremental backups of --commits / 2
transactions after it, applied page by page and validated), timed through the CLI binary and through
`RecoveryEngine.recover_to_timestamp`, alternating, medians compared.

    python python/bench/restore_overhead.py --cli target/release/genesis-recovery \\
        [--commits 60000] [--rounds 7] [--dir DIR]

Run it with a Python that has the release wheel installed (see
python/bench/README.md). The target of the issue: the binding adds at most
5 % to the CLI's time.
"""

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from genesis.backup import BackupManager
from genesis.recovery import RecoveryEngine


def sh(cli: str, *args: str, cwd: Path) -> str:
    return subprocess.run([cli, *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def make_repository(cli: str, root: Path, commits: int) -> str:
    """A database of `commits` simulated commits, a full backup after the
    first half and the second half captured as incremental backups by
    `backup replicate`; returns the newest restore point (a --dir that
    holds a repository already is reused)."""
    if (root / ".genesis/backups").exists():
        return json.loads(sh(cli, "--json", "list-backups", cwd=root))[0]["timestamp"]
    half = str(commits // 2)
    sh(cli, "--quiet", "simulate", "--rate", "0", "--max-commits", half, "--duration", "1h", cwd=root)
    sh(cli, "--quiet", "backup", "full", cwd=root)
    replicate = subprocess.Popen([cli, "--quiet", "backup", "replicate", "--interval", "1s", "--for", "1h"],
                                 cwd=root, stdout=subprocess.DEVNULL)
    time.sleep(1.5)
    sh(cli, "--quiet", "simulate", "--rate", "0", "--max-commits", half, "--duration", "1h",
       "--seed", "2", cwd=root)
    time.sleep(1.5)
    replicate.terminate()
    replicate.wait(timeout=300)
    rows = json.loads(sh(cli, "--json", "list-backups", cwd=root))
    return rows[0]["timestamp"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cli", required=True, help="the genesis-recovery binary (release)")
    ap.add_argument("--commits", type=int, default=60000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--dir", type=Path, help="work here and keep it (default: a temporary folder)")
    a = ap.parse_args()
    cli = str(Path(a.cli).resolve())
    root = a.dir or Path(tempfile.mkdtemp(prefix="genesis-bench-py-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        target = make_repository(cli, root, a.commits)
        staging = root / "staging"
        engine = RecoveryEngine(backup_manager=BackupManager(repository=root / ".genesis/backups",
                                                             database_path=root / ".genesis/data/genesis.db"),
                                recovery_staging_dir=staging)
        args = ["--quiet", "--json", "restore", "--timestamp", target, "--dry-run", "--staging-dir", str(staging)]
        cli_times, py_times, replayed = [], [], set()
        inside = {"cli": [], "py": []}
        for i in range(a.rounds + 1):
            for which in (("cli", "py") if i % 2 == 0 else ("py", "cli")):
                shutil.rmtree(staging, ignore_errors=True)
                start = time.perf_counter()
                if which == "cli":
                    doc = json.loads(sh(cli, *args, cwd=root))
                else:
                    doc = asyncio.run(engine.recover_to_timestamp(target, dry_run=True))
                took = time.perf_counter() - start
                assert doc["success"], doc
                replayed.add((doc["restored_txid"], doc["events_replayed"], doc["checksum"]))
                if i > 0:  # round 0 warms the page cache
                    (cli_times if which == "cli" else py_times).append(took)
                    inside[which].append(doc["recovery_time_seconds"])
        assert len(replayed) == 1, replayed
        txid, events, _ = replayed.pop()
        c, p = statistics.median(cli_times), statistics.median(py_times)
        print(f"restore --dry-run to txid {txid} ({events} events replayed), {a.rounds} rounds each")
        print(f"  CLI binary (process start included): median {c:.3f} s  (min {min(cli_times):.3f})")
        print(f"  Python RecoveryEngine:               median {p:.3f} s  (min {min(py_times):.3f})")
        print(f"  the engine's own recovery_time_seconds: CLI median {statistics.median(inside['cli']):.3f} s, "
              f"Python median {statistics.median(inside['py']):.3f} s")
        print(f"  binding overhead: {100 * (p - c) / c:+.1f} % (target <= +5 %)")
        return 0 if p <= c * 1.05 else 1
    finally:
        if a.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
