#!/bin/sh
# The part of the official nginx image's entrypoint this project uses: with
# NGINX_ENTRYPOINT_LOCAL_RESOLVERS set, NGINX_LOCAL_RESOLVERS = the container's DNS server from
# /etc/resolv.conf; then /etc/nginx/templates/X.template is rendered to /etc/nginx/conf.d/X.
# One difference: only the first nameserver. podman lists its aardvark-dns (which knows the compose
# services, and forwards everything else) and then the host's; nginx asks its resolvers in turn, and
# the host's would answer NXDOMAIN for `api` every other time.
set -eu
if [ -n "${NGINX_ENTRYPOINT_LOCAL_RESOLVERS:-}" ]; then
    NGINX_LOCAL_RESOLVERS=$(awk '$1=="nameserver" {if ($2 ~ ":") {print "["$2"]"} else {print $2}; exit}' /etc/resolv.conf)
    export NGINX_LOCAL_RESOLVERS
fi
for template in /etc/nginx/templates/*.template; do
    [ -e "$template" ] || continue
    target="/etc/nginx/conf.d/$(basename "$template" .template)"
    # Only our variable: nginx's own $variables in the template stay as they are.
    envsubst '${NGINX_LOCAL_RESOLVERS}' < "$template" > "$target"
    echo "$0: rendered $template -> $target" >&2
done
exec "$@"
