# HAProxy for the recurd cluster, from Debian 12's package (the version the
# tests run: haproxy 2.6), with deploy/haproxy.cfg. Build context: deploy/.
#
#   docker build -t recurd-haproxy -f deploy/haproxy.Dockerfile deploy
#   docker run -e REPLICA_1=host-a:8080 -e REPLICA_2=host-b:8080 -p 8080:8080 recurd-haproxy
#
# The replicas' addresses are environment variables (the file's header lists
# them). Runs as the package's haproxy user with a fixed uid (10003); it
# binds only unprivileged ports and writes no files.
FROM debian:12.15-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends haproxy \
 && rm -rf /var/lib/apt/lists/* \
 && usermod --uid 10003 haproxy && groupmod --gid 10003 haproxy
COPY haproxy.cfg /etc/recurd/haproxy.cfg
USER 10003:10003
ENV PROXY_BIND=:8080 \
    PROXY_STATS_BIND=:8404
EXPOSE 8080 8404
# in the foreground (-db), logging to stdout
ENTRYPOINT ["haproxy", "-db", "-f", "/etc/recurd/haproxy.cfg"]
