# CI only: a stand-in for the official redis image, built from the locally made Debian base
# because this machine cannot pull images. Users get redis:7-bookworm from compose.yaml.
FROM python:3.11-slim
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends redis-server redis-tools \
    && rm -rf /var/lib/apt/lists/*
USER redis
CMD ["redis-server"]
