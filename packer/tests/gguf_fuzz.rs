//! Replays the GGUF fuzz corpus (`packer/fuzz/corpus/gguf_header`) and a bounded number of
//! deterministic mutations of it through the fuzz target's body, on stable Rust. A panic, or
//! an allocation by an untrusted length, fails the test.

use clocher_pack::source::gguf;
use std::path::Path;

/// Mutations tried per corpus file.
const MUTATIONS: usize = 2_000;

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/gguf_header");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Byte flips, truncations, and large or boundary integers written over length fields.
fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(4) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 => v.truncate(rng.below(v.len() + 1)),
            2 if v.len() >= 8 => {
                let i = rng.below(v.len() - 7);
                let vals = [u64::MAX, u64::MAX / 2, 1 << 32, 1 << 40, 0, 1, 255, 65536];
                v[i..i + 8].copy_from_slice(&vals[rng.below(vals.len())].to_le_bytes());
            }
            _ if v.len() >= 4 => {
                let i = rng.below(v.len() - 3);
                v[i..i + 4].copy_from_slice(&(rng.next() as u32).to_le_bytes());
            }
            _ => {}
        }
    }
    v
}

#[test]
fn corpus_and_mutations_never_panic() {
    let corpus = corpus();
    assert!(corpus.len() >= 2, "the corpus has {} files", corpus.len());
    // The complete seed is valid, so mutations start from a file that parses all the way.
    let (_, valid) = corpus
        .iter()
        .find(|(n, _)| n == "tiny-valid.gguf")
        .expect("tiny-valid.gguf in the corpus");
    let h = gguf::parse_header(valid).expect("the valid seed parses");
    assert_eq!(
        gguf::tensor_extents(&h, valid.len())
            .expect("its tensors fit")
            .len(),
        3
    );
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut rejected = 0;
    for (_, seed) in &corpus {
        gguf::fuzz_one(seed);
        for _ in 0..MUTATIONS {
            let m = mutate(seed, &mut rng);
            gguf::fuzz_one(&m);
            rejected += usize::from(gguf::parse_header(&m).is_err());
        }
    }
    assert!(
        rejected > 0,
        "no mutation was rejected: the mutator is not reaching the reader"
    );
}
