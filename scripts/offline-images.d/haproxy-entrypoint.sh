#!/bin/sh
# Stand-in for the official haproxy image's entrypoint: `haproxy ARGS` (or options only) runs
# in master-worker mode in the foreground, as the official image does; any other command runs
# as given. The image's USER is haproxy, so nothing here changes users.
set -eu
if [ "${1#-}" != "$1" ]; then set -- haproxy "$@"; fi
if [ "${1:-}" = haproxy ]; then
	shift
	set -- haproxy -W -db "$@"
fi
exec "$@"
