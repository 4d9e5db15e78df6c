# syntax=docker/dockerfile:1
#
# Two images from one file:
#
#   docker build -t reach-sync .                           # the product (the last stage, default)
#   docker build --target sandbox -t reach-sandbox .       # the Reach sandbox, a test double
#
# The product image holds only the `reach-sync` wheel (the `consumer*` packages of the root
# pyproject.toml) and its dependencies, in a virtual environment copied from the build stage: no
# sandbox, no local stack, no compiler, no pip cache. Every dependency ships manylinux wheels; the
# product's own C extension (the router's Avro reader, setup.py) is compiled in the build stage,
# which starts from the full image of the same Python (it has gcc), and the build fails if it does
# not compile.
#
# Running it (docker-compose.yaml does this for the sample shop):
#   - the sync definition is expected at /etc/reach-sync/sync.yaml (a ConfigMap or a volume);
#     the default command is `run --config /etc/reach-sync/sync.yaml` (both stages; add
#     `--role router` or `--role syncer` for one);
#   - secrets come from the environment or from files, as the definition names them
#     (`*_env` / `*_file` fields; a relative *_file path is read next to the definition);
#   - the definition needs a `health` section on port ${REACH_SYNC_HEALTH_PORT} (8081) with
#     host 0.0.0.0 for /healthz, /readyz and /metrics to be reachable from outside the
#     container; the HEALTHCHECK below asks /healthz on that port.

ARG PYTHON_IMAGE=python:3.12.11-slim-bookworm
# The same Python, built the same way into /usr/local, with a C compiler: the venv made here runs
# in the slim runtime below.
ARG BUILD_IMAGE=python:3.12.11-bookworm

# --- the product: build ---------------------------------------------------------------------------
FROM ${BUILD_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    REACH_SYNC_REQUIRE_EXTENSIONS=1
WORKDIR /src
# Only what the wheel is made of: the project files, its readme (named by pyproject.toml) and the
# `consumer` package. sandbox/, devstack/, tests/ never enter this stage.
COPY pyproject.toml setup.py README.md ./
COPY consumer/ consumer/
# The wheel alone (--no-deps), then a virtual environment with it and its dependencies; pip
# itself is removed from the environment, which the runtime never needs.
RUN pip wheel --no-deps --wheel-dir /dist . \
    && python -m venv /opt/reach-sync \
    && /opt/reach-sync/bin/pip install /dist/reach_sync-*.whl \
    && /opt/reach-sync/bin/pip uninstall --yes pip \
    && /opt/reach-sync/bin/reach-sync --version

# --- the Reach sandbox (test double): build and image ----------------------------------------------
FROM ${PYTHON_IMAGE} AS sandbox-build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY sandbox/pyproject.toml sandbox/
COPY sandbox/reach_sandbox/ sandbox/reach_sandbox/
RUN pip wheel --no-deps --wheel-dir /dist ./sandbox \
    && python -m venv /opt/reach-sandbox \
    && /opt/reach-sandbox/bin/pip install /dist/reach_sandbox-*.whl \
    && /opt/reach-sandbox/bin/pip uninstall --yes pip

FROM ${PYTHON_IMAGE} AS sandbox
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="reach-sandbox" \
      org.opencontainers.image.description="A local test double of the Reach API (not for production)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
ENV PATH=/opt/reach-sandbox/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10002 reach-sandbox \
    && useradd --system --uid 10002 --gid 10002 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin reach-sandbox \
    && mkdir -p /var/lib/reach-sandbox \
    && chown 10002:10002 /var/lib/reach-sandbox
COPY --from=sandbox-build /opt/reach-sandbox /opt/reach-sandbox
USER 10002:10002
WORKDIR /var/lib/reach-sandbox
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/_admin/health', timeout=4)"]
ENTRYPOINT ["reach-sandbox"]
CMD ["--config", "/etc/reach-sandbox/sandbox.yaml", "--state-dir", "/var/lib/reach-sandbox", "--host", "0.0.0.0", "--port", "8080"]

# --- the product: runtime (the default target) -----------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="reach-sync" \
      org.opencontainers.image.description="Change-data-capture sync from a partner's Postgres to the Reach API" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
ENV PATH=/opt/reach-sync/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    REACH_SYNC_HEALTH_PORT=8081
# A fixed, unprivileged uid/gid (10001), so that Kubernetes' runAsNonRoot and file ownership of
# mounted secrets can name it.
RUN groupadd --system --gid 10001 reach-sync \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin reach-sync
COPY --from=build /opt/reach-sync /opt/reach-sync
USER 10001:10001
WORKDIR /etc/reach-sync
EXPOSE 8081
# Liveness: /healthz answers 200 while the process runs (docs/operations.md, "Health").
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('REACH_SYNC_HEALTH_PORT', '8081') + '/healthz', timeout=4)"]
# `run` drains on SIGTERM: stop polling, finish the windows in flight, commit; bounded at about
# 90 s (deploy/kubernetes/base/*.yaml derive it from the code's constants). Give it 120 s:
# docker stop -t 120, compose's stop_grace_period, Kubernetes' terminationGracePeriodSeconds.
STOPSIGNAL SIGTERM
ENTRYPOINT ["reach-sync"]
CMD ["run", "--config", "/etc/reach-sync/sync.yaml"]
