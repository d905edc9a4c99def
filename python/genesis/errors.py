"""The exceptions of the genesis API, one per exit code of the CLI.

Every error the engine reports arrives as a :class:`RecoveryError` (or a
subclass) whose message is the CLI's ``error:`` line, whose ``kind`` is the
``error.kind`` of the CLI's ``--json`` failure document and whose
``exit_code`` is the code the CLI exits with.
"""

from typing import Any, Dict, Optional


class RecoveryError(Exception):
    """An operation failed (CLI exit code 1, or the base of the others).

    Attributes:
        message: what went wrong and what to do, as the CLI says it.
        kind: the error's kind (``io``, ``corrupt``, ``locked``, ``usage``...).
        exit_code: the exit code the CLI ends with for this error.
        result: the command's JSON result when it produced one (a restore
            whose validation failed still reports what it built), else None.
    """

    def __init__(
        self,
        message: str,
        *,
        kind: str = "failed",
        exit_code: int = 1,
        result: Optional[Dict[str, Any]] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.exit_code = exit_code
        self.result = result


class BadInputError(RecoveryError, ValueError):
    """Bad input: a usage or configuration error, a target outside what the
    repository holds, an unreadable exchange file (CLI exit code 2)."""


class ValidationFailedError(RecoveryError):
    """The recovered database failed validation (CLI exit code 3); nothing
    was applied. ``result`` holds the restore's result with its
    ``validation`` errors."""


class ReconciliationError(RecoveryError):
    """Reconciling with the exchange found discrepancies (CLI exit code 4).
    ``result`` holds the restore's result with its ``reconciliation``."""


_BY_EXIT_CODE = {
    2: BadInputError,
    3: ValidationFailedError,
    4: ReconciliationError,
}


def from_engine(
    kind: str, exit_code: int, message: str, result: Optional[Dict[str, Any]] = None
) -> RecoveryError:
    """The exception for an engine error of ``kind`` ending with ``exit_code``."""
    cls = _BY_EXIT_CODE.get(exit_code, RecoveryError)
    return cls(message, kind=kind, exit_code=exit_code, result=result)
