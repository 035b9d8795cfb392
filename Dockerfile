# syntax=docker/dockerfile:1
# moesif-backfill: the CLI and the Prefect flows in one image (deployments/README.md, "Work pools").
#
#   docker build -t moesif-backfill .
#   docker run --rm moesif-backfill --version
#   docker run --rm -e MOESIF_BACKFILL_STREAM=moesif-actions moesif-backfill run s3://exports/usage/ \
#       --mapping /opt/moesif-backfill/examples/mapping.yaml --checkpoint s3://state/ckpt/
#
# Arguments go to `moesif-backfill`; commands starting with `prefect` or `python` run as given
# (what Prefect's Docker/ECS/Kubernetes workers start: `prefect flow-run execute`, or
# `python -m prefect.engine`). No credentials are baked in: AWS credentials come from the task
# role / IRSA / instance profile (boto3's chain) or a Prefect AwsCredentials block. The CLI is
# PID 1 (exec'd): run with `docker run --init` (ECS: initProcessEnabled) so that zombie
# processes are reaped; SIGINT/SIGTERM reach the CLI itself.
# tests/test_container.py lints this file with hadolint and checks what the image would run.

# -- build: the project's wheel (the runtime packages only, as tests/test_packaging.py checks) --
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY moesif_backfill ./moesif_backfill
COPY pipeline ./pipeline
COPY flows ./flows
COPY transforms ./transforms
COPY connectors ./connectors
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# -- runtime: the wheel and its dependencies, a non-root user ----------------------------------
FROM python:3.11-slim AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    MOESIF_BACKFILL_HOME=/opt/moesif-backfill
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir /wheels/*.whl \
    && groupadd --system --gid 10001 moesif \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/moesif --create-home \
       --shell /usr/sbin/nologin moesif \
    && install -d -o 10001 -g 10001 /work
# What deployments/prefect.yaml's pull step (set_working_directory: $MOESIF_BACKFILL_HOME)
# expects: the flow entry points (flows/...py) and the example mapping, read-only for the user.
COPY flows ${MOESIF_BACKFILL_HOME}/flows
COPY deployments ${MOESIF_BACKFILL_HOME}/deployments
COPY examples/mapping.yaml ${MOESIF_BACKFILL_HOME}/examples/mapping.yaml
COPY --chmod=0755 deployments/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
# The CLI's working directory: a relative --checkpoint (the default .moesif-backfill/...) lands
# here; mount a volume on /work, or use an s3:// checkpoint, to keep it beyond the container.
WORKDIR /work
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["--help"]
