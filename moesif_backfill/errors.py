"""Exceptions raised by moesif-backfill, and the exit code each one maps to.

    BackfillError                     exit 1 unless stated
    ├── ConfigError                   exit 2: a mistake in the mapping, the CLI or the sources;
    │   │                             raised before anything is sent
    │   ├── MappingError              the mapping file is invalid or does not fit the data
    │   ├── PreflightError            a preflight check failed (e.g. rows older than 30 days)
    │   ├── CheckpointMismatchError   inputs or mapping changed since the checkpoint was written
    │   └── JobLockedError            another run of the same job holds the lock
    ├── SourceError                   an input file cannot be listed or read
    ├── CheckpointError               the checkpoint is unreadable or from a newer version
    └── DeliveryError                 Firehose did not take the records
        ├── TransientDeliveryError    retry budget exhausted on throttling / 5xx / dropped
        │                             connections: rerunning later resumes safely
        └── PermanentDeliveryError    unknown stream, access denied, invalid request:
                                      fix the cause, then rerun

Every message says what went wrong and what to do; none may contain a secret.
"""

from __future__ import annotations


class BackfillError(Exception):
    """Root of every error this tool raises on purpose."""

    exit_code = 1


class ConfigError(BackfillError):
    """A configuration mistake detected before anything was sent."""

    exit_code = 2


class MappingError(ConfigError):
    """The mapping file is invalid, or names columns the data does not have."""


class PreflightError(ConfigError):
    """A check over the input data failed before sending (e.g. the 30-day window)."""


class CheckpointMismatchError(ConfigError):
    """The checkpoint was written for other inputs or another mapping."""


class JobLockedError(ConfigError):
    """Another live run of the same job holds its lock."""


class SourceError(BackfillError):
    """An input could not be found, listed or read."""


class CheckpointError(BackfillError):
    """The checkpoint could not be read or written safely."""


class DeliveryError(BackfillError):
    """Records could not be delivered to Firehose."""


class TransientDeliveryError(DeliveryError):
    """Delivery kept failing with retryable errors until the retry budget ran out."""


class PermanentDeliveryError(DeliveryError):
    """Delivery failed with an error that retrying cannot fix."""
