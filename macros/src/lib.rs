//! `clocher_macros::model!("path/to/model.ie.json" [, embed_weights])`
//!
//! Reads a packed model's `model.ie.json` at compile time and expands to a `model` module whose
//! constants, types and offsets instantiate the engine for exactly that model. A relative path
//! is resolved against the file holding the macro call, like `include_str!`. Every problem is
//! reported as a `compile_error!` on the path literal; the macro never panics.

use clocher_engine::codegen::{self, Paths};
use clocher_engine::format::{ModelMeta, BLOB_FILE, TOKENIZER_DIGEST_FILE};
use proc_macro::TokenStream;
use std::path::{Path, PathBuf};
use syn::parse::{Parse, ParseStream};
use syn::{Ident, LitStr, Token};

struct Input {
    path: LitStr,
    embed_weights: bool,
}

impl Parse for Input {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let path: LitStr = input.parse()?;
        let mut embed_weights = false;
        if input.parse::<Option<Token![,]>>()?.is_some() && !input.is_empty() {
            let flag: Ident = input.parse()?;
            if flag != "embed_weights" {
                return Err(syn::Error::new(
                    flag.span(),
                    "model!: the only option is `embed_weights`",
                ));
            }
            embed_weights = true;
            input.parse::<Option<Token![,]>>()?;
        }
        Ok(Input {
            path,
            embed_weights,
        })
    }
}

#[proc_macro]
pub fn model(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as Input);
    expand(&input)
        .unwrap_or_else(|e| e.to_compile_error())
        .into()
}

fn expand(input: &Input) -> syn::Result<proc_macro2::TokenStream> {
    let err = |msg: String| syn::Error::new(input.path.span(), msg);
    let meta_path = resolve(&input.path.value());
    let json = std::fs::read_to_string(&meta_path)
        .map_err(|e| err(format!("reading {}: {e}", meta_path.display())))?;
    let meta: ModelMeta = serde_json::from_str(&json)
        .map_err(|e| err(format!("parsing {}: {e}", meta_path.display())))?;
    let dir = meta_path.parent().unwrap_or(Path::new("."));
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let paths = (
        s(&meta_path),
        s(dir),
        s(&dir.join(&meta.tokenizer.file)),
        s(&dir.join(TOKENIZER_DIGEST_FILE)),
        s(&dir.join(BLOB_FILE)),
    );
    let paths = Paths {
        meta_json: &paths.0,
        model_dir: &paths.1,
        tokenizer_json: &paths.2,
        tokenizer_digest: &paths.3,
        blob: &paths.4,
    };
    codegen::generate(&meta, &paths, input.embed_weights)
        .map_err(|e| err(format!("{} in {}", e, meta_path.display())))
}

/// Absolute paths stay; relative ones are taken from the directory of the calling file.
fn resolve(p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    let caller = proc_macro::Span::call_site().local_file();
    let base = caller
        .and_then(|f| f.parent().map(Path::to_path_buf))
        .map(|d| {
            if d.is_relative() {
                std::env::current_dir().unwrap_or_default().join(d)
            } else {
                d
            }
        })
        .unwrap_or_default();
    base.join(p)
}
