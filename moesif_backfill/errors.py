"""Exceptions raised by moesif-backfill, and the exit code each one maps to.

    BackfillError                     exit 1 unless stated
    ├── ConfigError                   exit 2: a mistake in the mapping, the CLI or the sources;
    │   │                             raised before anything is sent
    │   ├── MappingError              the mapping file is invalid or does not fit the data
    │   │   └── UnsupportedKeyTypeError   `sql`: a key column type SQL cannot canon() exactly
    │   ├── PreflightError            a preflight check failed (e.g. rows older than 30 days)
    │   ├── CheckpointMismatchError   inputs or mapping changed since the checkpoint was written
    │   └── JobLockedError            another run of the same job holds the lock
    ├── SourceError                   an input file cannot be listed or read
    │   ├── SourceChangedError        an S3 object was replaced while the run read it
    │   ├── MissingDayError           a day's inputs (nightly/range) are not there
    │   └── EmptyDayError             a day's inputs hold no row of that day
    ├── CheckpointError               the checkpoint is unreadable or from a newer version
    ├── DeliveryError                 Firehose did not take the records
    │   ├── TransientDeliveryError    retry budget exhausted on throttling / 5xx / dropped
    │   │   │                         connections: rerunning later resumes safely
    │   │   └── DeliveryStalledError  nothing acknowledged for RunSettings.stall_timeout_s
    │   │                             (endpoint lost): not retried by the run
    │   └── PermanentDeliveryError    unknown stream, access denied, invalid request:
    │       │                         fix the cause, then rerun
    │       └── DestinationRefusedError   Moesif's Collector API refused a batch (400, 401,
    │                                 402, 406): exit 2 while nothing was committed in the
    │                                 run, else 1 (`exit_code_for`)
    ├── RunInterruptedError           Ctrl-C / SIGTERM: stopped early, the checkpoint holds what
    │                                 was acknowledged; exit 130 (SIGINT) / 143 (SIGTERM)
    └── DaysFailedError               days of a nightly sync or date range not delivered: exit 2
                                      when every failed day failed on configuration, else 1

Every message says what went wrong and what to do; none may contain a secret.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class BackfillError(Exception):
    """Root of every error this tool raises on purpose."""

    exit_code = 1


class ConfigError(BackfillError):
    """A configuration mistake detected before anything was sent."""

    exit_code = 2

    @classmethod
    def invalid(cls, what: str, exc: ValidationError) -> ConfigError:
        """The error "invalid <what>:" with a line per field pydantic refused: where, and why."""
        msgs = [
            f"{'.'.join(str(x) for x in e['loc']) or 'arguments'}: "
            f"{e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        ]
        return cls(f"invalid {what}:\n  " + "\n  ".join(msgs))


class MappingError(ConfigError):
    """The mapping file is invalid, or names columns the data does not have."""


class UnsupportedKeyTypeError(MappingError):
    """`moesif-backfill sql`: a transaction_id key column has a type whose canon() text (ID
    contract v1) SQL cannot write exactly (floats, decimals with a scale, nested values...)."""


class PreflightError(ConfigError):
    """A check over the input data failed before sending (e.g. the 30-day window)."""


class CheckpointMismatchError(ConfigError):
    """The checkpoint was written for other inputs or another mapping."""


class JobLockedError(ConfigError):
    """Another live run of the same job holds its lock."""


class SourceError(BackfillError):
    """An input could not be found, listed or read."""


class SourceChangedError(SourceError):
    """An S3 object no longer has the ETag it was listed with when the run was planned: it was
    overwritten or replaced during the run. Nothing of the new bytes was read or sent; the
    checkpoint holds what was delivered from the old ones. Not retried: a rerun plans again."""


class MissingDayError(SourceError):
    """A day's inputs are not there (the export has not landed yet?)."""


class EmptyDayError(SourceError):
    """A day's inputs hold no row for that day."""


class CheckpointError(BackfillError):
    """The checkpoint could not be read or written safely."""


class LedgerError(BackfillError):
    """The ID ledger (--ledger) could not be written: the chunk is not committed."""


class DeliveryError(BackfillError):
    """Records could not be delivered to Firehose."""


class TransientDeliveryError(DeliveryError):
    """Delivery kept failing with retryable errors until the retry budget ran out."""


class DeliveryStalledError(TransientDeliveryError):
    """The stream acknowledged nothing for the sender's stall timeout (the endpoint refuses or
    drops connections, or never answers): the run ends instead of retrying on (a rerun
    resumes)."""


class PermanentDeliveryError(DeliveryError):
    """Delivery failed with an error that retrying cannot fix."""


class DestinationRefusedError(PermanentDeliveryError):
    """Moesif's Collector API (--sink moesif) refused a batch for good (400, 401, 402, 406, or
    an answer that is neither success nor retryable): the run stops at once. Exit 2 when the
    run had committed nothing yet (a configuration problem: the application id, the account),
    1 after (`exit_code_for`)."""

    exit_code = 2


def exit_code_for(exc: BaseException, *, committed: int) -> int | None:
    """The exit code of `exc` when it depends on the run's progress (None: its own):
    `DestinationRefusedError` is 2 while nothing was committed in the run, 1 after."""
    if isinstance(exc, DestinationRefusedError):
        return 1 if committed else 2
    return None


class DaysFailedError(BackfillError):
    """Some days of a nightly sync or date range could not be delivered (or were left over).

    `exit_code` is 2 when every failed day failed on its configuration (nothing was sent for
    them), 1 otherwise."""

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class RunInterruptedError(BackfillError):
    """The run was stopped (Ctrl-C, SIGTERM) before it finished: the checkpoint holds every
    acknowledged chunk; a rerun resumes. The CLI exits 128 + the signal's number."""

    exit_code = 130
