//! The real model: SmolLM2-135M-Instruct, packed from the bf16 Hugging Face folder and from
//! the Q4_1 GGUF it was derived from, against transformers' fp32 outputs in `../shared`.

use clocher_e2e::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Max |logit - transformers| at the last prompt position for fp32 builds.
const FP32_LOGIT_TOL: f32 = 2e-3;
/// bf16/fp16 builds must agree with the reference on at least this many leading greedy tokens.
const HALF_MIN_PREFIX: usize = 30;
/// Native GGUF blocks: cosine of the last-position logits with transformers on the same weights.
const NATIVE_MIN_COSINE: f64 = 0.999;
/// Native GGUF blocks: leading greedy tokens that must agree.
const NATIVE_MIN_PREFIX: usize = 28;
/// int8w / int4w: cosine of the last-position logits with transformers, and the fewest
/// leading greedy tokens that must agree in each case. Measured: int8w 0.9982 / 13 tokens,
/// int4w 0.9884 / 12 tokens at worst (case 0's chat prompt has the least margin; 0.9959 with
/// the Q8_0 head it had before ADR 19, the other cases 0.9997 or more); a wrong scale or
/// nibble order drops the cosine far below 0.9.
const INT8W_MIN_COSINE: f64 = 0.997;
const INT8W_MIN_PREFIX: usize = 10;
const INT4W_MIN_COSINE: f64 = 0.985;
const INT4W_MIN_PREFIX: usize = 10;

fn work_dir(name: &str) -> PathBuf {
    let d = e2e_target().join("smollm2").join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

struct CaseResult {
    tokens: Vec<u32>,
    reference: Vec<u32>,
    logit_diff: f32,
    cosine: f64,
    logits: Vec<f32>,
}

impl CaseResult {
    fn common_prefix(&self) -> usize {
        self.tokens
            .iter()
            .zip(&self.reference)
            .take_while(|(a, b)| a == b)
            .count()
    }
}

/// Packs `src` at `precision`, builds it, and runs every reference case with greedy decoding
/// on f32 activations; returns the results and the binary.
fn run_cases(
    src: &Path,
    precision: &str,
    name: &str,
    reference: &str,
) -> (Vec<CaseResult>, PathBuf) {
    run_cases_with(src, &["--precision", precision], name, reference)
}

/// [`run_cases`] with any packing flags.
fn run_cases_with(
    src: &Path,
    flags: &[&str],
    name: &str,
    reference: &str,
) -> (Vec<CaseResult>, PathBuf) {
    let work = work_dir(name);
    let crate_dir = pack_ok(src, &work, name, flags);
    let bin = build_crate(&crate_dir, name);
    let ref_dir = shared().join("fixtures/smollm2-135m").join(reference);
    let refs: Value =
        serde_json::from_str(&std::fs::read_to_string(ref_dir.join("reference.json")).unwrap())
            .unwrap();
    let mut results = vec![];
    for (i, case) in refs["cases"].as_array().unwrap().iter().enumerate() {
        let logits = work.join(format!("case{i}.f32"));
        let prompt = case["prompt"].as_str().unwrap();
        let v = run_json(
            &bin,
            &[
                "--prompt",
                prompt,
                "--max-new",
                "32",
                "--threads",
                "2",
                "--dump-logits",
                logits.to_str().unwrap(),
            ],
        );
        assert_eq!(
            v["prompt_tokens"].as_u64().unwrap() as usize,
            case["input_ids"].as_array().unwrap().len(),
            "case {i}: prompt tokenization"
        );
        let want = read_f32(&ref_dir.join(case["last_logits_file"].as_str().unwrap()));
        let reference: Vec<u32> = case["greedy_32"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let got = read_f32(&logits);
        let r = CaseResult {
            tokens: token_ids(&v),
            reference,
            logit_diff: max_abs_diff(&got, &want),
            cosine: cosine(&got, &want),
            logits: got,
        };
        eprintln!(
            "{name} case {i}: {} of {} greedy tokens agree before the first difference, max |logit diff| {:.2e}, cosine {:.6}, {:.1} tok/s",
            r.common_prefix(),
            r.reference.len(),
            r.logit_diff,
            r.cosine,
            v["tps_true"].as_f64().unwrap()
        );
        results.push(r);
    }
    assert_eq!(results.len(), 5);
    (results, bin)
}

/// The 8-bit activation decode path holds the quantization gate: perplexity on gpl-3 (ctx 128,
/// 4 chunks) run token by token through it (`IE_ACT8=1`) is at most `gate` (relative) above the
/// same text through the f32-activation GEMM, and it did run (the JSON line says `i8`, and the
/// figure differs). Measured: native Q4_1 -0.3%, int4w -1.5%, int8w -1.4% (on the whole text,
/// ctx 512: +0.5%, +0.4%, +0.4%; `docs/PRECISIONS.md`). With `IE_ACT8` unset the binary takes
/// the path when `by_default`. int8w does not: its gate is +0.5% over fp32, and the whole text
/// measured +0.56%. There only the output head takes 8-bit activations by default (ADR 20),
/// which must hold the same gate.
///
/// Where the blocks' weights have a batched 8-bit kernel (`batched`: int4 and the GGUF blocks
/// Q4_0, Q4_1, Q8_0), the same text through it (`--batch 32`, prefill's path) holds the same
/// gate, and did run. It is not held closer to the token-by-token figure: on this short text a
/// change of summation order alone moved 8-bit perplexity by 1.4% (23.29 -> 22.95, int4w). The
/// kernels' agreement is checked in `act8_kernels`. int8w's rows have none; its Q8_0 head's
/// batched kernel is held to int8w's gate at ctx 512.
fn assert_act8_perplexity(bin: &Path, gate: f64, by_default: bool, batched: bool) {
    let default = run_json_env(
        bin,
        &["--prompt", "Hi", "--max-new", "1"],
        &[("IE_ACT8", "")],
    );
    let want = if by_default { "i8" } else { "f32, head i8" };
    assert_eq!(
        default["activations"],
        want,
        "default activations of {}",
        bin.display()
    );
    let text = shared().join("fixtures/text/gpl-3.txt");
    let ppl_ctx = |ctx: &str, batch: &str, act8: &str| {
        let args = [
            "perplexity",
            "--file",
            text.to_str().unwrap(),
            "--ctx",
            ctx,
            "--chunks",
            "4",
        ];
        let v = run_json_env(
            bin,
            &[&args[..], &["--batch", batch, "--threads", "2"]].concat(),
            &[("IE_ACT8", act8)],
        );
        (
            v["ppl"].as_f64().unwrap(),
            v["activations"].as_str().unwrap().to_string(),
        )
    };
    let ppl = |batch: &str, act8: &str| ppl_ctx("128", batch, act8);
    // `got` within the gate above `f32` (and not 5% below it, where a path would be broken).
    let assert_gate = |what: &str, got: f64, f32: f64| {
        assert!(
            got <= f32 * (1.0 + gate) && got >= f32 * 0.95,
            "{what}: perplexity {got} against {f32} with f32 (gate +{gate})"
        );
    };
    let (f32_ppl, a) = ppl("32", "0");
    assert_eq!(a, "f32");
    let (i8_ppl, a) = ppl("1", "1");
    assert_eq!(a, "i8", "IE_ACT8=1 runs the 8-bit path");
    eprintln!(
        "{}: perplexity {i8_ppl:.4} with 8-bit activations, {f32_ppl:.4} with f32",
        bin.display()
    );
    assert_ne!(i8_ppl, f32_ppl, "the 8-bit path did not run");
    if !by_default {
        // Only the head takes 8-bit activations by default (ADR 20). It must hold the gate on
        // longer chunks (4 of ctx 512: measured +0.43% for int8w), as the short text's noise
        // alone is larger than this gate.
        let (f32_512, _) = ppl_ctx("512", "32", "0");
        let (head_ppl, a) = ppl_ctx("512", "1", "");
        assert_eq!(a, "f32, head i8");
        eprintln!(
            "{}: perplexity {head_ppl:.4} by default, {f32_512:.4} with f32 (ctx 512)",
            bin.display()
        );
        assert_ne!(head_ppl, f32_512, "the head's 8-bit path did not run");
        assert_gate("8-bit head", head_ppl, f32_512);
        // The head (Q8_0, ADR 19) has a batched 8-bit kernel, which batches take with
        // IE_ACT8=1; on the short text below its noise exceeds this gate (measured +0.69%).
        let (head_gemm, a) = ppl_ctx("512", "32", "1");
        assert_eq!(a, "f32, head i8");
        eprintln!(
            "{}: perplexity {head_gemm:.4} in batches of 32 with IE_ACT8=1 (ctx 512)",
            bin.display()
        );
        assert_ne!(
            head_gemm, f32_512,
            "the head's batched 8-bit path did not run"
        );
        assert_gate("batched 8-bit head", head_gemm, f32_512);
    }
    assert_gate("8-bit activations", i8_ppl, f32_ppl);
    if batched {
        let (gemm_ppl, a) = ppl("32", "1");
        eprintln!(
            "{}: perplexity {gemm_ppl:.4} in batches of 32 with IE_ACT8=1",
            bin.display()
        );
        assert_eq!(a, "i8", "IE_ACT8=1 runs batches on the 8-bit path");
        assert_ne!(gemm_ppl, f32_ppl, "the batched 8-bit path did not run");
        assert_gate("batched 8-bit activations", gemm_ppl, f32_ppl);
    }
}

/// The binaries' fast tokenizer loader against `tokenizers` on SmolLM2's own `tokenizer.json`
/// and on the one the packer derives from the GGUF's metadata.
#[test]
fn fast_tokenizer_load_matches_tokenizers() {
    let (gguf, hf) = smollm2();
    let texts = [
        "Hello, world!",
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
        "  spaces\tand\nnewlines, ünïcödé, 数字 12345",
    ];
    let hf_json = std::fs::read(hf.join("tokenizer.json")).unwrap();
    assert_same_tokenizer(&hf_json, &texts);
    let ck = clocher_pack::open(gguf).expect("the GGUF opens");
    assert_same_tokenizer(ck.tokenizer_json.as_bytes(), &texts);
}

/// A tokenizer built for given texts (ADR 38, 40) encodes and decodes each as `tokenizers`
/// does, on pieces of the GPL text and on texts that stress the pre-tokenizer and added
/// tokens, keeps few merges and tokens for a short prompt, and keeps every merge where the
/// filter would not pay.
#[test]
fn prompt_tokenizer_matches_tokenizers() {
    use clocher_engine::runtime::text::TokenizerLoad;
    let hf_json = std::fs::read(smollm2().1.join("tokenizer.json")).unwrap();
    let slow = tokenizers::Tokenizer::from_bytes(&hf_json).unwrap();
    let gpl = std::fs::read_to_string(shared().join("fixtures/text/gpl-3.txt")).unwrap();
    let chars: Vec<char> = gpl.chars().collect();
    let mut texts: Vec<String> = (0..24)
        .map(|i| {
            let start = (i * 7919 * 13) % chars.len();
            let len = [1, 2, 5, 17, 64, 300, 2000][i % 7];
            chars[start..(start + len).min(chars.len())]
                .iter()
                .collect()
        })
        .collect();
    texts.extend(
        [
            "",
            " ",
            "a",
            "The history of computing is a story of people trying to make machines do our work",
            "ab<|im_end|>cd <|im_start|>  x\n\n\n   y",
            "1234567890 3.14159 -0.5e10 0x1F",
            "naïve café — “quotes” ‘and’ 日本語のテキスト 🤖🤖 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
            "don't we'll I'M they've it'S",
            "\t\t\tindented()\r\n    {\"json\": [1, 2]}",
        ]
        .map(String::from),
    );
    let digest =
        clocher_engine::format::TokenDigest::encode(std::str::from_utf8(&hf_json).unwrap())
            .expect("SmolLM2's tokenizer has a digest");
    for text in &texts {
        for (d, from) in [(&[][..], "document"), (&digest[..], "digest")] {
            let t = TokenizerLoad::new(&hf_json, d).finish_for(&[text]).unwrap();
            let want = ids(&slow, text);
            assert_eq!(ids(t.tokenizer(), text), want, "{text:?} ({from})");
            let decoded = slow.decode(&want, true).unwrap();
            assert_eq!(
                t.decode(&want).unwrap(),
                decoded,
                "{text:?} decoded ({from})"
            );
        }
    }
    let short = TokenizerLoad::new(&hf_json, &digest)
        .finish_for(&["The history of computing"])
        .unwrap();
    let (kept, all) = (merge_count(short.tokenizer()), merge_count(&slow));
    assert!(
        kept > 0 && kept < 200,
        "a short prompt kept {kept} of {all} merges"
    );
    let tokens = short.tokenizer().get_vocab_size(false);
    assert!(
        tokens > kept && tokens < 1000,
        "a short prompt kept {tokens} of {} tokens",
        slow.get_vocab_size(false)
    );
    // A digest whose longest token is shorter than one it holds: the texts take the whole
    // model rather than runs cut short.
    let mut short_longest = digest.clone();
    let at = 12 + u32::from_le_bytes(digest[8..12].try_into().unwrap()) as usize;
    short_longest[at..at + 4].copy_from_slice(&1u32.to_le_bytes());
    let text = "The history of computing";
    let t = TokenizerLoad::new(&hf_json, &short_longest)
        .finish_for(&[text])
        .unwrap();
    assert_eq!(merge_count(t.tokenizer()), all);
    assert_eq!(ids(t.tokenizer(), text), ids(&slow, text));
    // One piece with more runs than the filter indexes: every merge is kept.
    let long = "x".repeat(5_000);
    let t = TokenizerLoad::new(&hf_json, &digest)
        .finish_for(&[&long])
        .unwrap();
    assert_eq!(merge_count(t.tokenizer()), all);
    assert_eq!(ids(t.tokenizer(), &long), ids(&slow, &long));
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn assert_exact(results: &[CaseResult]) {
    for (i, r) in results.iter().enumerate() {
        assert_eq!(
            r.tokens, r.reference,
            "case {i}: greedy continuation differs from transformers"
        );
        assert!(
            r.logit_diff <= FP32_LOGIT_TOL,
            "case {i}: max |logit diff| {} > {FP32_LOGIT_TOL}",
            r.logit_diff
        );
    }
}

fn assert_close(results: &[CaseResult]) {
    assert_agrees(results, -1.0, HALF_MIN_PREFIX);
}

#[test]
fn hf_fp32_reproduces_transformers() {
    assert_exact(&run_cases(&smollm2().1, "fp32", "smollm2-hf-fp32", "reference").0);
}

#[test]
fn hf_bf16_agrees_with_transformers() {
    assert_close(&run_cases(&smollm2().1, "bf16", "smollm2-hf-bf16", "reference").0);
}

#[test]
fn hf_fp16_agrees_with_transformers() {
    assert_close(&run_cases(&smollm2().1, "fp16", "smollm2-hf-fp16", "reference").0);
}

#[test]
fn gguf_fp32_reproduces_transformers_on_the_same_weights() {
    assert_exact(
        &run_cases(
            &smollm2().0,
            "fp32",
            "smollm2-gguf-fp32",
            "reference-q4_1-gguf",
        )
        .0,
    );
}

#[test]
fn gguf_native_blocks_agree_with_transformers() {
    let (r, bin) = run_cases(
        &smollm2().0,
        "gguf",
        "smollm2-gguf-native",
        "reference-q4_1-gguf",
    );
    assert_agrees(&r, NATIVE_MIN_COSINE, NATIVE_MIN_PREFIX);
    assert_act8_perplexity(&bin, 0.02, true, true);
}

/// A GGUF mixing Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, TQ1_0 and TQ2_0 per tensor and per layer, written
/// by the `gguf` Python package: its native build must match its exactly dequantized fp32 build.
#[test]
fn mixed_format_gguf_native_matches_dequantized() {
    let (gguf, _) = smollm2();
    let work = work_dir("mixed");
    let mixed = work.join("mixed.gguf");
    let python = gguf.parent().unwrap().join(".venv/bin/python");
    let out = std::process::Command::new(&python)
        .arg(root().join("tests/scripts/make_mixed_gguf.py"))
        .args([gguf, &mixed])
        .output()
        .expect("running make_mixed_gguf.py");
    assert!(
        out.status.success(),
        "make_mixed_gguf.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (native, _) = run_cases(&mixed, "gguf", "mixed-native", "reference-q4_1-gguf");
    let (dequant, _) = run_cases(&mixed, "fp32", "mixed-fp32", "reference-q4_1-gguf");
    let meta = std::fs::read_to_string(work_dir("mixed-native").join("mixed-native/model.ie.json"))
        .unwrap();
    for f in [
        // The 4-bit splits with their nibbles in the lane layout (ADR 45).
        "\"q4_0_rows_lanes\"",
        "\"q4_1_rows_lanes\"",
        "\"q5_0_rows\"",
        "\"q5_1_rows\"",
        "\"q8_0\"",
        "\"tq1_0\"",
        "\"tq2_0\"",
    ] {
        assert!(
            meta.contains(f),
            "the native pack keeps {f} blocks (split by rows where ADR 26 says)"
        );
    }
    for (i, (n, d)) in native.iter().zip(&dequant).enumerate() {
        let diff = max_abs_diff(&n.logits, &d.logits);
        assert!(
            diff <= FP32_LOGIT_TOL,
            "case {i}: native vs dequantized logits differ by {diff}"
        );
        let same = n
            .tokens
            .iter()
            .zip(&d.tokens)
            .take_while(|(a, b)| a == b)
            .count();
        assert!(
            same >= NATIVE_MIN_PREFIX.min(d.tokens.len()),
            "case {i}: only {same} greedy tokens agree"
        );
    }
}

/// Every case's last-position logits have at least `min_cosine` with transformers', and at
/// least `min_prefix` leading greedy tokens agree.
fn assert_agrees(results: &[CaseResult], min_cosine: f64, min_prefix: usize) {
    for (i, r) in results.iter().enumerate() {
        assert!(
            r.cosine >= min_cosine,
            "case {i}: cosine {} < {min_cosine}",
            r.cosine
        );
        let need = min_prefix.min(r.reference.len());
        assert!(
            r.common_prefix() >= need,
            "case {i}: only {} greedy tokens agree (need {need}): {:?} vs {:?}",
            r.common_prefix(),
            r.tokens,
            r.reference
        );
    }
}

#[test]
fn hf_int8w_agrees_with_transformers() {
    let (r, bin) = run_cases(&smollm2().1, "int8w", "smollm2-hf-int8w", "reference");
    assert_agrees(&r, INT8W_MIN_COSINE, INT8W_MIN_PREFIX);
    assert_act8_perplexity(&bin, 0.005, false, false);
}

/// `ptq` on the real model writes a manifest covering every linear layer with its measured
/// cosine, and the int4w build packed from it agrees with transformers.
#[test]
fn ptq_manifest_int4w_agrees_with_transformers() {
    let hf = &smollm2().1;
    let work = work_dir("smollm2-ptq");
    let manifest = work.join("quant/q4_manifest.json");
    let out = pack(&[
        "ptq".as_ref(),
        hf.as_os_str(),
        "--out".as_ref(),
        manifest.as_os_str(),
        "--calib-tokens".as_ref(),
        "64".as_ref(),
    ]);
    assert!(
        out.status.success(),
        "ptq: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    let m: Value = serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    let tensors = m["tensors"].as_object().unwrap();
    assert_eq!(tensors.len(), 30 * 7, "one line per linear layer");
    for (name, t) in tensors {
        let c4 = t["cosine_int4"]
            .as_f64()
            .unwrap_or_else(|| panic!("{name}: {t}"));
        assert!(c4 > 0.9 && c4 <= 1.0, "{name}: cosine {c4}");
        let gate = m["ptq"]["gate_cosine"].as_f64().unwrap();
        match t["bits"].as_u64() {
            Some(4) => assert!(c4 >= gate, "{name}: int4 under the gate: {t}"),
            _ => assert!(c4 < gate, "{name}: fell back although int4 passed: {t}"),
        }
    }
    let bpw = m["ptq"]["linear_bits_per_weight"].as_f64().unwrap();
    assert!(bpw <= 4.6, "{bpw} bits per linear weight");
    let (r, bin) = run_cases_with(
        hf,
        &[
            "--precision",
            "int4w",
            "--q4-map",
            manifest.to_str().unwrap(),
        ],
        "smollm2-hf-int4w",
        "reference",
    );
    assert_agrees(&r, INT4W_MIN_COSINE, INT4W_MIN_PREFIX);
    assert_act8_perplexity(&bin, 0.02, true, true);
}
