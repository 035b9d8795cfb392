#!/bin/sh
# The image's entry point (Dockerfile). `prefect ...` and `python ...` (what Prefect's Docker,
# ECS and Kubernetes workers run: `prefect flow-run execute`, `python -m prefect.engine`) and
# `moesif-backfill ...` run as given; anything else is arguments of `moesif-backfill`, so
# `docker run IMAGE run s3://... --mapping ...` runs `moesif-backfill run s3://... --mapping ...`.
# exec: the command replaces this shell, so SIGINT/SIGTERM sent to the container reach it.
set -eu
case "${1:-}" in
  prefect | python | python3 | python3.* | moesif-backfill)
    exec "$@"
    ;;
esac
exec moesif-backfill "$@"
