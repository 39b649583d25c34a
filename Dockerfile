# recurd in a container: build on Debian 12 with the README's commands, run on
# Debian 12 slim as a non-root user with the shipped default model.
#
#   docker build -t recurd .
#   docker run -p 8080:8080 recurd                        # models/recur-sp
#   docker run -p 8080:8080 -e RECURD_API_KEY=secret -v recurd-state:/var/lib/recurd recurd
#
# Several replicas sharing sessions through Redis (--store, libhiredis) behind
# HAProxy: deploy/compose.yaml and docs/cluster.md. The image sets
# RECURD_STATE_DIR for one server; a replica with a store starts without it.
#
# Every option is an environment variable (docs/server.md, "Options").
# (Docker cannot run on the machine this was written on; the stages only run
# the same commands as README.md and .ci/run.)
#
# Base images are pinned to a Debian point release (12.15, the release the
# machine this was written on installs from), so a rebuild gets the same
# system libraries until someone moves the pin on purpose. A digest
# (debian:12.15-slim@sha256:...) pins harder; none could be fetched here
# (no registry access), so the version tag is the pin. Keep both stages on
# the same release: the run stage's libraries must be the ones built against.

FROM debian:12.15 AS build
WORKDIR /src
COPY scripts/install-deps scripts/install-deps
RUN scripts/install-deps && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cmake -S . -B build -G Ninja && ninja -C build recurd recur_cli

FROM debian:12.15-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libopenblas0-pthread libjansson4 libmicrohttpd12 libuv1 libpcre2-8-0 libutf8proc2 \
      libxxhash0 libhiredis0.14 curl ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/recurd --create-home recurd
COPY --from=build /src/build/server/recurd /usr/local/bin/recurd
# the client (libcurl comes with curl): docker exec <ctr> recur sessions
COPY --from=build /src/build/clients/recur /usr/local/bin/recur
COPY models/recur-sp /opt/recurd/models/recur-sp
USER recurd
WORKDIR /var/lib/recurd
# 0.0.0.0 inside the container so the published port reaches it; sessions
# persist across restarts in the volume.
ENV RECURD_MODEL=/opt/recurd/models/recur-sp \
    RECURD_HOST=0.0.0.0 \
    RECURD_PORT=8080 \
    RECURD_STATE_DIR=/var/lib/recurd/state
VOLUME /var/lib/recurd
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD curl -fsS "http://127.0.0.1:${RECURD_PORT}/health" || exit 1
ENTRYPOINT ["recurd", "serve"]
