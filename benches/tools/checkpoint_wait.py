#!/usr/bin/env python3
"""What the capturer costs the application's own checkpoints (issue 11, item 7).

An application commits and runs PRAGMA wal_checkpoint(TRUNCATE) in a tight
loop, first alone, then while `genesis-recovery backup replicate` runs, and
reports commits per second and the checkpoint's wait (p50, p99, max).

usage: checkpoint_wait.py BINARY [SECONDS]
"""
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time


def app(db, seconds):
    conn = sqlite3.connect(db, isolation_level=None, timeout=30)
    waits, commits = [], 0
    end = time.time() + seconds
    while time.time() < end:
        conn.execute("INSERT INTO t(v) VALUES (randomblob(200))")
        commits += 1
        t0 = time.perf_counter()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        waits.append(time.perf_counter() - t0)
    conn.close()
    waits.sort()
    return {
        "commits_per_s": commits / seconds,
        "ckpt_p50_ms": 1000 * statistics.median(waits),
        "ckpt_p99_ms": 1000 * waits[int(len(waits) * 0.99) - 1],
        "ckpt_max_ms": 1000 * waits[-1],
    }


def main():
    binary = sys.argv[1]
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 6
    with tempfile.TemporaryDirectory() as d:
        db = os.path.join(d, "app.db")
        c = sqlite3.connect(db)
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
        c.commit()
        c.close()
        alone = app(db, seconds)
        rep = subprocess.Popen(
            [binary, "--db", db, "--repo", os.path.join(d, "repo"), "--quiet",
             "backup", "replicate", "--interval", "1s"],
            stderr=subprocess.DEVNULL)
        time.sleep(1.5)
        under = app(db, seconds)
        rep.terminate()
        rep.wait()
    for name, r in (("alone", alone), ("with replicate", under)):
        print(f"{name:>15}: {r['commits_per_s']:8.0f} commits/s, TRUNCATE checkpoint "
              f"p50 {r['ckpt_p50_ms']:.2f} ms, p99 {r['ckpt_p99_ms']:.2f} ms, max {r['ckpt_max_ms']:.1f} ms")


if __name__ == "__main__":
    main()
