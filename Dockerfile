# One image for every LinePulse service; the command picks the service:
#   docker run --rm linepulse kpi --config /etc/linepulse/plant.yaml --kafka kafka:9092 --api
# Configuration comes from the plant YAML (LINEPULSE_CONFIG) and environment variables
# (LINEPULSE_KAFKA, LINEPULSE_ALERTS_TOKEN, ...); see deploy/README.md.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The runtime dependencies only (no [dev] extra); every one of them ships manylinux wheels,
# so the slim image needs no compiler. The source tree is removed once installed.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY linepulse ./linepulse
COPY services ./services
RUN pip install . && rm -rf /src

# A system user without a login shell. /var/lib/linepulse exists in the image and belongs
# to it, so a named volume mounted there starts out writable by the service (checkpoints,
# the DuckDB history, the ingest spool, the alert state).
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/linepulse \
        --shell /usr/sbin/nologin linepulse \
    && mkdir -p /var/lib/linepulse /etc/linepulse \
    && chown linepulse:linepulse /var/lib/linepulse
USER linepulse
WORKDIR /var/lib/linepulse

ENTRYPOINT ["linepulse"]
CMD ["--help"]
