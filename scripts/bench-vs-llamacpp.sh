#!/usr/bin/env bash
# Clocher and llama.cpp side by side, in one run, on the same machine: same GGUF weights, same
# prompt, same token counts, same threads. Prints each side and the ratio for every pair: decode
# and prefill tok/s, then time to first token including load, from fresh processes (ratio:
# llama.cpp's time over Clocher's, so above 1 is Clocher faster).
#
#   scripts/bench-vs-llamacpp.sh
#   PAIRS="q4_1:gguf q4_0:int4w" THREADS=2 MAX_NEW=128 RUNS=3 scripts/bench-vs-llamacpp.sh
#
# A pair LLAMA:CLOCHER names the GGUF type llama.cpp runs (q4_1 is the shipped SmolLM2 file;
# q4_k_m is made by llama.cpp's quantizer from the F32 one; the others are re-quantized from it
# with tests/scripts/make_mixed_gguf.py) and the Clocher
# precision packed from the same weights (gguf: the very file llama.cpp runs). llama.cpp comes
# from the llama-cpp-python package, built from source once into models/.cache/bench-venv.
# Set MERGE=docs/PERFORMANCE.md to also put each Clocher summary into that table. Quantized
# precisions run twice: as the binary does by default (marked "*": 8-bit activations, "i8",
# except int8w, whose default keeps them to the head, "f32, head i8"; ADRs 16 and 20), then
# the other way (IE_ACT8=0, or IE_ACT8=1 for int8w).
set -euo pipefail
cd "$(dirname "$0")/.."
PAIRS=${PAIRS:-"q4_1:gguf q8_0:gguf q4_k_m:gguf q8_0:int8w q4_0:int4w f32:fp32 bf16:bf16"}
THREADS=${THREADS:-2}
MAX_NEW=${MAX_NEW:-128}
RUNS=${RUNS:-3}
PROMPT=${PROMPT:-"The history of computing is a story of people trying to make machines do"}
# Time to first token, including load, is taken on its own prompt: 16 tokens for SmolLM2.
TTFT_PROMPT=${TTFT_PROMPT:-"The history of computing is a story of people trying to make machines do our work"}
CACHE=models/.cache
VENV=$CACHE/bench-venv
WORK=$CACHE/bench
mkdir -p "$WORK"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target/e2e}

SRC=$(scripts/fetch-model.sh)
if ! "$VENV/bin/python" -c "import llama_cpp, gguf, numpy" 2>/dev/null; then
  echo "installing llama-cpp-python (builds llama.cpp from source; once)..." >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
  CMAKE_ARGS="-DGGML_NATIVE=ON" "$VENV/bin/pip" install --quiet "llama-cpp-python==0.3.36" gguf numpy
fi
cargo build --release --quiet -p clocher-pack
PACK=$CARGO_TARGET_DIR/release/clocher-pack
printf '%s\n' "$PROMPT" > "$WORK/prompts.txt"

gguf_of() { # TYPE -> path of SmolLM2 with every linear weight and the embedding in TYPE
  local t=$1 out="$WORK/smollm2-$1.gguf"
  if [ "$t" = q4_1 ]; then echo "$SRC"; return; fi
  if [ "$t" = q4_k_m ] && [ ! -s "$out" ]; then
    # llama.cpp's own quantizer (llama-quantize's Q4_K_M mix: Q4_K, Q6_K for some tensors)
    # from the F32 file; the gguf package can't write K-quants.
    "$VENV/bin/python" - "$(gguf_of f32)" "$out.part" >&2 <<'PY'
import ctypes, sys
import llama_cpp
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
p.nthread = 2
assert llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)) == 0
PY
    mv "$out.part" "$out"
  fi
  if [ ! -s "$out" ]; then
    "$VENV/bin/python" tests/scripts/make_mixed_gguf.py "$SRC" "$out.part" "${t^^}" >&2
    mv "$out.part" "$out"
  fi
  echo "$out"
}

llama_bench() { # GGUF -> one JSON line: median pp and tg tok/s over RUNS
  "$VENV/bin/python" - "$1" "$PROMPT" "$MAX_NEW" "$THREADS" "$RUNS" <<'PY'
import json, statistics, sys, time
import numpy as np
from llama_cpp import Llama
path, prompt, n_new, threads, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
n_ctx = max(512, -(-(n_new + 64) // 256) * 256)  # room for the prompt and MAX_NEW tokens
# n_batch = n_ctx: llama-cpp-python keeps the last logits in a row per position up to n_batch.
llm = Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=n_ctx, n_batch=n_ctx, verbose=False)
toks = llm.tokenize(prompt.encode(), add_bos=True)
pp, tg = [], []
for _ in range(runs):
    llm.reset()
    llm._ctx.kv_cache_clear()
    t0 = time.perf_counter()
    llm.eval(toks)
    t1 = time.perf_counter()
    tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    t2 = time.perf_counter()
    for _ in range(n_new - 1):  # greedy, end-of-sequence ignored, as Clocher's bench does
        llm.eval([tok])
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    t3 = time.perf_counter()
    pp.append(len(toks) / (t1 - t0))
    tg.append((n_new - 1) / (t3 - t2))
print(json.dumps({"prompt_tokens": len(toks), "pp": pp, "tg": tg}))
PY
}

llama_ttft() { # GGUF -> one JSON line: one fresh load, prompt and first token, timed in-process
  "$VENV/bin/python" - "$1" "$TTFT_PROMPT" "$THREADS" <<'PY'
import json, sys, time
import numpy as np
from llama_cpp import Llama
path, prompt, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
t0 = time.perf_counter()  # after the interpreter and the import, which Clocher has no match for
llm = Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=512, n_batch=512, verbose=False)
toks = llm.tokenize(prompt.encode(), add_bos=True)
t1 = time.perf_counter()
llm.eval(toks)
int(np.argmax(llm.scores[llm.n_tokens - 1]))
t2 = time.perf_counter()
print(json.dumps({"prompt_tokens": len(toks), "load_ms": (t1 - t0) * 1e3, "ms": (t2 - t0) * 1e3}))
PY
}

clocher_ttft() { # BINARY -> one JSON line, as llama_ttft's: the binary's own load and first token
  # The output is parsed after the binary has exited: a parser started beside it in a pipe
  # took one of the two cores from its prefill (40-100 ms instead of 20).
  local out
  out=$("$1" --prompt "$TTFT_PROMPT" --max-new 1 --threads "$THREADS")
  tail -n 1 <<< "$out" | python3 -c '
import json, sys
d = json.loads(sys.stdin.read())
print(json.dumps({"prompt_tokens": d["prompt_tokens"], "load_ms": d["load_time_ms"], "ms": d["load_time_ms"] + d["ttft_ms"]}))'
}

clocher_build() { # GGUF PRECISION -> the binary
  local name="bench-$2-$(basename "$1" .gguf | tr 'A-Z_.' 'a-z--')"
  local crate
  crate=$("$PACK" "$1" --precision "$2" --name "$name" --out-dir "$WORK/$name" --crate-dir "$WORK/$name-crate" 2>/dev/null | tail -n 1)
  cargo build --release --quiet --manifest-path "$crate/Cargo.toml"
  echo "$CARGO_TARGET_DIR/release/$name"
}

clocher_bench() { # BINARY MODE (default: IE_ACT8 unset, else its value) -> the summary JSON line
  local act8=$2; [ "$act8" = default ] && act8=
  IE_ACT8=$act8 "$1" bench --prompts "$WORK/prompts.txt" --runs "$RUNS" \
    --max-new "$MAX_NEW" --threads "$THREADS" ${MERGE:+--merge "$MERGE"} | tail -n 1
}

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $THREADS threads, prompt of $(wc -w <<< "$PROMPT") words, $MAX_NEW new tokens, median of $RUNS runs (llama.cpp: of $RUNS before and $RUNS after each Clocher binary)"
printf '%-14s %-22s %10s %10s %10s %10s %8s %8s\n' pair clocher-kernels "llama tg" "clocher tg" "llama pp" "clocher pp" "tg ratio" "pp ratio"
ttft=()
for pair in $PAIRS; do
  ltype=${pair%%:*}; prec=${pair##*:}
  file=$(gguf_of "$ltype")
  # For gguf the Clocher side runs the very file; the other precisions are packed from the
  # shipped weights, as a user would quantize them.
  csrc=$file; [ "$prec" != gguf ] && csrc=$SRC
  bin=$(clocher_build "$csrc" "$prec")
  # The binary's default, then the other path: f32 activations where the default is 8-bit,
  # 8-bit everywhere for int8w (whose default keeps them to its head, ADR 20).
  acts="default"; case $prec in int4w|gguf) acts="default 0" ;; int8w) acts="default 1" ;; esac
  # llama.cpp runs before and after Clocher's runs and its figure is the median of both sets,
  # so a drift of this noisy host during the pair moves both sides alike.
  l=$(llama_bench "$file")
  cs=()
  for act8 in $acts; do cs+=("$act8 $(clocher_bench "$bin" "$act8")"); done
  l2=$(llama_bench "$file")
  # Time to first token: RUNS fresh processes a side, alternating.
  tt=()
  for _ in $(seq "$RUNS"); do tt+=("$(llama_ttft "$file")" "$(clocher_ttft "$bin")"); done
  ttft+=("$(python3 - "$pair" "${tt[@]}" <<'PY'
import json, statistics, sys
pair, runs = sys.argv[1], [json.loads(a) for a in sys.argv[2:]]
med = lambda side, k: statistics.median(r[k] for r in runs[side::2])
l, c = med(0, "ms"), med(1, "ms")
print(f'{pair:<14} {l:10.1f} {c:10.1f} {med(0, "load_ms"):10.1f} {med(1, "load_ms"):10.1f} {l / c:7.2f}x   '
      f'(prompt tokens: llama.cpp {runs[0]["prompt_tokens"]}, clocher {runs[1]["prompt_tokens"]})')
PY
)")
  for mc in "${cs[@]}"; do
    python3 - "$pair" "$l" "$l2" "${mc#* }" "${mc%% *}" <<'PY'
import json, statistics, sys
pair, l1, l2, c = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4])
mode = sys.argv[5]
l = {k: statistics.median(l1[k] + l2[k]) for k in ("pp", "tg")}
l = {"pp_tps": l["pp"], "tg_tps": l["tg"]}
ctg, cpp = c["tg_tps"]["median"], c["pp_tps"]["median"]
kern = f'{c["isa"]}, {c["activations"]}' + (" *" if mode == "default" else "")
print(f'{pair:<14} {kern:<22} {l["tg_tps"]:10.1f} {ctg:10.1f} {l["pp_tps"]:10.1f} {cpp:10.1f} {ctg / l["tg_tps"]:7.2f}x {cpp / l["pp_tps"]:7.2f}x'
      f'   (clocher: {c["bandwidth_fraction"] * 100:.0f}% of {c["read_gbps"]:.1f} GB/s, RSS {c["rss_peak_mb"]:.0f} MB)')
PY
  done
done
echo
echo "time to first token, including load (ms; median of $RUNS fresh processes a side, alternating; \"$TTFT_PROMPT\")"
printf '%-14s %10s %10s %10s %10s %8s\n' pair "llama" "clocher" "llama load" "clo. load" "ratio"
printf '%s\n' "${ttft[@]}"
