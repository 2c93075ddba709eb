# Imagegate: `docker build -t imagegate .` then
#   docker run -p 8080:8080 imagegate                       (bundled offline config, `local` provider)
#   docker run -p 8080:8080 -v ./imagegate.yaml:/etc/imagegate/config.yaml:ro imagegate
# A file mounted at /etc/imagegate/config.yaml is used (or set IMAGEGATE_CONFIG to another path).
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    IMAGEGATE_PORT=8080 \
    IMAGEGATE_STORAGE_PATH=/var/lib/imagegate/images

WORKDIR /src
COPY pyproject.toml README.md ./
COPY imagegate ./imagegate
COPY proxy ./proxy
COPY middlewares ./middlewares
COPY adapters ./adapters
COPY config ./config
# the package and its runtime dependencies only (no test or lint extras); with the `s3` extra
# (aiobotocore, for storage.backend: s3; ~35 MB on disk, loaded only when configured), or
# without it: docker build --build-arg EXTRAS= .
ARG EXTRAS=s3
RUN pip install ".${EXTRAS:+[$EXTRAS]}" && rm -rf /src

RUN useradd --system --uid 10001 --home-dir /var/lib/imagegate --create-home imagegate \
    && mkdir -p /etc/imagegate \
    && chown imagegate:imagegate /var/lib/imagegate
USER imagegate
WORKDIR /var/lib/imagegate
EXPOSE 8080
VOLUME ["/var/lib/imagegate"]

HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('IMAGEGATE_PORT', '8080') + '/healthz', timeout=2)"]

# exec: imagegate becomes PID 1, so SIGHUP (reload: `docker kill -s HUP`) and SIGTERM (drain:
# `docker stop -t 40`, longer than server.graceful_shutdown_s) reach it directly
CMD ["sh", "-c", "if [ -z \"$IMAGEGATE_CONFIG\" ] && [ -f /etc/imagegate/config.yaml ]; then export IMAGEGATE_CONFIG=/etc/imagegate/config.yaml; fi; exec imagegate serve --host 0.0.0.0"]
