#!/usr/bin/env bash
# Usage: sweep.sh MODEL_DIR OUT_DIR [lwm eval options]   (see README.md here)
set -euo pipefail
model=$(realpath "$1"); out=$2; shift 2
here=$(dirname "$(realpath "$0")")
for candidate in "$here"/*.json; do
  name=$(basename "$candidate" .json)
  folder="$out/models/$name"
  mkdir -p "$folder"
  for item in "$model"/*; do [ "$(basename "$item")" = drawing_config.json ] || ln -sfn "$item" "$folder/"; done
  cp "$candidate" "$folder/drawing_config.json"
  lwm eval --model "$folder" --out "$out/$name" --tasks text_to_image text_to_video continuation \
    --seeds 20 --first-seed 50000 --no-ring "$@"
done
