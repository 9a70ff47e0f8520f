# syntax=docker/dockerfile:1
#
# clip-relay image: one image for both processes.
#   docker build -t clip-relay:0.1.0 .
#   docker run --rm -p 127.0.0.1:8080:8080 -e REDIS_URL=... -e RELAY_API_KEYS=... clip-relay:0.1.0
#   docker run --rm -e REDIS_URL=... -e SCALEREACH_API_KEY=... clip-relay:0.1.0 worker
#
# Reproducible: third-party packages come only from requirements.lock, every file checked
# against its sha256 (--require-hashes). After changing dependencies in pyproject.toml,
# regenerate the lock with the command in its header. tests/deploy/test_dockerfile.py runs
# hadolint on this file and replays the install steps in a venv.

############################ builder: a venv with the locked deps + the project ############################
FROM python:3.11-slim-bookworm AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /build
RUN python -m venv /opt/venv
ENV PATH="/opt/venv/bin:${PATH}"

# Dependencies first (their own layer, rebuilt only when the lock changes). Every package
# is pinned and hash-checked; --no-deps: the lock is complete, nothing is resolved here.
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements.lock

# The project itself, without dependencies (all came from the lock) and without build
# isolation (the locked setuptools builds it, so no unpinned download happens).
COPY pyproject.toml README.md ./
COPY relay/ relay/
COPY workers/ workers/
COPY clients/python/clip_relay_client/ clients/python/clip_relay_client/
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
    && pip uninstall --yes setuptools \
    && pip check

############################ runtime: the venv, a non-root user, nothing else ############################
FROM python:3.11-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="clip-relay" \
      org.opencontainers.image.description="Webhook relay for the ScaleReach clipping API (API + arq worker)" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="MIT"

ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# Fixed numeric IDs: Kubernetes' runAsUser/fsGroup (10001) and runAsNonRoot rely on them.
RUN groupadd --system --gid 10001 relay \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin relay

COPY --from=builder /opt/venv /opt/venv

USER 10001:10001
WORKDIR /tmp

# 8080: API (RELAY_PORT), 9100: worker /healthz, /readyz, /metrics (RELAY_METRICS_PORT)
EXPOSE 8080 9100

# No curl in slim: Python's urllib. Healthy when the API's (RELAY_PORT) or the worker's
# (RELAY_METRICS_PORT) /healthz answers 200, so one check serves both commands.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request\nfor var, default in (('RELAY_PORT', '8080'), ('RELAY_METRICS_PORT', '9100')):\n    url = 'http://127.0.0.1:%s/healthz' % os.environ.get(var, default)\n    try:\n        with urllib.request.urlopen(url, timeout=3) as response:\n            if response.status == 200:\n                sys.exit(0)\n    except OSError:\n        pass\nsys.exit(1)"]

ENTRYPOINT ["clip-relay"]
CMD ["api"]
