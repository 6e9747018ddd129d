//! Tokenizer (Hugging Face `tokenizers`) and chat template (minijinja).

use crate::error::{EngineError, Result};
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::sync::Mutex;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::{AddedToken, Tokenizer};

/// Builds the tokenizer from `tokenizer.json` on this thread; [`TokenizerLoad`] does it with
/// the vocabulary parsed on another.
pub fn load_tokenizer(json: &[u8]) -> Result<Tokenizer> {
    TokenizerLoad::new(json).finish()
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
/// e2e tests check both paths give the same tokenizer.
pub struct TokenizerLoad<'a> {
    json: &'a [u8],
    /// `None` until someone parsed the vocabulary; then `None` inside if it could not be (no
    /// BPE model, or a document `tokenizers` must word the error for).
    vocab: Mutex<Option<Option<Vocab>>>,
}

impl<'a> TokenizerLoad<'a> {
    pub fn new(json: &'a [u8]) -> Self {
        TokenizerLoad {
            json,
            vocab: Mutex::new(None),
        }
    }

    /// Parses the vocabulary, unless another thread is at it or has done it; never waits.
    /// Its strings stay in the model, so the thread that allocates them matters little, while
    /// the merges, freed as `BpeBuilder` reads them, are cheaper to free on the thread that
    /// parsed them (about 2 ms of cross-thread frees, measured).
    pub fn help(&self) {
        if let Ok(mut v) = self.vocab.try_lock() {
            if v.is_none() {
                *v = Some(parse_vocab(self.json));
            }
        }
    }

    /// Parses the merges and the rest of the document, takes the vocabulary (parsing it here if
    /// no other thread took it, waiting if one is at it), and builds the tokenizer.
    pub fn finish(&self) -> Result<Tokenizer> {
        let json = self.json;
        let err =
            |what: &str, e: &dyn std::fmt::Display| EngineError::Tokenizer(format!("{what}: {e}"));
        let bad = |e: serde_json::Error| err("tokenizer.json", &e);
        let doc = serde_json::from_slice::<Doc>(json)
            .ok()
            .and_then(|d| Some((d.model.filter(|m| m.kind == "BPE")?, d.rest)));
        let vocab = doc.as_ref().and_then(|_| {
            let mut v = self.vocab.lock().unwrap_or_else(|e| e.into_inner());
            v.get_or_insert_with(|| parse_vocab(json)).take()
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
        let mut b = BPE::builder()
            .vocab_and_merges(vocab, model.merges.into_iter().map(|m| m.0).collect())
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
    model: Option<BpeDoc>,
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
struct BpeDoc {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    merges: Vec<Merge>,
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

/// One merge rule: `["a", "b"]`, or the older `"a b"`, read without buffering.
struct Merge((String, String));

impl<'de> serde::Deserialize<'de> for Merge {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Merge;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a merge: [\"a\", \"b\"] or \"a b\"")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> std::result::Result<Merge, E> {
                let mut parts = s.split(' ');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(a), Some(b), None) => Ok(Merge((a.into(), b.into()))),
                    _ => Err(E::custom(format!("merge {s:?} is not two tokens"))),
                }
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Merge, A::Error> {
                let mut next = || -> std::result::Result<String, A::Error> {
                    seq.next_element()?
                        .ok_or_else(|| serde::de::Error::custom("a merge needs two tokens"))
                };
                let pair = (next()?, next()?);
                Ok(Merge(pair))
            }
        }
        d.deserialize_any(V)
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
