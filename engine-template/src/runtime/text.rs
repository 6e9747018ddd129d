//! Tokenizer (Hugging Face `tokenizers`) and chat template (minijinja).

use crate::error::{EngineError, Result};
use crate::format::TokenDigest;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::{AddedToken, Tokenizer};

/// Builds the whole tokenizer from `tokenizer.json` ([`TokenizerLoad::finish`]).
pub fn load_tokenizer(json: &[u8]) -> Result<Tokenizer> {
    TokenizerLoad::new(json, &[]).finish()
}

/// Builds the tokenizer from `tokenizer.json`, as `Tokenizer::from_bytes` does but in a
/// fraction of the time (ADR 33).
///
/// `tokenizers` reads a BPE model through untagged enums that buffer the whole vocabulary and
/// merge list and parse them again, and a `serde_json::Value` would sort 49k keys into a B-tree;
/// both cost more than 100 ms for SmolLM2, most of a short prompt's time to first token. Here
/// the vocabulary goes straight into the model's hash map and the merges into pairs, with every
/// other entry kept raw ([`Doc`]). The BPE model is built with `BpeBuilder`, `tokenizers` reads
/// everything else (a small document), and the added tokens go in last, as its own deserializer
/// adds them (their ids come from the model). Models other than BPE take the plain path. The
/// e2e tests check both paths give the same tokenizer. Given the packer's digest of the same
/// document ([`TokenDigest`], ADR 38), the vocabulary and merges come from it instead, which
/// reads no JSON string of them. (The vocabulary was once parsed on another thread: since ADR
/// 40 the binaries' load does not need all of it.)
pub struct TokenizerLoad<'a> {
    json: &'a [u8],
    /// The digest's layout (`None`: no digest, or not a readable one).
    digest: Option<TokenDigest<'a>>,
}

impl<'a> TokenizerLoad<'a> {
    /// `digest` is [`crate::format::TOKENIZER_DIGEST_FILE`]'s bytes, or empty.
    pub fn new(json: &'a [u8], digest: &'a [u8]) -> Self {
        TokenizerLoad {
            json,
            digest: TokenDigest::parse(digest),
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

    /// Builds the whole tokenizer.
    pub fn finish(&self) -> Result<Tokenizer> {
        Ok(self.build(None)?.tok)
    }

    /// [`finish`](Self::finish) for a tokenizer that encodes `texts` alone, as the binaries
    /// know theirs before they load: given the digest, its BPE model keeps only the merges
    /// that can apply to them (ADR 38), which turns the longest part of the load (`BpeBuilder`
    /// hashing 49k merges, about 14 ms for SmolLM2) into a few hundred lookups, and only the
    /// tokens those merges and the texts' characters need (ADR 40), which spares hashing the
    /// 49k tokens of the vocabulary twice (about 7 ms). It encodes `texts` to the same ids as
    /// the whole tokenizer, and decodes anything (from the digest, [`Text::decode`]), but
    /// other texts may come out differently. The whole tokenizer comes out where there is no
    /// digest, where the texts have too many distinct pieces for the filter to pay, or where
    /// the model can merge what a text does not spell ([`BpeDoc::spelled`]).
    pub fn finish_for(&self, texts: &[&str]) -> Result<Text<'a>> {
        self.build(Some(texts))
    }

    fn build(&self, texts: Option<&[&str]>) -> Result<Text<'a>> {
        let json = self.json;
        let err =
            |what: &str, e: &dyn std::fmt::Display| EngineError::Tokenizer(format!("{what}: {e}"));
        let bad = |e: serde_json::Error| err("tokenizer.json", &e);
        // Another model type, a model this reader can't take, or a document that does not
        // parse: `tokenizers` reads it (and words any error).
        let plain = || {
            Tokenizer::from_bytes(json)
                .map(Text::whole)
                .map_err(|e| err("tokenizer.json", &e))
        };
        let digest = self.digest.as_ref();
        let doc = match digest {
            Some(d) => serde_json::from_str::<Doc>(d.rest),
            None => serde_json::from_slice::<Doc>(json),
        };
        let Some((model, mut doc)) = doc
            .ok()
            .and_then(|d| Some((d.model.filter(|m| m.kind == "BPE")?, d.rest)))
        else {
            return plain();
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
        let for_texts = match (texts.filter(|_| model.spelled()), digest) {
            (Some(texts), Some(d)) => for_texts(&tok, &added, d, texts)?,
            _ => None,
        };
        let (vocab, merges, part) = match for_texts {
            Some((vocab, merges)) => (vocab, merges, digest.copied()),
            None => {
                let Some(vocab) = self.parse_vocab() else {
                    return plain();
                };
                let merges = match digest {
                    Some(d) => d
                        .merges()
                        .map(|m| m.map(|(a, b)| (a.to_owned(), b.to_owned())))
                        .collect::<Option<_>>()
                        .ok_or_else(damaged_merges)?,
                    None => model.merges.into_iter().map(Merge::owned).collect(),
                };
                (vocab, merges, None)
            }
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
        Ok(Text { tok, part })
    }
}

/// A tokenizer as the binaries load it: `tokenizers` encodes, and where its BPE model holds
/// only what some texts need ([`TokenizerLoad::finish_for`]), the digest's vocabulary
/// decodes.
pub struct Text<'a> {
    tok: Tokenizer,
    /// The digest whose vocabulary `tok`'s model holds a part of; `None` where it holds all.
    part: Option<TokenDigest<'a>>,
}

impl<'a> Text<'a> {
    fn whole(tok: Tokenizer) -> Self {
        Text { tok, part: None }
    }

    /// `text`'s ids, special tokens added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        encode(&self.tok, text)
    }

    /// The text of `ids`, special tokens skipped, as `Tokenizer::decode` gives it: each id's
    /// token (an added token's, else the model's; ids of neither are dropped), then the
    /// decoder. Where the model holds part of the vocabulary, the model's tokens come from
    /// the digest, in one pass over it.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        use tokenizers::Decoder;
        let Some(d) = &self.part else {
            return decode(&self.tok, ids);
        };
        let added = self.tok.get_added_vocabulary();
        let want: HashSet<u32> = ids
            .iter()
            .copied()
            .filter(|&id| added.simple_id_to_token(id).is_none())
            .collect();
        let mut of_model = HashMap::with_capacity(want.len());
        for e in d.vocab() {
            let (t, id) = e.ok_or_else(|| {
                EngineError::Tokenizer("reading tokenizer.bin: its vocabulary is damaged".into())
            })?;
            if want.contains(&id) {
                of_model.insert(id, t);
            }
        }
        let tokens: Vec<String> = ids
            .iter()
            .filter_map(|id| {
                (added.simple_id_to_token(*id))
                    .or_else(|| of_model.get(id).map(|t| t.to_string()))
                    .filter(|t| !added.is_special_token(t))
            })
            .collect();
        match self.tok.get_decoder() {
            Some(dec) => dec
                .decode(tokens)
                .map_err(|e| EngineError::Tokenizer(format!("decoding: {e}"))),
            None => Ok(tokens.join(" ")),
        }
    }

    /// The `tokenizers` tokenizer; its model may hold part of the vocabulary.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tok
    }
}

/// A BPE model's merges, in order.
type Merges = Vec<(String, String)>;

/// The most runs of characters [`for_texts`] hashes: past it, hashing them would cost about
/// what building the whole model does (a few hundred thousand hash operations).
const RUNS_MAX: usize = 200_000;

/// What a BPE model needs to encode `texts` alone, as the whole model does (ADR 38, 40): the
/// merges, in their order, that can apply to them, and the tokens it can look up or make.
///
/// A merge can apply only if its two tokens, joined, spell a run of the symbols of a piece of
/// a text as the model sees it (the pieces `tokenizers` hands the model after the added
/// tokens, normalizer and pre-tokenizer): a merge joins two adjacent symbols of a piece. The
/// kept merges apply in the same order as in the whole list, since the BPE applies the lowest
/// rank first and only their order matters. The model looks up the pieces' characters, and
/// the pieces themselves (`ignore_merges`), and makes only what a kept merge spells: every
/// such token holds only pairs of bytes that the pieces hold, so one pass over the digest's
/// vocabulary, hashing only the tokens that pass that test, finds them all, and the added
/// tokens (whose ids the model gives). `None` past [`RUNS_MAX`], for a text with a character
/// the vocabulary lacks, or where the digest's vocabulary is damaged or longer than it says
/// (the whole load words it). `tok` is the tokenizer without its model and added tokens.
fn for_texts(
    tok: &Tokenizer,
    added: &[AddedToken],
    d: &TokenDigest,
    texts: &[&str],
) -> Result<Option<(Vocab, Merges)>> {
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
    // The pieces the model gets (not the added tokens, which come out tokenized), each once.
    let mut raw = HashSet::new();
    for p in &pretokenized {
        for (s, _, tokens) in p.get_splits(OffsetReferential::Original, OffsetType::None) {
            if tokens.is_none() {
                raw.insert(s);
            }
        }
    }
    // The bytes the pieces hold, and the pairs of bytes next to each other in them: a token
    // that spells a run of a piece has only these. Most tokens and merges have one they
    // don't, and are dropped on it without hashing.
    let mut present = [false; 256];
    let mut pairs = vec![0u64; 1 << 10];
    let at = |a: u8, b: u8| ((a as usize) << 8) | b as usize;
    for s in &raw {
        for &c in s.as_bytes() {
            present[c as usize] = true;
        }
        for w in s.as_bytes().windows(2) {
            let i = at(w[0], w[1]);
            pairs[i >> 6] |= 1 << (i & 63);
        }
    }
    let spells = |t: &[u8]| {
        t.iter().all(|&c| present[c as usize])
            && t.windows(2).all(|w| {
                let i = at(w[0], w[1]);
                pairs[i >> 6] >> (i & 63) & 1 == 1
            })
    };
    // The added tokens, found by their first byte and length before hashing.
    let added_names: HashSet<&str> = added.iter().map(|a| a.content.as_str()).collect();
    // (A token longer than `longest`, which would cut the runs short, sends the texts to the
    // whole model, and the digest holds tokens' lengths as `u16`s.)
    let longest = d.longest.min(u16::MAX as usize);
    let (mut first, mut len) = ([false; 256], vec![false; longest + 1]);
    for a in added_names.iter().map(|a| a.as_bytes()) {
        if let (Some(&f), Some(n)) = (a.first(), len.get_mut(a.len())) {
            (first[f as usize], *n) = (true, true);
        }
    }
    let is_added = |t: &[u8]| match t.first() {
        Some(&f) if first[f as usize] && len.get(t.len()) == Some(&true) => {
            std::str::from_utf8(t).is_ok_and(|t| added_names.contains(t))
        }
        _ => false,
    };
    let mut known = HashMap::new();
    for e in d.vocab_bytes() {
        let Some((t, id)) = e.filter(|(t, _)| t.len() <= longest) else {
            return Ok(None);
        };
        if spells(t) || is_added(t) {
            let Ok(t) = std::str::from_utf8(t) else {
                return Ok(None);
            };
            known.insert(t, id);
        }
    }
    // A character missing from the vocabulary, which the model skips, would join its
    // neighbours in a run: the whole model takes such a text.
    if !(raw.iter()).all(|s| s.split_inclusive(|_| true).all(|c| known.contains_key(c))) {
        return Ok(None);
    }
    // Every run of two or more characters no longer than the longest token (what a merge
    // makes is one).
    let (mut runs, mut tried) = (HashSet::<&[u8]>::new(), 0);
    for s in &raw {
        let ends: Vec<usize> = s.char_indices().map(|(i, _)| i).chain([s.len()]).collect();
        for (i, &a) in ends.iter().enumerate() {
            for &b in ends.iter().skip(i + 2) {
                if b - a > longest {
                    break;
                }
                runs.insert(&s.as_bytes()[a..b]);
                tried += 1;
                if tried > RUNS_MAX {
                    return Ok(None);
                }
            }
        }
    }
    let mut joined = Vec::with_capacity(2 * longest);
    let mut kept = vec![];
    for m in d.merge_bytes() {
        let (a, b) = m.ok_or_else(damaged_merges)?;
        let (Some(&l), Some(&f)) = (a.last(), b.first()) else {
            continue;
        };
        if !spells(a) || !spells(b) || !spells(&[l, f]) {
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
    // A merge's tokens and what it makes, and the pieces the vocabulary holds whole, are runs
    // or characters of a piece (no token is longer than `longest`).
    let vocab: Vocab = (known.into_iter())
        .filter(|&(t, _)| {
            t.chars().nth(1).is_none() || runs.contains(t.as_bytes()) || added_names.contains(t)
        })
        .map(|(t, id)| (t.to_owned(), id))
        .collect();
    Ok(Some((vocab, kept)))
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
            crate::format::split_merge(s)
                .ok_or_else(|| E::custom(format!("merge {s:?} is not two tokens")))
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
