//! The real model: SmolLM2-135M-Instruct, packed from the bf16 Hugging Face folder and from
//! the Q4_1 GGUF it was derived from, against transformers' fp32 outputs in `../shared`.

use clocher_e2e::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Max |logit - transformers| at the last prompt position for fp32 builds.
const FP32_LOGIT_TOL: f32 = 2e-3;
/// bf16/fp16 builds must agree with the reference on at least this many leading greedy tokens.
const HALF_MIN_PREFIX: usize = 30;

fn shared() -> PathBuf {
    std::env::var_os("CLOCHER_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared"))
}

/// (GGUF file, HF folder), fetched once by the shared script into models/.cache (git-ignored).
fn smollm2() -> &'static (PathBuf, PathBuf) {
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

fn work_dir(name: &str) -> PathBuf {
    let d = e2e_target().join("smollm2").join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

struct CaseResult {
    tokens: Vec<u32>,
    reference: Vec<u32>,
    logit_diff: f32,
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

/// Packs `src` at `precision`, builds it, and runs every reference case with greedy decoding.
fn run_cases(src: &Path, precision: &str, name: &str, reference: &str) -> Vec<CaseResult> {
    let work = work_dir(name);
    let crate_dir = pack_ok(src, &work, name, &["--precision", precision]);
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
        let r = CaseResult {
            tokens: token_ids(&v),
            reference,
            logit_diff: max_abs_diff(&read_f32(&logits), &want),
        };
        eprintln!(
            "{name} case {i}: {} of {} greedy tokens agree before the first difference, max |logit diff| {:.2e}, {:.1} tok/s",
            r.common_prefix(),
            r.reference.len(),
            r.logit_diff,
            v["tps_true"].as_f64().unwrap()
        );
        results.push(r);
    }
    assert_eq!(results.len(), 5);
    results
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
    for (i, r) in results.iter().enumerate() {
        let need = HALF_MIN_PREFIX.min(r.reference.len());
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
fn hf_fp32_reproduces_transformers() {
    assert_exact(&run_cases(
        &smollm2().1,
        "fp32",
        "smollm2-hf-fp32",
        "reference",
    ));
}

#[test]
fn hf_bf16_agrees_with_transformers() {
    assert_close(&run_cases(
        &smollm2().1,
        "bf16",
        "smollm2-hf-bf16",
        "reference",
    ));
}

#[test]
fn hf_fp16_agrees_with_transformers() {
    assert_close(&run_cases(
        &smollm2().1,
        "fp16",
        "smollm2-hf-fp16",
        "reference",
    ));
}

#[test]
fn gguf_fp32_reproduces_transformers_on_the_same_weights() {
    assert_exact(&run_cases(
        &smollm2().0,
        "fp32",
        "smollm2-gguf-fp32",
        "reference-q4_1-gguf",
    ));
}
