//! Snapshot of the code generated for a one-layer model, so a reviewer sees every change to
//! what generated crates contain.

use clocher_engine::codegen::{generate, validate, Paths};
use clocher_engine::format::ModelMeta;

fn tiny() -> ModelMeta {
    serde_json::from_str(include_str!("ui/tiny.ie.json")).unwrap()
}

const PATHS: Paths = Paths {
    meta_json: "/models/tiny/model.ie.json",
    model_dir: "/models/tiny",
    tokenizer_json: "/models/tiny/tokenizer.json",
    blob: "/models/tiny/model.ie.bin",
};

fn pretty(embed: bool) -> String {
    let tokens = generate(&tiny(), &PATHS, embed).unwrap();
    prettyplease::unparse(&syn::parse2(tokens).unwrap())
}

#[test]
fn tiny_model_codegen() {
    insta::assert_snapshot!(pretty(false));
}

#[test]
fn tiny_model_codegen_embedded() {
    insta::assert_snapshot!(pretty(true));
}

#[test]
fn validate_names_tensor_and_both_shapes() {
    let mut m = tiny();
    m.tensors[7].shape = vec![16, 9];
    let e = validate(&m).unwrap_err().to_string();
    assert!(
        e.contains("model.layers.0.mlp.gate_proj.weight")
            && e.contains("[16, 9]")
            && e.contains("[16, 8]"),
        "{e}"
    );

    let mut m = tiny();
    m.tensors.pop();
    assert!(validate(&m)
        .unwrap_err()
        .to_string()
        .contains("model.norm.weight"));

    let mut m = tiny();
    m.tensors[3].offset += 1;
    assert!(validate(&m).unwrap_err().to_string().contains("unaligned"));

    let mut m = tiny();
    m.architecture = "GPT2LMHeadModel".into();
    assert!(validate(&m)
        .unwrap_err()
        .to_string()
        .contains("LlamaForCausalLM"));
}
