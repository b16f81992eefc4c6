#!/bin/sh
# Stand-in for the official redis image's entrypoint: `redis-server ARGS` or any command.
set -eu
if [ "${1#-}" != "$1" ]; then set -- redis-server "$@"; fi
if [ "${1:-}" = redis-server ] && [ "$(id -u)" = 0 ]; then
	mkdir -p /data && chown redis:redis /data
	exec setpriv --reuid=redis --regid=redis --init-groups "$@"
fi
exec "$@"
