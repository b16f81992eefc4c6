#!/bin/sh
# A Docker engine in a container: one node of a throwaway swarm for the tests (tests/swarm_helpers.py).
# `dockerd` runs Debian's engine with its own data root; `registry` runs Debian's
# docker-registry (the distribution registry) on :5000. Anything else runs as given.
set -eu
case "${1:-dockerd}" in
dockerd)
	shift || true
	# cgroup v1 hosts: the engine needs the usual hierarchy writable (bind-mounted by the caller).
	mkdir -p /var/run /var/lib/docker
	# A node stopped and started again (the node-loss test) keeps its old pid files, which
	# name pid 1: this very process now, so dockerd would refuse to start ("pid file found").
	rm -f /var/run/docker.pid /var/run/docker/containerd/containerd.pid
	storage="${NODE_STORAGE_DRIVER:-vfs}"
	set -- dockerd --data-root /var/lib/docker --storage-driver "$storage" \
		-H unix:///var/run/docker.sock -H tcp://0.0.0.0:2375 --tls=false \
		--log-level warn --userland-proxy=false "$@"
	for registry in ${NODE_INSECURE_REGISTRIES:-}; do
		set -- "$@" --insecure-registry "$registry"
	done
	# The engine refuses plain TCP without TLS only with a warning; the port is reachable from
	# the nodes' bridge network alone (never published).
	exec "$@"
	;;
registry)
	# Debian's default config asks for htpasswd credentials; this one is open, on the nodes'
	# private bridge network only.
	mkdir -p /var/lib/docker-registry
	cat > /tmp/registry.yml <<-CONFIG
	version: 0.1
	storage:
	  filesystem:
	    rootdirectory: /var/lib/docker-registry
	  delete:
	    enabled: true
	http:
	  addr: :5000
	CONFIG
	exec docker-registry serve /tmp/registry.yml
	;;
*)
	exec "$@"
	;;
esac
