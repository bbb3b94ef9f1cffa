# One image for every LinePulse service; the command picks the service:
#   docker run --rm linepulse kpi --config /etc/linepulse/plant.yaml --kafka kafka:9092 --api
# Configuration comes from the plant YAML (LINEPULSE_CONFIG) and environment variables
# (LINEPULSE_KAFKA, LINEPULSE_ALERTS_TOKEN, ...); see deploy/README.md.
#
# BASE: any Debian-like image with python3 (3.11+) and its venv module. deploy/images.sh
# --offline builds one with debootstrap, for machines that reach no image registry.
ARG BASE=python:3.11-slim
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The runtime dependencies only (no [dev] extra); every one of them ships manylinux wheels,
# so the image needs no compiler. In a venv of its own: Debian's python3 refuses pip
# installs into the system (PEP 668). The source tree is removed once installed.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY linepulse ./linepulse
COPY services ./services
# A site whose proxy re-signs TLS passes its CA bundle as the build secret `ca-bundle`
# (deploy/images.sh passes the host's); it is used for this install and not kept.
RUN --mount=type=secret,id=ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
    && python3 -m venv /opt/linepulse && /opt/linepulse/bin/pip install . && rm -rf /src
ENV PATH=/opt/linepulse/bin:$PATH

# A system user without a login shell. /var/lib/linepulse exists in the image and belongs
# to it, so a named volume mounted there starts out writable by the service (checkpoints,
# the DuckDB history, the ingest spool, the alert state).
# uid and gid 10001 both (`--user-group` alone gives the next free system gid).
RUN groupadd --system --gid 10001 linepulse \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/linepulse \
        --shell /usr/sbin/nologin linepulse \
    && mkdir -p /var/lib/linepulse /etc/linepulse \
    && chown linepulse:linepulse /var/lib/linepulse
USER linepulse
WORKDIR /var/lib/linepulse

ENTRYPOINT ["linepulse"]
CMD ["--help"]
