#!/usr/bin/env python3
"""Train a small SentencePiece BPE tokenizer (as Llama's: byte fallback, dummy prefix, no
whitespace folding), store it in the metadata of a llama GGUF the way llama.cpp's converter
does, and record SentencePiece's own encodings of sample texts as the oracle.

    make_spm_gguf.py CORPUS.txt OUT.gguf OUT.json

Needs: sentencepiece, gguf, numpy. The GGUF holds metadata only (no tensors).
"""
import io, json, sys

import sentencepiece as spm
from gguf import GGUFWriter

SAMPLES = [
    "Hello world",
    "  two leading spaces and  double  spaces inside",
    "The GNU General Public License is a free, copyleft license.",
    "naïve café — 東京 🙂 <0x41> ok",
    "line one\nline two\n\ttabbed",
    "1234567890 + 3.14159 = ?",
]


def main():
    corpus, out_gguf, out_json = sys.argv[1:4]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        input=corpus, model_writer=model, vocab_size=600, model_type="bpe", byte_fallback=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True,
        split_digits=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
        allow_whitespace_only_pieces=True,
    )
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    n = sp.get_piece_size()
    tokens, scores, types = [], [], []
    for i in range(n):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        # llama.cpp's token types: 1 normal, 2 unknown, 3 control, 6 byte.
        types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 1)
    w = GGUFWriter(out_gguf, "llama")
    for k, v in [("embedding_length", 64), ("attention.head_count", 4), ("feed_forward_length", 96),
                 ("block_count", 1), ("context_length", 64)]:
        w.add_uint32(f"llama.{k}", v)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_space_prefix(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    cases = [{"text": t, "ids": [1] + sp.encode(t), "decoded": sp.decode(sp.encode(t))} for t in SAMPLES]
    with open(corpus, encoding="utf-8") as f:
        lines = [l.rstrip("\n") for l in f if l.strip()][:200]
    cases += [{"text": t, "ids": [1] + sp.encode(t), "decoded": sp.decode(sp.encode(t))} for t in lines]
    with open(out_json, "w") as f:
        json.dump({"vocab_size": n, "cases": cases}, f, ensure_ascii=False)


if __name__ == "__main__":
    main()
