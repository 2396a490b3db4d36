#!/bin/sh
# Init step: pull every model in PULL_MODELS (space or comma separated) into the store on the
# volume before the daemon's container starts.
#
# Pulls go through the daemon's API (POST /models/create): `model-runner` itself only serves and
# imports local GGUF files, and `docker-model pull` is a client of a running daemon. So this
# starts one on loopback, on its own port, pulls with the same code path `docker model pull`
# uses (resumable downloads, digests checked, registry credentials from $DOCKER_CONFIG), and
# stops it. A model already in the store is kept when its registry cannot be reached, so a
# restart does not depend on the registry.
set -eu

port=12435
MODEL_RUNNER_HOST="http://127.0.0.1:$port"
export MODEL_RUNNER_HOST

# No default model here: it would start an engine in this container once idle for 10 s.
DMR_DEFAULT_MODEL="" model-runner serve --host 127.0.0.1 --port "$port" &
daemon=$!
trap 'kill -TERM "$daemon" 2>/dev/null || true; wait "$daemon" 2>/dev/null || true' EXIT

waited=0
until docker-model status >/dev/null 2>&1; do
    if ! kill -0 "$daemon" 2>/dev/null; then
        echo "pull-models: the daemon exited before answering" >&2
        exit 1
    fi
    waited=$((waited + 1))
    if [ "$waited" -ge 120 ]; then
        echo "pull-models: the daemon did not answer on port $port within 120 s" >&2
        exit 1
    fi
    sleep 1
done

for model in $(printf '%s' "${PULL_MODELS:-}" | tr ',' ' '); do
    echo "pull-models: pulling $model"
    if ! docker-model pull "$model"; then
        if docker-model inspect "$model" >/dev/null 2>&1; then
            echo "pull-models: $model could not be refreshed; keeping the stored copy" >&2
        else
            echo "pull-models: $model could not be pulled and is not in the store" >&2
            exit 1
        fi
    fi
done
docker-model list
