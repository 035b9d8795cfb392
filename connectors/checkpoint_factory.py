"""Pick the checkpoint backend for a ``--checkpoint`` location.

``s3://bucket/prefix/`` gives an :class:`~connectors.checkpoint_s3.S3CheckpointStore` (boto3's
standard credential chain; ``endpoint_url`` for moto or another S3-compatible endpoint); anything
else is a local directory for :class:`~connectors.checkpoint_local.LocalCheckpointStore`. Other
URL schemes (``gs://``, ``https://``...) are refused rather than becoming a directory named
``gs:``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Final

from connectors.checkpoint import CheckpointStore
from connectors.checkpoint_local import LocalCheckpointStore
from connectors.checkpoint_s3 import S3CheckpointStore
from moesif_backfill.errors import ConfigError

__all__ = ["make_checkpoint_store"]

_URL_SCHEME: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def make_checkpoint_store(
    location: str | Path,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    lease_seconds: float = 60.0,
    client: Any = None,
) -> CheckpointStore:
    """Return the checkpoint store for ``location`` (``endpoint_url``/``region``/
    ``lease_seconds``: S3 only)."""
    if isinstance(location, str):
        if location[:5].lower() == "s3://":
            return S3CheckpointStore(
                location,
                client=client,
                endpoint_url=endpoint_url,
                region=region,
                lease_seconds=lease_seconds,
            )
        if _URL_SCHEME.match(location):
            scheme = location.split("://", 1)[0]
            raise ConfigError(
                f"unsupported checkpoint location {location!r}: {scheme}:// is not supported; "
                f"use a local directory or s3://bucket/prefix/"
            )
    return LocalCheckpointStore(location)
