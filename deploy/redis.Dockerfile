# Redis for the recurd cluster, from Debian 12's package (the version the
# tests run: redis-server 7.0), with deploy/redis.conf. Build context: deploy/.
#
#   docker build -t recurd-redis -f deploy/redis.Dockerfile deploy
#
# Same pinned base as the repository's Dockerfile. The package's redis user
# gets a fixed uid (10002) so Kubernetes can check runAsNonRoot against a
# number and the volume's owner is known.
FROM debian:12.15-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* \
 && usermod --uid 10002 redis && groupmod --gid 10002 redis \
 && mkdir -p /data && chown redis:redis /data
COPY redis.conf /etc/recurd/redis.conf
USER 10002:10002
VOLUME /data
EXPOSE 6379
# the data directory is /data (redis.conf says why it is not in the file)
ENTRYPOINT ["redis-server", "/etc/recurd/redis.conf", "--dir", "/data"]
