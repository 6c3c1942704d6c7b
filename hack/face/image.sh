# Sourced by the image builds (hack/cluster/images.sh, hack/kind/kind.sh): the face processor's
# models that the worker image carries (docs/worker.md), from $QWP_FACE_MODELS (default
# .cache/face/models, fetched by hack/face/fetch.sh when missing).
FACE_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
FACE_MODELS="${QWP_FACE_MODELS:-$FACE_REPO_ROOT/.cache/face/models}"
FACE_MODEL_DIR_IN_IMAGE=/usr/local/share/qwp/face-models

face_model_args() { # appends --add/--env options for build-image.sh to the caller's `extra`
  if [[ -z ${QWP_FACE_MODELS:-} ]]; then "$FACE_REPO_ROOT/hack/face/fetch.sh" models; fi
  local f
  for f in fr_detect.onnx fr_landmark.onnx fr_feature.onnx LICENSE; do
    if [[ ! -f $FACE_MODELS/$f ]]; then
      echo "face model $FACE_MODELS/$f is missing: run make face-models (or fix QWP_FACE_MODELS)" >&2
      return 1
    fi
    extra+=(--add "$FACE_MODELS/$f:$FACE_MODEL_DIR_IN_IMAGE/$f")
  done
  extra+=(--env "WORKER_FACE_MODEL_DIR=$FACE_MODEL_DIR_IN_IMAGE")
}

face_models_digest() { sha256sum "$FACE_MODELS"/*.onnx | sha256sum | cut -c1-16; }
