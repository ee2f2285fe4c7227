# syntax=docker/dockerfile:1
# Build stage: a wheel of agentcred and its dependencies.
FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

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
RUN pip install --no-cache-dir --no-index --find-links=/wheels agentcred && rm -rf /wheels
# 65532: the conventional "nonroot" uid; no home directory writes are needed.
USER 65532:65532
# 9443: admission webhook; 8443: JWKS and exchange; 8080: health and metrics.
EXPOSE 9443 8443 8080
ENTRYPOINT ["agentcred", "run"]
