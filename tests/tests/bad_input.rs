//! Bad input to `clocher-pack`: one line naming the file and the problem, a non-zero exit, no
//! panic, and nothing left where the outputs would have gone.

use clocher_e2e::*;
use serde_json::json;
use std::path::{Path, PathBuf};

struct Case {
    work: tempfile::TempDir,
}

impl Case {
    /// A valid tiny HF folder to break.
    fn hf() -> (Case, PathBuf) {
        let work = tempfile::tempdir().unwrap();
        let hf = work.path().join("hf");
        TinyLlama::new(false, 9).write_hf(&hf, "F32");
        (Case { work }, hf)
    }

    fn empty() -> Case {
        Case {
            work: tempfile::tempdir().unwrap(),
        }
    }

    /// Packs `src`; asserts the failure contract and that `needles` all appear in the message.
    fn expect_error(&self, src: &Path, needles: &[&str]) {
        self.expect_error_with(src, &[], needles)
    }

    /// [`Case::expect_error`] with more `clocher-pack` flags.
    fn expect_error_with(&self, src: &Path, flags: &[&str], needles: &[&str]) {
        let (out_dir, crate_dir) = (self.work.path().join("out"), self.work.path().join("crate"));
        let mut args: Vec<&std::ffi::OsStr> = vec![
            src.as_os_str(),
            "--out-dir".as_ref(),
            out_dir.as_os_str(),
            "--crate-dir".as_ref(),
            crate_dir.as_os_str(),
        ];
        args.extend(flags.iter().map(std::ffi::OsStr::new));
        let out = pack(&args);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            !out.status.success(),
            "packing {} should fail; stderr: {err}",
            src.display()
        );
        assert_eq!(err.trim().lines().count(), 1, "one line expected: {err}");
        assert!(!err.contains("panicked"), "{err}");
        for n in needles {
            assert!(err.contains(n), "message lacks {n:?}: {err}");
        }
        assert!(
            out.stdout.is_empty(),
            "nothing on stdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            !out_dir.exists() && !crate_dir.exists(),
            "outputs left behind"
        );
        let leftovers: Vec<_> = std::fs::read_dir(self.work.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".partial"))
            .collect();
        assert!(
            leftovers.is_empty(),
            "temporary folders left behind: {leftovers:?}"
        );
    }
}

fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

/// Rewrites shard 2 of the tiny folder with `tensors` (name, dtype, shape, bytes) added.
fn rewrite_shard(hf: &Path, drop: &str, add: Vec<(&str, safetensors::Dtype, Vec<usize>, Vec<u8>)>) {
    let path = hf.join("model-00002-of-00002.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut views: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != drop)
        .collect();
    for (n, d, s, b) in &add {
        views.push((
            n.to_string(),
            safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
        ));
    }
    let out = safetensors::serialize(views, None).unwrap();
    std::fs::write(&path, out).unwrap();
}

#[test]
fn unsupported_architecture() {
    let (c, hf) = Case::hf();
    edit_json(&hf.join("config.json"), |v| {
        v["architectures"] = json!(["GPT2LMHeadModel"])
    });
    c.expect_error(
        &hf,
        &[
            "config.json",
            "unsupported architecture GPT2LMHeadModel",
            "LlamaForCausalLM",
        ],
    );
}

#[test]
fn missing_tensor() {
    let (c, hf) = Case::hf();
    rewrite_shard(&hf, "model.norm.weight", vec![]);
    c.expect_error(&hf, &["hf", "missing tensor model.norm.weight"]);
}

#[test]
fn extra_tensor() {
    let (c, hf) = Case::hf();
    rewrite_shard(
        &hf,
        "",
        vec![(
            "model.layers.0.self_attn.q_proj.bias",
            safetensors::Dtype::F32,
            vec![64],
            vec![0; 256],
        )],
    );
    c.expect_error(
        &hf,
        &[
            "model-00002-of-00002.safetensors",
            "unexpected tensor model.layers.0.self_attn.q_proj.bias",
        ],
    );
}

#[test]
fn wrong_shape() {
    let (c, hf) = Case::hf();
    edit_json(&hf.join("config.json"), |v| {
        v["intermediate_size"] = json!(100)
    });
    c.expect_error(
        &hf,
        &[
            "safetensors",
            "model.layers.0.mlp.gate_proj.weight",
            "[96, 64]",
            "[100, 64]",
        ],
    );
}

#[test]
fn unsupported_dtype() {
    let (c, hf) = Case::hf();
    rewrite_shard(
        &hf,
        "model.norm.weight",
        vec![(
            "model.norm.weight",
            safetensors::Dtype::F64,
            vec![64],
            vec![0; 512],
        )],
    );
    c.expect_error(
        &hf,
        &[
            "model-00002-of-00002.safetensors",
            "model.norm.weight",
            "unsupported dtype F64",
        ],
    );
}

#[test]
fn truncated_safetensors() {
    let (c, hf) = Case::hf();
    let shard = hf.join("model-00001-of-00002.safetensors");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() - 1000]).unwrap();
    c.expect_error(&hf, &["model-00001-of-00002.safetensors", "truncated"]);
}

#[test]
fn absurd_safetensors_header_length() {
    let (c, hf) = Case::hf();
    let shard = hf.join("model-00001-of-00002.safetensors");
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes[..8].copy_from_slice(&(u64::MAX / 3).to_le_bytes());
    std::fs::write(&shard, &bytes).unwrap();
    c.expect_error(&hf, &["model-00001-of-00002.safetensors", "safetensors"]);
}

#[test]
fn unreadable_tokenizer() {
    let (c, hf) = Case::hf();
    std::fs::write(hf.join("tokenizer.json"), "{\"model\": 42}").unwrap();
    c.expect_error(&hf, &["tokenizer.json", "unreadable tokenizer"]);
}

#[test]
fn missing_source() {
    let c = Case::empty();
    c.expect_error(
        &c.work.path().join("nope.gguf"),
        &["nope.gguf", "no such file"],
    );
}

/// A minimal GGUF v3 file: metadata `kv` and tensor infos `tensors` (name, dims, type, offset).
fn gguf(kv: &[(&str, u32, Vec<u8>)], tensors: &[(&str, &[u64], u32, u64)], data: &[u8]) -> Vec<u8> {
    let s = |x: &str| [&(x.len() as u64).to_le_bytes()[..], x.as_bytes()].concat();
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((kv.len() as u64).to_le_bytes());
    for (k, ty, v) in kv {
        b.extend(s(k));
        b.extend(ty.to_le_bytes());
        b.extend(v);
    }
    for (name, dims, ty, off) in tensors {
        b.extend(s(name));
        b.extend((dims.len() as u32).to_le_bytes());
        for d in *dims {
            b.extend(d.to_le_bytes());
        }
        b.extend(ty.to_le_bytes());
        b.extend(off.to_le_bytes());
    }
    while !b.len().is_multiple_of(32) {
        b.push(0);
    }
    b.extend(data);
    b
}

fn gstr(x: &str) -> Vec<u8> {
    [&(x.len() as u64).to_le_bytes()[..], x.as_bytes()].concat()
}

fn write(c: &Case, name: &str, bytes: &[u8]) -> PathBuf {
    let p = c.work.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn gguf_bad_headers() {
    let c = Case::empty();
    let arch = |a: &str| ("general.architecture", 8u32, gstr(a));
    let f = write(&c, "magic.gguf", b"GGML\x03\0\0\0");
    c.expect_error(&f, &["magic.gguf", "not a GGUF file"]);

    let mut v1 = gguf(&[], &[], &[]);
    v1[4] = 1;
    let f = write(&c, "v1.gguf", &v1);
    c.expect_error(&f, &["v1.gguf", "version 1"]);

    let mut huge = gguf(&[], &[], &[]);
    huge[8..16].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let f = write(&c, "count.gguf", &huge);
    c.expect_error(&f, &["count.gguf", "tensor count"]);

    // A string whose length runs past the file.
    let mut long = gguf(&[arch("llama")], &[], &[]);
    long[24..32].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let f = write(&c, "strlen.gguf", &long);
    c.expect_error(&f, &["strlen.gguf", "string length"]);

    // An array whose count runs past the file.
    let arr = [&8u32.to_le_bytes()[..], &(u64::MAX / 2).to_le_bytes()].concat();
    let f = write(
        &c,
        "array.gguf",
        &gguf(&[("tokenizer.ggml.tokens", 9, arr)], &[], &[]),
    );
    c.expect_error(&f, &["array.gguf", "array length"]);

    let full = gguf(&[arch("llama")], &[], &[]);
    let f = write(&c, "truncated.gguf", &full[..full.len() - 20]);
    c.expect_error(&f, &["truncated.gguf", "truncated"]);

    let f = write(&c, "arch.gguf", &gguf(&[arch("gpt2")], &[], &[]));
    c.expect_error(&f, &["arch.gguf", "unsupported architecture gpt2", "llama"]);
}

#[test]
fn gguf_bad_tensors() {
    let c = Case::empty();
    let u32v = |v: u32| v.to_le_bytes().to_vec();
    let f32v = |v: f32| v.to_le_bytes().to_vec();
    let toks = [
        &8u32.to_le_bytes()[..],
        &2u64.to_le_bytes(),
        &gstr("a"),
        &gstr("b"),
    ]
    .concat();
    let kv = vec![
        ("general.architecture", 8u32, gstr("llama")),
        ("llama.embedding_length", 4, u32v(64)),
        ("llama.attention.head_count", 4, u32v(4)),
        ("llama.feed_forward_length", 4, u32v(96)),
        ("llama.block_count", 4, u32v(1)),
        ("llama.context_length", 4, u32v(32)),
        ("llama.attention.layer_norm_rms_epsilon", 6, f32v(1e-5)),
        ("tokenizer.ggml.model", 8, gstr("gpt2")),
        ("tokenizer.ggml.tokens", 9, toks),
    ];
    let f = write(
        &c,
        "past.gguf",
        &gguf(&kv, &[("token_embd.weight", &[64, 2], 0, 0)], &[0; 100]),
    );
    c.expect_error(&f, &["past.gguf", "token_embd.weight", "past the end"]);
    let f = write(
        &c,
        "type.gguf",
        &gguf(&kv, &[("token_embd.weight", &[64, 2], 77, 0)], &[0; 512]),
    );
    c.expect_error(&f, &["type.gguf", "unknown tensor type id 77"]);
    let f = write(
        &c,
        "blocks.gguf",
        &gguf(&kv, &[("token_embd.weight", &[40, 2], 8, 0)], &[0; 512]),
    );
    c.expect_error(&f, &["blocks.gguf", "don't divide into 32-element blocks"]);
    let f = write(
        &c,
        "native.gguf",
        &gguf(&kv, &[("token_embd.weight", &[256, 2], 10, 0)], &[0; 512]),
    );
    c.expect_error(&f, &["native.gguf", "tensor type Q2_K is not supported"]);
}

/// Bad `q4_manifest.json` files: one line naming the manifest and the problem, nothing written.
#[test]
fn bad_manifests() {
    let (c, hf) = Case::hf();
    let m = c.work.path().join("q4_manifest.json");
    let write_manifest = |tensors: serde_json::Value| {
        let v = json!({"format": "clocher-q4-manifest", "version": 1, "tensors": tensors});
        std::fs::write(&m, v.to_string()).unwrap();
    };
    let flags = ["--precision", "int4w", "--q4-map", m.to_str().unwrap()];
    let ms = m.to_str().unwrap();

    write_manifest(json!({"model.layers.7.mlp.up_proj.weight": {"bits": 4}}));
    c.expect_error_with(
        &hf,
        &flags,
        &[ms, "no tensor model.layers.7.mlp.up_proj.weight"],
    );

    // down_proj rows hold 96 weights.
    write_manifest(json!({"model.layers.0.mlp.down_proj.weight": {"bits": 4, "group_size": 64}}));
    c.expect_error_with(
        &hf,
        &flags,
        &[ms, "down_proj", "does not divide the row of 96"],
    );

    write_manifest(json!({"model.layers.0.mlp.up_proj.weight": {"bits": 5}}));
    c.expect_error_with(&hf, &flags, &[ms, "up_proj", "5 bits"]);

    write_manifest(json!({"model.layers.0.mlp.up_proj.weight": {"bits": 8, "group_size": 32}}));
    c.expect_error_with(&hf, &flags, &[ms, "int8 takes group size row or tensor"]);

    write_manifest(json!({"model.layers.0.input_layernorm.weight": {"bits": 8}}));
    c.expect_error_with(&hf, &flags, &[ms, "norm weight"]);

    write_manifest(json!({"model.layers.0.mlp.up_proj.weight": {"bits": 4, "clip": "median"}}));
    c.expect_error_with(&hf, &flags, &[ms, "parsing the manifest"]);

    std::fs::write(&m, "{\"format\": \"clocher-q4-manifest\", \"tensors\": [").unwrap();
    c.expect_error_with(&hf, &flags, &[ms, "parsing the manifest"]);

    std::fs::write(
        &m,
        json!({"format": "something-else", "version": 1, "tensors": {}}).to_string(),
    )
    .unwrap();
    c.expect_error_with(&hf, &flags, &[ms, "something-else"]);

    write_manifest(json!({}));
    c.expect_error_with(
        &hf,
        &["--precision", "fp32", "--q4-map", ms],
        &[ms, "needs --precision int8w or int4w"],
    );
    let missing = c.work.path().join("absent.json");
    c.expect_error_with(
        &hf,
        &[
            "--precision",
            "int4w",
            "--q4-map",
            missing.to_str().unwrap(),
        ],
        &["absent.json", "reading the manifest"],
    );
}

/// `ptq` with bad arguments: one line, non-zero exit, no manifest.
#[test]
fn bad_ptq_arguments() {
    let (c, hf) = Case::hf();
    let out_file = c.work.path().join("quant/q4_manifest.json");
    for (flags, needle) in [
        (vec!["--bits", "5"], "--bits 5 is neither 4 nor 8"),
        (vec!["--group-size", "48"], "multiple of 32"),
        (
            vec!["--bits", "8", "--group-size", "64"],
            "int8 takes group size row or tensor",
        ),
        (vec!["--scheme", "nf4"], "--scheme nf4"),
        (vec!["--clip", "percentile:30"], "outside (50, 100]"),
        (vec!["--gate-cosine", "1.5"], "--gate-cosine"),
        (
            vec!["--calib", "/nonexistent/calib.txt"],
            "calibration text",
        ),
    ] {
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "ptq".as_ref(),
            hf.as_os_str(),
            "--out".as_ref(),
            out_file.as_os_str(),
        ];
        args.extend(flags.iter().map(std::ffi::OsStr::new));
        let out = pack(&args);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "{flags:?} should fail");
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{flags:?}: one line expected: {err}"
        );
        assert!(
            err.contains(needle),
            "{flags:?}: message lacks {needle:?}: {err}"
        );
        assert!(!out_file.exists(), "{flags:?}: a manifest was written");
    }
}
