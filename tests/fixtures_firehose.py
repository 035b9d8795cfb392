"""Fixtures for the strict Firehose endpoint (filled in by the Firehose connector work)."""
