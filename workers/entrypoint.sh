#!/bin/sh
# Entrypoint of the devctl worker image.
#
#   (no arguments)         devctl worker --queues "$DEVCTL_QUEUES" --concurrency "$DEVCTL_CONCURRENCY"
#   --option ...           the same worker command with extra options (a later option wins)
#   worker|run|flower|...  devctl with those arguments (`run examples/dag.yaml --distributed`)
#   any other program      that program (`sh`, `celery`, `python`, `devctl --help`)
#
# Every branch uses exec: the process tini signals is devctl itself, so SIGTERM starts
# Celery's warm shutdown (running steps finish, nothing new is taken) and Ctrl-C reaches
# a coordinator. Credentials come only from the environment, never from this file.
set -eu

DEVCTL_SUBCOMMANDS="run validate graph worker flower workflow"

is_devctl_subcommand() {
    for name in $DEVCTL_SUBCOMMANDS; do
        [ "$1" = "$name" ] && return 0
    done
    return 1
}

has_basic_auth_option() {
    for arg in "$@"; do
        case "$arg" in
            --basic-auth | --basic-auth=* | --basic_auth | --basic_auth=*) return 0 ;;
        esac
    done
    return 1
}

# Flower's /metrics and /healthcheck skip auth and its UI shows task arguments:
# never start it without basic auth, which comes from FLOWER_BASIC_AUTH (user:password).
start_flower() {
    shift
    if has_basic_auth_option "$@"; then
        exec devctl flower "$@"
    fi
    if [ -z "${FLOWER_BASIC_AUTH:-}" ]; then
        echo "devctl-entrypoint: refusing to start Flower without basic auth:" \
            "set FLOWER_BASIC_AUTH=user:password (from a secret)" >&2
        exit 64
    fi
    exec devctl flower --basic-auth "$FLOWER_BASIC_AUTH" "$@"
}

if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
    exec devctl worker \
        --queues "${DEVCTL_QUEUES:-default}" \
        --concurrency "${DEVCTL_CONCURRENCY:-2}" \
        "$@"
fi

if [ "$1" = "flower" ]; then
    start_flower "$@"
fi

if is_devctl_subcommand "$1" || ! command -v "$1" >/dev/null 2>&1; then
    exec devctl "$@"
fi

exec "$@"
