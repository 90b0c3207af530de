# CI only: a stand-in for the official nginx image, built from the locally made Debian base
# because this machine cannot pull images. Users get nginx:1.27-bookworm from compose.yaml; both
# read the same docker/nginx.conf, mounted at /etc/nginx/nginx.conf.
FROM python:3.11-slim
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends nginx \
    && rm -rf /var/lib/apt/lists/* \
    && ln -sf /dev/stderr /var/log/nginx/error.log
EXPOSE 8000
CMD ["nginx", "-g", "daemon off;"]
