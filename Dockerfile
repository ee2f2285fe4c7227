# syntax=docker/dockerfile:1
# Build stage: a wheel of agentcred and its dependencies.
FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md requirements.lock ./
COPY operator ./operator
# The CSI node plugin's protobufs, compiled from the published .proto files (the Go modules that
# publish them, hash-checked) into operator/agentcred_protos, as `make protos` does.
RUN pip install --no-cache-dir "grpcio-tools==1.85.1" \
 && PYTHONPATH=operator python -m agentcred.devcluster.protos
# Every dependency exactly as requirements.lock pins it (hashes checked), agentcred as a wheel.
RUN pip download --no-cache-dir --require-hashes --only-binary=:all: -r requirements.lock -d /wheels \
 && pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# Runtime stage: no build tools, no source tree, a non-root user, read-only friendly.
FROM python:3.11.11-slim-bookworm
LABEL org.opencontainers.image.title="agentcred" \
      org.opencontainers.image.description="Short-lived, task-bound credentials for AI agents on Kubernetes" \
      org.opencontainers.image.source="https://github.com/agentcred/agentcred" \
      org.opencontainers.image.licenses="Apache-2.0"
# MALLOC_MMAP_THRESHOLD_: buffers of 128 KiB and more (a TLS connection's 256 KiB read buffer)
# come from mmap and go back when freed; with glibc's moving threshold a flood of connections
# left the process at its peak size for good (bench/attacks.py).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    MALLOC_MMAP_THRESHOLD_=131072
COPY --from=build /wheels /wheels
COPY requirements.lock /tmp/requirements.lock
RUN pip install --no-cache-dir --no-index --find-links=/wheels --require-hashes -r /tmp/requirements.lock \
 && pip install --no-cache-dir --no-index --no-deps /wheels/agentcred-*.whl \
 && rm -rf /wheels /tmp/requirements.lock \
 && groupadd --gid 65532 nonroot \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin nonroot
# 65532: the conventional "nonroot" uid, with a passwd entry (Kopf asks getpass who it runs as:
# without one the operator stops at start); no home directory writes are needed.
USER 65532:65532
# 9443: admission webhook; 8443: JWKS and exchange; 8080: health and metrics.
EXPOSE 9443 8443 8080
ENTRYPOINT ["agentcred", "run"]
