#!/usr/bin/env bash
# Serve an exported SavedModel with TensorFlow Serving in Docker (REST API on PORT).
#
# Every setting is an environment variable with a default; see usage() below or --help.
# Needs Docker; GPU=1 also needs the NVIDIA Container Toolkit.
set -euo pipefail

MODEL_NAME="${MODEL_NAME:-product_classifier}"
PORT="${PORT:-8501}"
HOST="${HOST:-127.0.0.1}"
GPU="${GPU:-0}"
IMAGE="${IMAGE:-tensorflow/serving}"
TAG="${TAG:-}"
CONTAINER_NAME="${CONTAINER_NAME:-tf-serving-$MODEL_NAME}"

usage() {
    cat <<USAGE
Usage: deploy/scripts/tf_serving.sh FOLDER [--help]

FOLDER is a run folder, its export/ folder, or export/saved_model itself (the base
path that holds the version folder 1/). 'make export RUN=...' writes it. The script
starts TensorFlow Serving in a detached container that mounts the SavedModel as
/models/\$MODEL_NAME, and prints the curl command that calls :predict.

Settings (environment variables, current value in brackets):
  MODEL_NAME      model name in the URL [$MODEL_NAME]
  PORT            REST port on this machine [$PORT]
  HOST            address the port is published on; 0.0.0.0 opens it to the network [$HOST]
  GPU             1 runs the GPU image with all GPUs [$GPU]
  IMAGE, TAG      Docker image and tag; the tag defaults to latest, or latest-gpu
                  with GPU=1 [$IMAGE:${TAG:-latest}]
  CONTAINER_NAME  container name, for 'docker logs' and 'docker stop' [$CONTAINER_NAME]
USAGE
}

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    usage
    exit 0
fi
if [[ $# -ne 1 ]]; then
    echo "tf_serving.sh: expected one FOLDER argument, received $#; see --help" >&2
    exit 2
fi
if ! command -v docker >/dev/null 2>&1; then
    echo "tf_serving.sh: docker not found on PATH; install Docker" \
        "(https://docs.docker.com/engine/install/) and start its daemon" >&2
    exit 127
fi

# 1. Find the SavedModel base path; Docker needs it as an absolute path.
folder="$1"
for candidate in "$folder/export/saved_model" "$folder/saved_model" "$folder"; do
    if [[ -f "$candidate/1/saved_model.pb" ]]; then
        base_path="$(cd "$candidate" && pwd)"
        break
    fi
done
if [[ -z "${base_path:-}" ]]; then
    echo "tf_serving.sh: no SavedModel (1/saved_model.pb) under $folder; run" \
        "'make export RUN=<run folder>' first and pass the run folder" >&2
    exit 1
fi

# 2. Pick the image: the -gpu tag has the CUDA libraries and needs --gpus.
docker_flags=()
if [[ "$GPU" == "1" ]]; then
    TAG="${TAG:-latest-gpu}"
    docker_flags+=(--gpus all)
else
    TAG="${TAG:-latest}"
fi

# 3. Start the server. Port 8501 in the container is the REST API, and the model base
#    path is mounted read-only at /models/$MODEL_NAME, where TensorFlow Serving loads it.
#    ${docker_flags[@]+...} expands an empty array to nothing also under set -u in
#    bash 3.2, the bash of macOS.
docker run --detach --rm --name "$CONTAINER_NAME" \
    --publish "$HOST:$PORT:8501" \
    --mount "type=bind,source=$base_path,target=/models/$MODEL_NAME,readonly" \
    --env "MODEL_NAME=$MODEL_NAME" \
    ${docker_flags[@]+"${docker_flags[@]}"} \
    "$IMAGE:$TAG"

# 4. How to call it: the signature takes base64 image bytes under the input image_bytes.
cat <<NEXT

tf_serving.sh: TensorFlow Serving runs in container $CONTAINER_NAME with $base_path.
Model status:  curl -s http://$HOST:$PORT/v1/models/$MODEL_NAME
Classify a JPEG (any JPEG, PNG, WebP, GIF or BMP file works the same way):
  printf '{"instances": [{"image_bytes": {"b64": "%s"}}]}' "\$(base64 -w0 photo.jpg)" > request.json
  curl -s http://$HOST:$PORT/v1/models/$MODEL_NAME:predict -H 'Content-Type: application/json' -d @request.json
Logs: docker logs -f $CONTAINER_NAME    Stop: docker stop $CONTAINER_NAME
NEXT
