//! Tokenizer (Hugging Face `tokenizers`) and chat template (minijinja).

use crate::error::{EngineError, Result};
use crate::format::TokenDigest;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::{AddedToken, Tokenizer};

/// Builds the tokenizer from `tokenizer.json` on this thread; [`TokenizerLoad`] does it with
/// the vocabulary parsed on another.
pub fn load_tokenizer(json: &[u8]) -> Result<Tokenizer> {
    TokenizerLoad::new(json, &[]).finish()
}

/// Builds the tokenizer from `tokenizer.json`, as `Tokenizer::from_bytes` does but in a
/// fraction of the time, in two parts that two threads can run at once (ADR 33).
///
/// `tokenizers` reads a BPE model through untagged enums that buffer the whole vocabulary and
/// merge list and parse them again, and a `serde_json::Value` would sort 49k keys into a B-tree;
/// both cost more than 100 ms for SmolLM2, most of a short prompt's time to first token. Here
/// the vocabulary goes straight into the model's hash map ([`help`](Self::help), which another
/// thread may run) and, in [`finish`](Self::finish), the merges into pairs, with every other
/// entry kept raw ([`Doc`]). The BPE model is built with `BpeBuilder`, `tokenizers` reads
/// everything else (a small document), and the added tokens go in last, as its own deserializer
/// adds them (their ids come from the model). Models other than BPE take the plain path. The
/// e2e tests check both paths give the same tokenizer. Given the packer's digest of the same
/// document ([`TokenDigest`], ADR 38), the vocabulary and merges come from it instead, which
/// reads no JSON string of them.
pub struct TokenizerLoad<'a> {
    json: &'a [u8],
    /// The digest's layout (`None`: no digest, or not a readable one).
    digest: Option<TokenDigest<'a>>,
    /// `None` until someone parsed the vocabulary; then `None` inside if it could not be (no
    /// BPE model, or a document `tokenizers` must word the error for).
    vocab: Mutex<Option<Option<Vocab>>>,
}

impl<'a> TokenizerLoad<'a> {
    /// `digest` is [`crate::format::TOKENIZER_DIGEST_FILE`]'s bytes, or empty.
    pub fn new(json: &'a [u8], digest: &'a [u8]) -> Self {
        TokenizerLoad {
            json,
            digest: TokenDigest::parse(digest),
            vocab: Mutex::new(None),
        }
    }

    /// The vocabulary, from the digest or the document.
    fn parse_vocab(&self) -> Option<Vocab> {
        match &self.digest {
            Some(d) => d
                .vocab()
                .map(|e| e.map(|(t, id)| (t.to_owned(), id)))
                .collect(),
            None => parse_vocab(self.json),
        }
    }

    /// Parses the vocabulary, unless another thread is at it or has done it; never waits.
    /// Its strings stay in the model, so the thread that allocates them matters little, while
    /// the merges, freed as `BpeBuilder` reads them, are cheaper to free on the thread that
    /// parsed them (about 2 ms of cross-thread frees, measured).
    pub fn help(&self) {
        if let Ok(mut v) = self.vocab.try_lock() {
            if v.is_none() {
                *v = Some(self.parse_vocab());
            }
        }
    }

    /// Parses the merges and the rest of the document, takes the vocabulary (parsing it here if
    /// no other thread took it, waiting if one is at it), and builds the tokenizer.
    pub fn finish(&self) -> Result<Tokenizer> {
        self.build(None)
    }

    /// [`finish`](Self::finish) for a tokenizer that encodes `texts` alone, as the binaries
    /// know theirs before they load (ADR 38): its BPE model keeps only the merges that can
    /// apply to them, which turns the longest part of the load (`BpeBuilder` hashing 49k
    /// merges, about 14 ms for SmolLM2) into a few hundred lookups. It encodes `texts` to the
    /// same ids as the whole tokenizer, and decodes anything, but other texts may come out
    /// differently. Every merge is kept (the whole tokenizer) where the texts have too many
    /// distinct pieces for the filter to pay, or the model can merge what a text does not
    /// spell ([`BpeDoc::spelled`]).
    pub fn finish_for(&self, texts: &[&str]) -> Result<Tokenizer> {
        self.build(Some(texts))
    }

    fn build(&self, texts: Option<&[&str]>) -> Result<Tokenizer> {
        let json = self.json;
        let err =
            |what: &str, e: &dyn std::fmt::Display| EngineError::Tokenizer(format!("{what}: {e}"));
        let bad = |e: serde_json::Error| err("tokenizer.json", &e);
        let digest = self.digest.as_ref();
        let doc = match digest {
            Some(d) => serde_json::from_str::<Doc>(d.rest),
            None => serde_json::from_slice::<Doc>(json),
        };
        let doc = doc
            .ok()
            .and_then(|d| Some((d.model.filter(|m| m.kind == "BPE")?, d.rest)));
        let vocab = doc.as_ref().and_then(|_| {
            let mut v = self.vocab.lock().unwrap_or_else(|e| e.into_inner());
            v.get_or_insert_with(|| self.parse_vocab()).take()
        });
        let (Some((model, mut doc)), Some(vocab)) = (doc, vocab) else {
            // Another model type, a model this reader can't take, or a document that does not
            // parse: `tokenizers` reads it (and words any error).
            return Tokenizer::from_bytes(json).map_err(|e| err("tokenizer.json", &e));
        };
        let added: Vec<AddedToken> = match doc.get("added_tokens") {
            Some(a) => {
                serde_json::from_str(a.get()).map_err(|e| err("tokenizer added_tokens", &e))?
            }
            None => vec![],
        };
        let empty_model = serde_json::json!({"type": "BPE", "vocab": {}, "merges": []}).to_string();
        let empty_list = RawValue::from_string("[]".into()).map_err(bad)?;
        let empty_model = RawValue::from_string(empty_model).map_err(bad)?;
        doc.insert("model", &empty_model);
        doc.insert("added_tokens", &empty_list);
        let mut tok: Tokenizer = serde_json::to_string(&doc)
            .and_then(|s| serde_json::from_str(&s))
            .map_err(bad)?;
        let kept = match texts.filter(|_| model.spelled()) {
            Some(texts) => {
                let (longest, merges): (usize, Box<dyn Iterator<Item = _>>) = match digest {
                    Some(d) => (d.longest, Box::new(d.merge_bytes())),
                    None => (
                        model
                            .merges
                            .iter()
                            .map(|m| m.0.len() + m.1.len())
                            .max()
                            .unwrap_or(0),
                        Box::new(
                            model
                                .merges
                                .iter()
                                .map(|m| Some((m.0.as_bytes(), m.1.as_bytes()))),
                        ),
                    ),
                };
                merges_for(&tok, &added, &vocab, texts, longest, merges)?
            }
            None => None,
        };
        let merges = match (kept, digest) {
            (Some(kept), _) => kept,
            (None, Some(d)) => d
                .merges()
                .map(|m| m.map(|(a, b)| (a.to_owned(), b.to_owned())))
                .collect::<Option<_>>()
                .ok_or_else(damaged_merges)?,
            (None, None) => model.merges.into_iter().map(Merge::owned).collect(),
        };
        let mut b = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .fuse_unk(model.fuse_unk)
            .byte_fallback(model.byte_fallback)
            .ignore_merges(model.ignore_merges);
        if let Some(d) = model.dropout {
            b = b.dropout(d);
        }
        if let Some(u) = model.unk_token {
            b = b.unk_token(u);
        }
        if let Some(p) = model.continuing_subword_prefix {
            b = b.continuing_subword_prefix(p);
        }
        if let Some(s) = model.end_of_word_suffix {
            b = b.end_of_word_suffix(s);
        }
        let bpe = b.build().map_err(|e| err("tokenizer BPE model", &e))?;
        tok.with_model(bpe);
        tok.add_tokens(&added);
        Ok(tok)
    }
}

/// The most runs of characters [`merges_for`] hashes: past it, hashing them would cost
/// about what building every merge does (a few hundred thousand hash operations).
const RUNS_MAX: usize = 200_000;

/// The merges, in their order, that can apply to `texts`: those whose two tokens, joined,
/// spell a run of the symbols of a piece of a text as the BPE model sees it (the pieces
/// `tokenizers` hands the model after the added tokens, normalizer and pre-tokenizer, less
/// any character missing from the vocabulary, which the model skips). A merge joins two
/// adjacent symbols of a piece, so one that spells no such run never applies, and the kept
/// merges apply in the same order as in the whole list, since the BPE applies the lowest rank
/// first and only their order matters. `None` past [`RUNS_MAX`].
/// `tok` is the tokenizer without its model and added tokens.
fn merges_for<'m>(
    tok: &Tokenizer,
    added: &[AddedToken],
    vocab: &Vocab,
    texts: &[&str],
    longest: usize,
    merges: impl Iterator<Item = Option<(&'m [u8], &'m [u8])>>,
) -> Result<Option<Vec<(String, String)>>> {
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizer};
    let mut splitter = tok.clone();
    splitter.add_tokens(added);
    let mut pretokenized = Vec::with_capacity(texts.len());
    for text in texts {
        let mut p = splitter
            .get_added_vocabulary()
            .extract_and_normalize(splitter.get_normalizer(), text);
        if let Some(pt) = splitter.get_pre_tokenizer() {
            pt.pre_tokenize(&mut p)
                .map_err(|e| EngineError::Prompt(format!("pre-tokenizing the prompt: {e}")))?;
        }
        pretokenized.push(p);
    }
    // The pieces the model gets (not the added tokens, which come out tokenized), each once,
    // as the model spells them.
    let mut pieces = HashSet::new();
    for p in &pretokenized {
        for (s, _, tokens) in p.get_splits(OffsetReferential::Original, OffsetType::None) {
            if tokens.is_none() {
                pieces.insert(s);
            }
        }
    }
    let pieces: Vec<Cow<str>> = pieces
        .into_iter()
        .map(|s| {
            let known = |c: &&str| vocab.contains_key(*c);
            let chars = || s.split_inclusive(|_| true);
            if chars().all(|c| known(&c)) {
                Cow::Borrowed(s)
            } else {
                Cow::Owned(chars().filter(known).collect())
            }
        })
        .collect();
    // Every run of two or more characters no longer than the longest token (what a merge
    // makes is one).
    let (mut runs, mut tried) = (HashSet::<&[u8]>::new(), 0);
    // The bytes the pieces hold: most merges have one they don't, and are dropped on it
    // without hashing.
    let mut present = [false; 256];
    for s in &pieces {
        for b in s.bytes() {
            present[b as usize] = true;
        }
        let ends: Vec<usize> = s.char_indices().map(|(i, _)| i).chain([s.len()]).collect();
        for (i, &a) in ends.iter().enumerate() {
            for &b in ends.iter().skip(i + 2) {
                if b - a > longest {
                    break;
                }
                runs.insert(s[a..b].as_bytes());
                tried += 1;
                if tried > RUNS_MAX {
                    return Ok(None);
                }
            }
        }
    }
    let mut joined = Vec::with_capacity(longest);
    let mut kept = vec![];
    for m in merges {
        let (a, b) = m.ok_or_else(damaged_merges)?;
        if !a.iter().chain(b).all(|&c| present[c as usize]) {
            continue;
        }
        joined.clear();
        joined.extend_from_slice(a);
        joined.extend_from_slice(b);
        if runs.contains(joined.as_slice()) {
            let token = |t| {
                std::str::from_utf8(t)
                    .map(str::to_owned)
                    .map_err(|_| damaged_merges())
            };
            kept.push((token(a)?, token(b)?));
        }
    }
    Ok(Some(kept))
}

fn damaged_merges() -> EngineError {
    EngineError::Tokenizer("reading tokenizer.bin: its merges are damaged".into())
}

/// The `model.vocab` of a BPE `tokenizer.json`, every other entry skipped; `None` for another
/// model type or a document that does not parse.
fn parse_vocab(json: &[u8]) -> Option<Vocab> {
    #[derive(serde::Deserialize)]
    struct VocabDoc {
        model: VocabModel,
    }
    #[derive(serde::Deserialize)]
    struct VocabModel {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        vocab: Vocab,
    }
    let m = serde_json::from_slice::<VocabDoc>(json).ok()?.model;
    (m.kind == "BPE").then_some(m.vocab)
}

/// A `tokenizer.json` read in one pass: its `model` as a [`BpeDoc`] (absent if it has none),
/// every other top-level entry raw.
struct Doc<'a> {
    model: Option<BpeDoc<'a>>,
    rest: BTreeMap<&'a str, &'a RawValue>,
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for Doc<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Doc<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a tokenizer.json object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<Doc<'a>, A::Error> {
                let (mut model, mut rest) = (None, BTreeMap::new());
                while let Some(k) = m.next_key::<&'de str>()? {
                    if k == "model" {
                        model = Some(m.next_value()?);
                    } else {
                        rest.insert(k, m.next_value()?);
                    }
                }
                Ok(Doc { model, rest })
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// The `model` object of a BPE `tokenizer.json`, with the fields `BpeBuilder` takes but the
/// vocabulary ([`parse_vocab`]), which is skipped.
#[derive(serde::Deserialize)]
struct BpeDoc<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default, borrow)]
    merges: Vec<Merge<'a>>,
    dropout: Option<f32>,
    unk_token: Option<String>,
    continuing_subword_prefix: Option<String>,
    end_of_word_suffix: Option<String>,
    #[serde(default)]
    fuse_unk: bool,
    #[serde(default)]
    byte_fallback: bool,
    #[serde(default)]
    ignore_merges: bool,
}

impl BpeDoc<'_> {
    /// Whether a merge can apply only to a run of a piece's characters that it spells: no
    /// dropout, no unknown token, no byte fallback, no subword prefix or word suffix (merges
    /// of unknown or byte tokens, or of prefixed or suffixed symbols, spell something else).
    fn spelled(&self) -> bool {
        let none = |s: &Option<String>| s.as_deref().is_none_or(str::is_empty);
        self.dropout.is_none()
            && self.unk_token.is_none()
            && !self.byte_fallback
            && none(&self.continuing_subword_prefix)
            && none(&self.end_of_word_suffix)
    }
}

/// One merge rule: `["a", "b"]`, or the older `"a b"`, read without buffering, its tokens
/// borrowed from the document where they have no escapes (every merge of SmolLM2's).
struct Merge<'a>(Cow<'a, str>, Cow<'a, str>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for Merge<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        fn split<E: serde::de::Error>(s: &str) -> std::result::Result<(&str, &str), E> {
            let mut parts = s.split(' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(b), None) => Ok((a, b)),
                _ => Err(E::custom(format!("merge {s:?} is not two tokens"))),
            }
        }
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Merge<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a merge: [\"a\", \"b\"] or \"a b\"")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                s: &'de str,
            ) -> std::result::Result<Merge<'a>, E> {
                let (a, b) = split(s)?;
                Ok(Merge(a.into(), b.into()))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> std::result::Result<Merge<'a>, E> {
                let (a, b) = split(s)?;
                Ok(Merge(a.to_owned().into(), b.to_owned().into()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Merge<'a>, A::Error> {
                let mut next = || -> std::result::Result<Cow<'a, str>, A::Error> {
                    Ok(seq
                        .next_element::<Token<'a>>()?
                        .ok_or_else(|| serde::de::Error::custom("a merge needs two tokens"))?
                        .0)
                };
                let (a, b) = (next()?, next()?);
                Ok(Merge(a, b))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

impl Merge<'_> {
    fn owned(self) -> (String, String) {
        (self.0.into_owned(), self.1.into_owned())
    }
}

/// A token of a merge, borrowed where the document has it without escapes.
struct Token<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for Token<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Token<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a token")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> std::result::Result<Token<'a>, E> {
                Ok(Token(s.into()))
            }
            fn visit_str<E>(self, s: &str) -> std::result::Result<Token<'a>, E> {
                Ok(Token(s.to_owned().into()))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

pub fn encode(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    let enc = tok
        .encode(text, true)
        .map_err(|e| EngineError::Prompt(e.to_string()))?;
    Ok(enc.get_ids().to_vec())
}

pub fn decode(tok: &Tokenizer, ids: &[u32]) -> Result<String> {
    tok.decode(ids, true)
        .map_err(|e| EngineError::Tokenizer(format!("decoding: {e}")))
}

/// Renders one user turn with the model's chat template, ready for generation.
pub fn render_chat(
    template: &str,
    user: &str,
    bos: Option<&str>,
    eos: Option<&str>,
) -> Result<String> {
    let mut env = minijinja::Environment::new();
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    env.add_template("chat", template)
        .map_err(|e| EngineError::ChatTemplate(e.to_string()))?;
    let tmpl = env
        .get_template("chat")
        .map_err(|e| EngineError::ChatTemplate(e.to_string()))?;
    tmpl.render(minijinja::context! {
        messages => vec![minijinja::context! { role => "user", content => user }],
        add_generation_prompt => true,
        bos_token => bos.unwrap_or(""),
        eos_token => eos.unwrap_or(""),
    })
    .map_err(|e| EngineError::ChatTemplate(e.to_string()))
}
