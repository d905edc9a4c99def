"""``python -m genesis.recovery COMMAND ...``: the ``genesis-recovery``
command line (its own flag parser, dispatch, output and exit codes, run
in-process by the engine)."""

import sys
from typing import List, Optional

from genesis import _native


def main(argv: Optional[List[str]] = None) -> int:
    """Runs the command line ``argv`` (default: ``sys.argv[1:]``) and returns
    its exit code."""
    args = sys.argv[1:] if argv is None else argv
    sys.stdout.flush()
    return _native.cli_main(["genesis-recovery", *args])


if __name__ == "__main__":
    sys.exit(main())
