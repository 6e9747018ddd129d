//! A `model.ie.json` that contradicts itself must fail `cargo build` with a message naming the
//! tensor and both shapes; other misuse gets a spanned error too.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
