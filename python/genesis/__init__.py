"""genesis-recovery's Python API: point-in-time recovery of the trading
system's SQLite database, over the Rust engine.

``genesis.backup.BackupManager`` lists and checks backups;
``genesis.recovery.RecoveryEngine`` restores, rebuilds positions and
reconciles orders; ``genesis.recovery.StateReconstructor`` validates a
database; ``python -m genesis.recovery COMMAND`` is the ``genesis-recovery``
command line. Errors are the exceptions of ``genesis.errors``.
"""
