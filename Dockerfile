# leadflow-exporter container image.
#
# Build:  docker build -t leadflow-exporter:0.1.0 .
# Run:    see docs/deploy.md (mount a config at /etc/leadflow-exporter/config.yaml and a
#         volume at /var/lib/leadflow-exporter; pass the API keys as env or secret files).
#
# The builder stage turns the source tree into a wheel and installs it, with every
# dependency pinned, into a virtualenv at $VIRTUAL_ENV; the final stage copies only that
# virtualenv. tests/test_image_install.py runs this stage's RUN lines verbatim (with
# $BUILD_VENV, $WHEEL_DIR and $VIRTUAL_ENV pointing into a temporary folder) to prove
# they work, so those RUN lines name no absolute path except through these variables.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BUILD_VENV=/tmp/buildenv \
    WHEEL_DIR=/tmp/wheels \
    VIRTUAL_ENV=/opt/venv

WORKDIR /src
COPY pyproject.toml README.md ./
COPY leadflow_exporter ./leadflow_exporter

# 1. Build the project wheel with pinned build tools (no build isolation: nothing
#    unpinned is fetched).
# 2. Install it into the runtime virtualenv with every runtime dependency pinned (binary
#    wheels only: the slim image has no compiler); pip check proves the set is whole.
RUN python -m venv "${BUILD_VENV}" \
 && "${BUILD_VENV}/bin/pip" install --no-cache-dir setuptools==80.9.0 wheel==0.45.1 \
 && "${BUILD_VENV}/bin/pip" wheel --no-cache-dir --no-deps --no-build-isolation \
        --wheel-dir "${WHEEL_DIR}" . \
 && python -m venv "${VIRTUAL_ENV}" \
 && "${VIRTUAL_ENV}/bin/pip" install --no-cache-dir --only-binary=:all: \
        "${WHEEL_DIR}"/leadflow_exporter-*.whl \
        aiohappyeyeballs==2.7.1 \
        aiohttp==3.14.5 \
        aiosignal==1.4.0 \
        attrs==26.1.0 \
        bcrypt==5.0.0 \
        frozenlist==1.8.0 \
        idna==3.20 \
        msgspec==0.22.0 \
        multidict==7.2.1 \
        prometheus-client==0.26.0 \
        propcache==0.5.4 \
        pyyaml==6.0.4 \
        structlog==26.1.0 \
        typing-extensions==4.16.0 \
        yarl==1.25.1 \
 && "${VIRTUAL_ENV}/bin/pip" check \
 && "${VIRTUAL_ENV}/bin/leadflow-exporter" --help


FROM ${PYTHON_IMAGE}

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown

LABEL org.opencontainers.image.title="leadflow-exporter" \
      org.opencontainers.image.description="Prometheus exporter for DialogTech LeadFlow pay-per-call history" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.documentation="docs/deploy.md" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11.14-slim-bookworm"

# No bytecode written at run time (the root filesystem may be read-only), unbuffered logs.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# A fixed numeric user, and the only writable place: the state volume.
RUN groupadd --system --gid 10001 leadflow \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /var/lib/leadflow-exporter --shell /usr/sbin/nologin leadflow \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/leadflow-exporter \
 && install -d -m 0755 /etc/leadflow-exporter

COPY --from=builder /opt/venv /opt/venv

VOLUME ["/var/lib/leadflow-exporter"]
WORKDIR /var/lib/leadflow-exporter
USER 10001:10001
EXPOSE 10151

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:10151/-/healthy', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["leadflow-exporter"]
CMD ["run", "--config", "/etc/leadflow-exporter/config.yaml"]
