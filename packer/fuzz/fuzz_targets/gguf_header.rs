//! `cargo fuzz run gguf_header`: the GGUF reader must reject any byte string with an error,
//! never panic or allocate by an untrusted length. `packer/tests/gguf_fuzz.rs` replays the
//! corpus (and mutations of it) on stable in every test run.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    clocher_pack::source::gguf::fuzz_one(data);
});
