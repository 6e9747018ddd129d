#!/usr/bin/env python3
"""Re-quantize a llama GGUF into a file that mixes block formats per tensor and per layer.

    make_mixed_gguf.py SRC.gguf DST.gguf [TYPE]

Every linear weight is dequantized exactly and quantized again with the `gguf` package, cycling
through Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 by layer and tensor; ffn_down of layers 0 and 1 become
TQ2_0 and TQ1_0 (their rows of 1536 divide into 256-blocks). The embedding is Q8_0, norms F32.
Metadata (tokenizer, chat template, hyper-parameters) is copied as is. With TYPE (e.g. Q5_0),
every linear weight and the embedding use that one format instead (for per-format benchmarks).
"""
import sys

import numpy as np
from gguf import GGMLQuantizationType as Q, GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import dequantize, quantize

KINDS = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]
CYCLE = [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0]


def plan(name, uniform=None):
    if uniform is not None:
        parts = name.split(".")
        return uniform if name == "token_embd.weight" or (len(parts) > 2 and parts[2] in KINDS) else Q.F32
    if name == "token_embd.weight":
        return Q.Q8_0
    parts = name.split(".")
    if parts[0] != "blk" or parts[2] not in KINDS:
        return Q.F32
    layer, kind = int(parts[1]), KINDS.index(parts[2])
    if parts[2] == "ffn_down" and layer in (0, 1):
        return Q.TQ2_0 if layer == 0 else Q.TQ1_0
    return CYCLE[(layer + kind) % len(CYCLE)]


def main():
    src, dst = sys.argv[1], sys.argv[2]
    uniform = getattr(Q, sys.argv[3]) if len(sys.argv) > 3 else None
    r = GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    w = GGUFWriter(dst, arch)
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == GGUFValueType.ARRAY else None
        w.add_key_value(f.name, f.contents(), vtype, sub_type=sub)
    for t in r.tensors:
        data = dequantize(t.data, t.tensor_type).astype(np.float32)
        qt = plan(t.name, uniform)
        if qt == Q.F32:
            w.add_tensor(t.name, data)
        else:
            w.add_tensor(t.name, quantize(data, qt), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
