"""TRANSITIONAL shim for moesif_backfill/cli.py: the cluster code is in pipeline/cluster.py
(plain Dask, no Prefect). Delete once the CLI imports it from there."""

from pipeline.cluster import check_cluster_settings

__all__ = ["check_cluster_settings"]
