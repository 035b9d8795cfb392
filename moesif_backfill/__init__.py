"""moesif-backfill: historical and nightly billing/usage data into Moesif actions via Firehose."""

__version__ = "0.1.0"
