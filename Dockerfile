# The quorumca image: the static binary alone. FROM scratch because no image
# registry is assumed (nothing to pull a base from) and nothing else is
# needed: the binary is built on the host with CGO_ENABLED=0 by
# `scripts/compose.sh build` into bin/quorumca-static.
FROM scratch
COPY bin/quorumca-static /quorumca
VOLUME ["/data"]
# Every command in the container, `docker-compose exec manager1 /quorumca
# node ls` included, uses the data dir of the volume without --data-dir.
ENV QUORUMCA_DATA_DIR=/data
# API (gRPC), Raft, gossip (TCP and UDP).
EXPOSE 2377 2378 7946 7946/udp
HEALTHCHECK --interval=5s --timeout=4s --start-period=60s --retries=3 \
  CMD ["/quorumca", "status", "--data-dir", "/data"]
ENTRYPOINT ["/quorumca"]
CMD ["run", "--data-dir", "/data"]
