//! GGUF tokenizer metadata turned into a Hugging Face tokenizer: a SentencePiece (`llama`) BPE
//! vocabulary trained by `tests/scripts/make_spm_gguf.py` must encode like SentencePiece itself.

use clocher_e2e::*;

#[test]
fn llama_sentencepiece_gguf_tokenizes_like_sentencepiece() {
    let work = tempfile::tempdir().unwrap();
    let (gguf, oracle) = (work.path().join("spm.gguf"), work.path().join("spm.json"));
    let python = python_with(&["sentencepiece"]);
    let out = std::process::Command::new(python)
        .arg(root().join("tests/scripts/make_spm_gguf.py"))
        .arg(shared().join("fixtures/text/gpl-3.txt"))
        .args([&gguf, &oracle])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "make_spm_gguf.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let ck = clocher_pack::open(&gguf).expect("the GGUF opens");
    assert!(ck.tokenizer.add_bos);
    // The loader the model binaries run, checked against `tokenizers`' own first.
    let tok = assert_same_tokenizer(ck.tokenizer_json.as_bytes(), &["Hello world", " a\tb\n"]);
    let oracle: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&oracle).unwrap()).unwrap();
    let cases = oracle["cases"].as_array().unwrap();
    assert!(cases.len() > 100);
    let mut fails = vec![];
    for (i, c) in cases.iter().enumerate() {
        let text = c["text"].as_str().unwrap();
        let want: Vec<u32> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let got = tok.encode(text, true).unwrap().get_ids().to_vec();
        if got != want {
            fails.push(format!(
                "case {i} {text:?}: expected {want:?}, actual {got:?}"
            ));
            continue;
        }
        let decoded = tok.decode(&got, true).unwrap();
        if decoded != c["decoded"].as_str().unwrap() {
            fails.push(format!(
                "case {i} {text:?}: decodes to {decoded:?}, expected {:?}",
                c["decoded"]
            ));
        }
    }
    assert!(
        fails.is_empty(),
        "{} of {} cases differ:\n{}",
        fails.len(),
        cases.len(),
        fails.join("\n")
    );
}
