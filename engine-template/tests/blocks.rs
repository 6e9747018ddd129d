//! GGUF block dequantization against the shared fixtures (`shared/fixtures/gguf-blocks`): rows of
//! real tensors as stored in GGUF and the floats ggml dequantizes them to. Every value must match
//! bit for bit.

use clocher_engine::kernels::blocks::GgmlType;
use serde_json::Value;
use std::path::PathBuf;

/// Formats `index.json` lists; the test fails if any is missing, so it cannot pass vacuously.
const EXPECTED_FORMATS: [&str; 15] = [
    "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "TQ1_0", "TQ2_0",
    "IQ4_NL", "F16", "BF16", "MXFP4",
];

/// Mismatches reported per format before the rest are only counted.
const MAX_REPORTED: usize = 8;

fn fixture_dir() -> PathBuf {
    let shared = std::env::var_os("CLOCHER_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared")));
    shared.join("fixtures/gguf-blocks")
}

fn read(name: &str) -> Vec<u8> {
    let path = fixture_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn vectors() -> Vec<Value> {
    let index: Value = serde_json::from_slice(&read("index.json")).expect("index.json: bad JSON");
    index["vectors"]
        .as_array()
        .expect("index.json: no `vectors` array")
        .clone()
}

fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("index.json: `{key}` missing in {v}"))
}

fn usize_field(v: &Value, key: &str) -> usize {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("index.json: `{key}` missing in {v}")) as usize
}

fn ggml_type(v: &Value) -> GgmlType {
    let id = usize_field(v, "ggml_type_id") as u32;
    GgmlType::from_id(id)
        .unwrap_or_else(|| panic!("{}: ggml type id {id} unsupported", str_field(v, "type")))
}

#[test]
fn dequant_matches_fixtures_bit_for_bit() {
    let mut failures = Vec::new();
    let mut checked = Vec::new();
    for v in vectors() {
        let name = str_field(&v, "type");
        let ty = ggml_type(&v);
        let (rows, cols) = (usize_field(&v, "rows"), usize_field(&v, "cols"));
        let bytes = read(&format!("{name}.blocks"));
        let expected: Vec<f32> = read(&format!("{name}.expected.f32"))
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if bytes.len() != rows * usize_field(&v, "bytes_per_row") || expected.len() != rows * cols {
            failures.push(format!(
                "{name}: fixture sizes wrong ({} bytes, {} floats for {rows}x{cols})",
                bytes.len(),
                expected.len()
            ));
            continue;
        }
        let mut actual = vec![f32::NAN; expected.len()];
        ty.dequant(&bytes, &mut actual);
        let bad: Vec<usize> = (0..expected.len())
            .filter(|&i| expected[i].to_bits() != actual[i].to_bits())
            .collect();
        for &i in bad.iter().take(MAX_REPORTED) {
            failures.push(format!(
                "{name}[{i}] (row {}, col {}): expected {:e} ({:#010x}), got {:e} ({:#010x})",
                i / cols,
                i % cols,
                expected[i],
                expected[i].to_bits(),
                actual[i],
                actual[i].to_bits()
            ));
        }
        if bad.len() > MAX_REPORTED {
            failures.push(format!(
                "{name}: {} more mismatches of {}",
                bad.len() - MAX_REPORTED,
                expected.len()
            ));
        }
        checked.push(name.to_string());
    }
    for f in EXPECTED_FORMATS {
        if !checked.iter().any(|c| c == f) {
            failures.push(format!("{f}: not checked (missing from index.json)"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} dequant failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn ggml_type_matches_index() {
    let vectors = vectors();
    assert!(!vectors.is_empty(), "index.json lists no vectors");
    for v in &vectors {
        let name = str_field(v, "type");
        let ty = ggml_type(v);
        assert_eq!(ty.name(), name, "name of ggml type {}", ty.id());
        assert_eq!(
            ty.id() as usize,
            usize_field(v, "ggml_type_id"),
            "{name}: id"
        );
        assert_eq!(
            ty.block_elems(),
            usize_field(v, "block_elems"),
            "{name}: block_elems"
        );
        assert_eq!(
            ty.block_bytes(),
            usize_field(v, "block_bytes"),
            "{name}: block_bytes"
        );
        assert_eq!(
            usize_field(v, "cols") / ty.block_elems() * ty.block_bytes(),
            usize_field(v, "bytes_per_row"),
            "{name}: bytes_per_row"
        );
    }
    for ty in GgmlType::ALL {
        assert_eq!(GgmlType::from_id(ty.id()), Some(ty), "{}", ty.name());
    }
    assert_eq!(GgmlType::from_id(4), None, "Q4_2 was removed from ggml");
    assert_eq!(GgmlType::from_id(u32::MAX), None);
}

/// `quantize_q5_1_ref` (the packer's int4w head) on the Q5_1 fixture's dequantized rows: every
/// value comes back within half a step, and each block whose codes span 0..=31 (so its `d` and
/// `m` are the extremes' again) is re-encoded byte for byte as ggml stored it.
#[test]
fn q5_1_quantizer_reencodes_fixture_blocks() {
    use clocher_engine::kernels::blocks::{dequant_q5_1_ref, quantize_q5_1_ref, BlockQ5_1, QK};
    let v = vectors()
        .into_iter()
        .find(|v| str_field(v, "type") == "Q5_1")
        .expect("index.json lists Q5_1");
    let stored: Vec<BlockQ5_1> = bytemuck::pod_collect_to_vec(&read("Q5_1.blocks"));
    let mut x = vec![0.0f32; stored.len() * QK];
    dequant_q5_1_ref(&stored, &mut x);
    assert_eq!(x.len(), usize_field(&v, "rows") * usize_field(&v, "cols"));
    let ours = quantize_q5_1_ref(&x);
    let mut back = vec![0.0f32; x.len()];
    dequant_q5_1_ref(&ours, &mut back);
    let (mut exact, mut failures) = (0, vec![]);
    for (i, (b, s)) in ours.iter().zip(&stored).enumerate() {
        let (d, m) = (b.d.to_f32(), b.m.to_f32());
        // Half a step, plus what rounding `d` and `m` to f16 can move a value by.
        let bound = 0.5 * d + (m.abs() + 31.0 * d) * 2f32.powi(-10);
        for j in i * QK..(i + 1) * QK {
            if (back[j] - x[j]).abs() > bound {
                failures.push(format!("Q5_1 value {j}: {} came back as {}", x[j], back[j]));
            }
        }
        let codes: Vec<u32> = (0..QK)
            .map(|j| {
                let nib = if j < QK / 2 {
                    s.qs[j] & 15
                } else {
                    s.qs[j - QK / 2] >> 4
                };
                nib as u32 | (u32::from_le_bytes(s.qh) >> j & 1) << 4
            })
            .collect();
        if codes.contains(&0) && codes.contains(&31) {
            exact += 1;
            if bytemuck::bytes_of(b) != bytemuck::bytes_of(s) {
                failures.push(format!("Q5_1 block {i}: re-encoded differently"));
            }
        }
    }
    assert!(exact > 0, "no fixture block spans every code");
    assert!(
        failures.is_empty(),
        "{}",
        failures[..failures.len().min(8)].join("\n")
    );
}
