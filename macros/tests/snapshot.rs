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
    tokenizer_digest: "/models/tiny/tokenizer.bin",
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

/// One projection as Clocher int8: the codegen names `Int8<COLS>` for it.
#[test]
fn tiny_model_codegen_int8_projection() {
    use clocher_engine::format::{Dtype, GroupSize, QuantSpec};
    use clocher_engine::kernels::int::{Clip, Scheme};
    let mut m = tiny();
    m.precision = clocher_engine::format::Precision::Int8w;
    let t = m
        .tensors
        .iter_mut()
        .find(|t| t.name == "model.layers.0.self_attn.q_proj.weight")
        .unwrap();
    t.dtype = Dtype::Int8;
    t.nbytes = Dtype::Int8.nbytes(&t.shape).unwrap() as u64;
    t.quant = Some(QuantSpec {
        bits: 8,
        group_size: GroupSize::Row,
        scheme: Scheme::Asym,
        clip: Clip::None,
    });
    let tokens = generate(&m, &PATHS, false).unwrap();
    let code = prettyplease::unparse(&syn::parse2(tokens).unwrap());
    assert!(code.contains("Int8<8>"), "{code}");
    assert_quant_record_required(m);
}

fn assert_quant_record_required(mut m: ModelMeta) {
    for t in &mut m.tensors {
        t.quant = None;
    }
    let e = validate(&m).unwrap_err().to_string();
    assert!(e.contains("without its quant record"), "{e}");
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

    // A layout note other than this engine's (a pack from before a layout change).
    let mut m = tiny();
    let q5 = clocher_engine::format::Dtype::Rows(clocher_engine::kernels::blocks::GgmlType::Q5_0);
    let doc = clocher_engine::format::layout_doc(q5).unwrap();
    m.layouts.insert(q5.name(), doc.replace("plane", "words"));
    let e = validate(&m).unwrap_err().to_string();
    assert!(
        e.contains("q5_0_rows") && e.contains("pack the model again"),
        "{e}"
    );
    m.layouts.insert(q5.name(), doc);
    validate(&m).unwrap();

    let mut m = tiny();
    m.architecture = "GPT2LMHeadModel".into();
    assert!(validate(&m)
        .unwrap_err()
        .to_string()
        .contains("LlamaForCausalLM"));
}
