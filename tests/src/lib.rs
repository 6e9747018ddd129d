//! Helpers for the end-to-end tests: run `clocher-pack`, build generated crates in one shared
//! target directory, run their binaries, and write a tiny random Llama with an f64 oracle.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The clocher checkout.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// One target directory for `clocher-pack` and every generated crate the tests build, so the
/// engine and its dependencies compile once.
pub fn e2e_target() -> PathBuf {
    std::env::var_os("CLOCHER_E2E_TARGET")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/e2e"))
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.env("CARGO_TARGET_DIR", e2e_target());
    c
}

fn check(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The shared fixtures folder (`../shared`, or `CLOCHER_SHARED`).
pub fn shared() -> PathBuf {
    std::env::var_os("CLOCHER_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared"))
}

/// (GGUF file, HF folder), fetched once by the shared script into models/.cache (git-ignored).
pub fn smollm2() -> &'static (PathBuf, PathBuf) {
    static PATHS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    PATHS.get_or_init(|| {
        let dest = root().join("models/.cache/smollm2");
        let out = std::process::Command::new("bash")
            .arg(shared().join("tools/fetch-smollm2.sh"))
            .arg(&dest)
            .output()
            .expect("running fetch-smollm2.sh");
        assert!(
            out.status.success(),
            "fetch-smollm2.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = stdout.lines().collect();
        let [gguf, hf] = lines[lines.len() - 2..] else {
            panic!("fetch-smollm2.sh printed {stdout}")
        };
        (PathBuf::from(gguf), PathBuf::from(hf))
    })
}

/// The Python of the venv the fetch script made (numpy, gguf, safetensors), with `extra`
/// packages installed into it too.
pub fn python_with(extra: &[&str]) -> PathBuf {
    let python = smollm2().0.parent().unwrap().join(".venv/bin/python");
    if !extra.is_empty() {
        let out = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet"])
            .args(extra)
            .output()
            .expect("running pip");
        check(&out, &format!("pip install {extra:?}"));
    }
    python
}

/// The `clocher-pack` binary, built once per test process.
pub fn pack_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = cargo()
            .args([
                "build",
                "--release",
                "--quiet",
                "-p",
                "clocher-pack",
                "--manifest-path",
            ])
            .arg(root().join("Cargo.toml"))
            .output()
            .expect("running cargo");
        check(&out, "building clocher-pack");
        e2e_target().join("release/clocher-pack")
    })
}

/// Runs `clocher-pack` with `args`.
pub fn pack(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(pack_bin())
        .args(args)
        .output()
        .expect("running clocher-pack")
}

/// Packs `src` into `work/<name>` (IEBIN) and `work/<name>-crate`, returning the crate path
/// that clocher-pack printed last.
pub fn pack_ok(src: &Path, work: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let out_dir = work.join(name);
    let crate_dir = work.join(format!("{name}-crate"));
    let mut args: Vec<&std::ffi::OsStr> = vec![src.as_os_str(), "--name".as_ref(), name.as_ref()];
    args.extend([
        "--out-dir".as_ref(),
        out_dir.as_os_str(),
        "--crate-dir".as_ref(),
        crate_dir.as_os_str(),
    ]);
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    let out = pack(&args);
    check(&out, &format!("clocher-pack {}", src.display()));
    let stdout = String::from_utf8(out.stdout).unwrap();
    PathBuf::from(
        stdout
            .lines()
            .last()
            .expect("clocher-pack printed the crate path"),
    )
}

/// `cargo build --release` of a generated crate in the shared target dir; returns the binary.
pub fn build_crate(crate_dir: &Path, name: &str) -> PathBuf {
    let out = cargo()
        .args(["build", "--release", "--quiet", "--manifest-path"])
        .arg(crate_dir.join("Cargo.toml"))
        .output()
        .expect("running cargo");
    check(&out, &format!("building {}", crate_dir.display()));
    e2e_target().join("release").join(name)
}

/// The environment of [`run`]: f32 activations and an f32 KV cache.
pub const EXACT: [(&str, &str); 2] = [("IE_ACT8", "0"), ("IE_KV_TYPE", "f32")];

/// Runs a model binary with f32 activations (`IE_ACT8=0`) and an f32 KV cache
/// (`IE_KV_TYPE=f32`; the quantized precisions keep f16 by default, ADR 36), so its results are
/// exact against the stored weights, which is what the oracle and reference comparisons check;
/// tests of the 8-bit activation path and the f16 cache use [`run_env`]. Returns its output.
pub fn run(bin: &Path, args: &[&str]) -> Output {
    run_env(bin, args, &EXACT)
}

/// Runs a model binary with `env` set; returns its output. Runs are serialized within a test
/// process so concurrent tests don't oversubscribe the cores.
pub fn run_env(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    Command::new(bin)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("running the model binary")
}

/// Runs a model binary that must succeed (f32 activations and KV cache, as [`run`]); returns
/// its one JSON line.
pub fn run_json(bin: &Path, args: &[&str]) -> Value {
    run_json_env(bin, args, &EXACT)
}

/// [`run_json`] with `env` set.
pub fn run_json_env(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> Value {
    let out = run_env(bin, args, env);
    check(&out, &format!("{} {args:?}", bin.display()));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout.lines().count(),
        1,
        "stdout must be exactly one JSON line: {stdout}"
    );
    serde_json::from_str(&stdout).expect("stdout is JSON")
}

/// The model binaries' tokenizer loader (`runtime::text`) must give the same tokenizer as
/// `tokenizers`' own, from the document (`load_tokenizer`) and from the packer's digest
/// (`TokenDigest`, which a BPE model must have): the same serialization (vocabulary, merges,
/// added tokens, every component), and the same ids for `texts`. The tokenizers built for
/// `texts` (`finish_for`), from the document and from the digest, on each text, must give the
/// same ids for them, and decode as `tokenizers` does: each text's ids, and every id of the
/// vocabulary and one past it. Returns the fast-loaded tokenizer.
pub fn assert_same_tokenizer(json: &[u8], texts: &[&str]) -> tokenizers::Tokenizer {
    use clocher_engine::format::TokenDigest;
    use clocher_engine::runtime::text::{load_tokenizer, TokenizerLoad};
    let digest = TokenDigest::encode(std::str::from_utf8(json).unwrap()).unwrap_or_default();
    let bpe = serde_json::from_slice::<Value>(json).unwrap()["model"]["type"] == "BPE";
    assert_eq!(!digest.is_empty(), bpe, "a BPE tokenizer has a digest");
    let fast = load_tokenizer(json).expect("fast load");
    let from_digest = TokenizerLoad::new(json, &digest)
        .finish()
        .expect("load from the digest");
    let slow = tokenizers::Tokenizer::from_bytes(json).expect("tokenizers load");
    let ser = |t: &tokenizers::Tokenizer| -> Value {
        serde_json::from_str(&t.to_string(false).unwrap()).unwrap()
    };
    for (t, how) in [(&fast, "document"), (&from_digest, "digest")] {
        assert!(
            ser(t) == ser(&slow),
            "the fast-loaded tokenizer ({how}) serializes differently"
        );
        for text in texts {
            assert_eq!(
                ids(t, text),
                ids(&slow, text),
                "{text:?}: fast ({how}) vs tokenizers ids"
            );
        }
    }
    let every: Vec<u32> = (0..=slow.get_vocab_size(true) as u32).collect();
    let decoded = |ids: &[u32]| slow.decode(ids, true).unwrap();
    for (d, from) in [(&[][..], "the document"), (&digest[..], "the digest")] {
        let all = TokenizerLoad::new(json, d)
            .finish_for(texts)
            .expect("load for all texts");
        assert_eq!(
            all.decode(&every).unwrap(),
            decoded(&every),
            "every id, decoded by the tokenizer built for the texts from {from}"
        );
        for text in texts {
            let one = TokenizerLoad::new(json, d)
                .finish_for(&[text])
                .expect("load for one text");
            let want = ids(&slow, text);
            for (t, how) in [(&one, "this text"), (&all, "all texts")] {
                assert_eq!(
                    ids(t.tokenizer(), text),
                    want,
                    "{text:?}: tokenizer built for {how} from {from} vs tokenizers ids"
                );
                assert_eq!(
                    t.decode(&want).unwrap(),
                    decoded(&want),
                    "{text:?}: decoded by the tokenizer built for {how} from {from}"
                );
            }
        }
    }
    fast
}

/// `text`'s ids from `t`, special tokens added.
pub fn ids(t: &tokenizers::Tokenizer, text: &str) -> Vec<u32> {
    t.encode(text, true).unwrap().get_ids().to_vec()
}

/// How many merges `t`'s BPE model holds.
pub fn merge_count(t: &tokenizers::Tokenizer) -> usize {
    let v: Value = serde_json::from_str(&t.to_string(false).unwrap()).unwrap();
    v["model"]["merges"].as_array().map_or(0, Vec::len)
}

pub fn token_ids(v: &Value) -> Vec<u32> {
    v["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

pub fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "logit vectors differ in length");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A tiny Llama with deterministic random weights, small enough to check against an f64
/// forward pass written here, independently of the engine.
#[derive(Clone)]
pub struct TinyLlama {
    pub hidden: usize,
    pub inter: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub ctx: usize,
    pub tied: bool,
    pub theta: f64,
    pub eps: f64,
    /// HF name -> (shape, values)
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl TinyLlama {
    pub fn new(tied: bool, seed: u64) -> Self {
        let (hidden, inter, layers, heads, kv_heads, head_dim, vocab) = (64, 96, 2, 4, 2, 16, 64);
        let mut m = TinyLlama {
            hidden,
            inter,
            layers,
            heads,
            kv_heads,
            head_dim,
            vocab,
            ctx: 48,
            tied,
            theta: 10000.0,
            eps: 1e-5,
            tensors: vec![],
        };
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut rnd = |n: usize, scale: f32, offset: f32| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    offset + scale * (((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0)
                })
                .collect()
        };
        let (q, kv) = (heads * head_dim, kv_heads * head_dim);
        let mut t = vec![(
            "model.embed_tokens.weight".to_string(),
            vec![vocab, hidden],
            rnd(vocab * hidden, 1.0, 0.0),
        )];
        for l in 0..layers {
            let p = |k: &str| format!("model.layers.{l}.{k}.weight");
            t.push((p("input_layernorm"), vec![hidden], rnd(hidden, 0.2, 1.0)));
            t.push((
                p("self_attn.q_proj"),
                vec![q, hidden],
                rnd(q * hidden, 0.3, 0.0),
            ));
            t.push((
                p("self_attn.k_proj"),
                vec![kv, hidden],
                rnd(kv * hidden, 0.3, 0.0),
            ));
            t.push((
                p("self_attn.v_proj"),
                vec![kv, hidden],
                rnd(kv * hidden, 0.3, 0.0),
            ));
            t.push((
                p("self_attn.o_proj"),
                vec![hidden, q],
                rnd(hidden * q, 0.15, 0.0),
            ));
            t.push((
                p("post_attention_layernorm"),
                vec![hidden],
                rnd(hidden, 0.2, 1.0),
            ));
            t.push((
                p("mlp.gate_proj"),
                vec![inter, hidden],
                rnd(inter * hidden, 0.3, 0.0),
            ));
            t.push((
                p("mlp.up_proj"),
                vec![inter, hidden],
                rnd(inter * hidden, 0.3, 0.0),
            ));
            t.push((
                p("mlp.down_proj"),
                vec![hidden, inter],
                rnd(hidden * inter, 0.15, 0.0),
            ));
        }
        t.push((
            "model.norm.weight".to_string(),
            vec![hidden],
            rnd(hidden, 0.2, 1.0),
        ));
        if !tied {
            t.push((
                "lm_head.weight".to_string(),
                vec![vocab, hidden],
                rnd(vocab * hidden, 0.5, 0.0),
            ));
        }
        m.tensors = t;
        m
    }

    pub fn config(&self) -> Value {
        json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": self.hidden, "intermediate_size": self.inter,
            "num_hidden_layers": self.layers, "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads, "head_dim": self.head_dim,
            "rms_norm_eps": self.eps, "rope_theta": self.theta,
            "max_position_embeddings": self.ctx, "vocab_size": self.vocab,
            "tie_word_embeddings": self.tied, "bos_token_id": 1, "eos_token_id": 0,
            "hidden_act": "silu", "torch_dtype": "float32",
        })
    }

    /// A word-level tokenizer: `<eos>` = 0, `<unk>` = 1, then `t2` .. `t63`, split on spaces.
    pub fn tokenizer_json(&self) -> Value {
        let mut vocab = serde_json::Map::new();
        vocab.insert("<eos>".into(), json!(0));
        vocab.insert("<unk>".into(), json!(1));
        for i in 2..self.vocab {
            vocab.insert(format!("t{i}"), json!(i));
        }
        json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": [{"id": 0, "content": "<eos>", "single_word": false, "lstrip": false,
                              "rstrip": false, "normalized": false, "special": true}],
            "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
        })
    }

    /// Writes a Hugging Face folder: config, tokenizer, chat template, and the weights as two
    /// safetensors shards with an index (`dtype`: "F32" or "BF16").
    pub fn write_hf(&self, dir: &Path, dtype: &str) {
        std::fs::create_dir_all(dir).unwrap();
        let w = |name: &str, v: &Value| {
            std::fs::write(dir.join(name), serde_json::to_string_pretty(v).unwrap()).unwrap()
        };
        w("config.json", &self.config());
        w("tokenizer.json", &self.tokenizer_json());
        w(
            "tokenizer_config.json",
            &json!({"eos_token": "<eos>", "add_bos_token": false}),
        );
        std::fs::write(
            dir.join("chat_template.jinja"),
            "{% for m in messages %}t3 {{ m['content'] }} t4{% endfor %}",
        )
        .unwrap();
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = self
            .tensors
            .iter()
            .map(|(n, s, v)| {
                let b = match dtype {
                    "F32" => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    "BF16" => v
                        .iter()
                        .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                        .collect(),
                    _ => panic!("write_hf: dtype {dtype}"),
                };
                (n.clone(), s.clone(), b)
            })
            .collect();
        let st_dtype = if dtype == "F32" {
            safetensors::Dtype::F32
        } else {
            safetensors::Dtype::BF16
        };
        let half = bytes.len() / 2;
        let mut weight_map = serde_json::Map::new();
        for (i, part) in [&bytes[..half], &bytes[half..]].iter().enumerate() {
            let file = format!("model-{:05}-of-00002.safetensors", i + 1);
            let views: Vec<(String, safetensors::tensor::TensorView)> = part
                .iter()
                .map(|(n, s, b)| {
                    (
                        n.clone(),
                        safetensors::tensor::TensorView::new(st_dtype, s.clone(), b).unwrap(),
                    )
                })
                .collect();
            safetensors::serialize_to_file(views, None, &dir.join(&file)).unwrap();
            for (n, _, _) in part.iter() {
                weight_map.insert(n.clone(), json!(file));
            }
        }
        w(
            "model.safetensors.index.json",
            &json!({"metadata": {}, "weight_map": weight_map}),
        );
    }

    fn get(&self, name: &str) -> &[f32] {
        &self
            .tensors
            .iter()
            .find(|t| t.0 == name)
            .unwrap_or_else(|| panic!("no tensor {name}"))
            .2
    }

    /// This model with every weight replaced by what the packed IEBIN folder `dir` stores,
    /// dequantized exactly with the engine's reference code: the oracle for quantized packs.
    pub fn from_iebin(&self, dir: &Path) -> TinyLlama {
        use clocher_engine::format::{Dtype, ModelMeta};
        use clocher_engine::kernels::int;
        let meta: ModelMeta =
            serde_json::from_str(&std::fs::read_to_string(dir.join("model.ie.json")).unwrap())
                .unwrap();
        let blob = std::fs::read(dir.join("model.ie.bin")).unwrap();
        let mut m = self.clone();
        for (name, shape, values) in &mut m.tensors {
            let t = meta
                .tensor(name)
                .unwrap_or_else(|| panic!("{name} not packed"));
            let bytes = &blob[t.offset as usize..(t.offset + t.nbytes) as usize];
            let cols = shape[shape.len() - 1];
            match t.dtype {
                Dtype::Ggml(g) => g.dequant(bytes, values),
                Dtype::Rows(g) => {
                    clocher_engine::kernels::rows::dequant_rows_ref(g, false, cols, bytes, values)
                }
                Dtype::RowsLanes(g) => {
                    clocher_engine::kernels::rows::dequant_rows_ref(g, true, cols, bytes, values)
                }
                Dtype::Int8 => int::dequant_int8_ref(cols, bytes, values),
                Dtype::Int4 { lanes: true, .. } => int::dequant_int4_lanes_ref(cols, bytes, values),
                Dtype::Int4 { group, .. } => int::dequant_int4_ref(group, cols, bytes, values),
            }
        }
        m
    }

    /// Next-token logits after `tokens`, by a plain f64 forward pass over the weights rounded
    /// with `round` (identity for an f32 source, bf16 rounding for a bf16 source).
    pub fn logits(&self, tokens: &[u32], round: impl Fn(f32) -> f32) -> Vec<f64> {
        let (d, hd) = (self.hidden, self.head_dim);
        let wt =
            |name: &str| -> Vec<f64> { self.get(name).iter().map(|v| round(*v) as f64).collect() };
        let matvec = |w: &[f64], x: &[f64]| -> Vec<f64> {
            w.chunks(x.len())
                .map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum())
                .collect()
        };
        let rms = |x: &[f64], w: &[f64]| -> Vec<f64> {
            let inv =
                1.0 / (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64 + self.eps).sqrt();
            x.iter().zip(w).map(|(x, w)| x * inv * w).collect()
        };
        let rope = |v: &mut [f64], pos: usize| {
            for h in v.chunks_mut(hd) {
                for i in 0..hd / 2 {
                    let a = pos as f64 * self.theta.powf(-(2.0 * i as f64) / hd as f64);
                    let (x, y) = (h[i], h[i + hd / 2]);
                    h[i] = x * a.cos() - y * a.sin();
                    h[i + hd / 2] = y * a.cos() + x * a.sin();
                }
            }
        };
        let embed = wt("model.embed_tokens.weight");
        let mut xs: Vec<Vec<f64>> = tokens
            .iter()
            .map(|&t| embed[t as usize * d..(t as usize + 1) * d].to_vec())
            .collect();
        for l in 0..self.layers {
            let p = |k: &str| format!("model.layers.{l}.{k}.weight");
            let (wq, wk, wv, wo) = (
                wt(&p("self_attn.q_proj")),
                wt(&p("self_attn.k_proj")),
                wt(&p("self_attn.v_proj")),
                wt(&p("self_attn.o_proj")),
            );
            let (wg, wu, wd) = (
                wt(&p("mlp.gate_proj")),
                wt(&p("mlp.up_proj")),
                wt(&p("mlp.down_proj")),
            );
            let (n1, n2) = (
                wt(&p("input_layernorm")),
                wt(&p("post_attention_layernorm")),
            );
            let mut ks = vec![];
            let mut vs = vec![];
            let mut qs = vec![];
            for (pos, x) in xs.iter().enumerate() {
                let h = rms(x, &n1);
                let (mut q, mut k) = (matvec(&wq, &h), matvec(&wk, &h));
                rope(&mut q, pos);
                rope(&mut k, pos);
                qs.push(q);
                ks.push(k);
                vs.push(matvec(&wv, &h));
            }
            for pos in 0..xs.len() {
                let mut att = vec![0.0; self.heads * hd];
                for h in 0..self.heads {
                    let kvh = h / (self.heads / self.kv_heads);
                    let q = &qs[pos][h * hd..(h + 1) * hd];
                    let scores: Vec<f64> = (0..=pos)
                        .map(|t| {
                            q.iter()
                                .zip(&ks[t][kvh * hd..(kvh + 1) * hd])
                                .map(|(a, b)| a * b)
                                .sum::<f64>()
                                / (hd as f64).sqrt()
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for t in 0..=pos {
                        for i in 0..hd {
                            att[h * hd + i] += e[t] / sum * vs[t][kvh * hd + i];
                        }
                    }
                }
                let o = matvec(&wo, &att);
                for (x, o) in xs[pos].iter_mut().zip(o) {
                    *x += o;
                }
                let h = rms(&xs[pos], &n2);
                let (g, u) = (matvec(&wg, &h), matvec(&wu, &h));
                let act: Vec<f64> = g
                    .iter()
                    .zip(&u)
                    .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                    .collect();
                for (x, o) in xs[pos].iter_mut().zip(matvec(&wd, &act)) {
                    *x += o;
                }
            }
        }
        let h = rms(xs.last().unwrap(), &wt("model.norm.weight"));
        let head = if self.tied {
            "model.embed_tokens.weight"
        } else {
            "lm_head.weight"
        };
        matvec(&wt(head), &h)
    }

    /// Greedy continuation of `prompt` by the f64 oracle, stopping after `<eos>` (id 0).
    pub fn greedy(&self, prompt: &[u32], n: usize, round: impl Fn(f32) -> f32 + Copy) -> Vec<u32> {
        let mut toks = prompt.to_vec();
        let mut out = vec![];
        while out.len() < n {
            let l = self.logits(&toks, round);
            let next = (0..l.len()).fold(0, |b, i| if l[i] > l[b] { i } else { b }) as u32;
            out.push(next);
            toks.push(next);
            if next == 0 {
                break;
            }
        }
        out
    }
}
