//! Tokenizer (Hugging Face `tokenizers`) and chat template (minijinja).

use crate::error::{EngineError, Result};
use tokenizers::Tokenizer;

pub fn load_tokenizer(json: &[u8]) -> Result<Tokenizer> {
    Tokenizer::from_bytes(json).map_err(|e| EngineError::Tokenizer(e.to_string()))
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
