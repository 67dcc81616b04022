//! Tokenizer and chat formatting: the model's own `chat_template`, rendered with minijinja set
//! up as Hugging Face transformers sets up jinja2 (`trim_blocks`, `lstrip_blocks`, Python string
//! methods via pycompat, `raise_exception`, `strftime_now`).
//!
//! Where the template comes from, first match wins: `chat_template` in
//! `tokenizer_config.json` (a string, or the entry named `default` of a list), then a
//! `chat_template.jinja` file beside it (transformers >= 4.43 writes this). A model with neither
//! uses [`FALLBACK_TEMPLATE`], a plain `User: ...\nAssistant:` format, and
//! [`ChatTokenizer::has_own_template`] says so.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The template used when a model ships none: one `Role: content` line per message, then
/// `Assistant:` when a generation prompt is asked for, after the BOS token if there is one.
pub const FALLBACK_TEMPLATE: &str = "{{ bos_token }}{% for m in messages %}{{ m['role'] | capitalize }}: \
{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}";

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl Message {
    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        Message { role: "user".into(), content: content.into() }
    }
    /// A `system` message.
    pub fn system(content: impl Into<String>) -> Self {
        Message { role: "system".into(), content: content.into() }
    }
    /// An `assistant` message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Message { role: "assistant".into(), content: content.into() }
    }
}

/// A tokenizer with its chat template and special tokens.
#[derive(Debug, Clone)]
pub struct ChatTokenizer {
    tokenizer: tokenizers::Tokenizer,
    template: String,
    own_template: bool,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

/// `tokenizer_config.json` stores special tokens as strings or as `{"content": ...}` objects.
fn special_token(cfg: &serde_json::Value, key: &str) -> Option<String> {
    match cfg.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// Work units one template render may use: real chat templates need a few thousand per message.
const TEMPLATE_FUEL: u64 = 5_000_000;

impl ChatTokenizer {
    /// Loads `tokenizer.json`, `tokenizer_config.json` (optional) and `chat_template.jinja`
    /// (optional) from a model folder.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.exists() {
            return Err(Error::MissingFile {
                path: tok_path,
                hint: "a model folder needs tokenizer.json (a fast tokenizer); save one with transformers' \
                       `tokenizer.save_pretrained`"
                    .into(),
            });
        }
        let text = crate::fs::read_file(&tok_path, "")?;
        // The tokenizers crate panics on some malformed files (e.g. a damaged decoder).
        let tokenizer: tokenizers::Tokenizer =
            crate::error::catch_panic(&format!("tokenizer file `{}`", tok_path.display()), || text.parse())?
                .map_err(|e| Error::malformed(&tok_path, format!("not a tokenizers JSON file ({e})")))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: serde_json::Value = if cfg_path.exists() {
            let text = crate::fs::read_file(&cfg_path, "")?;
            serde_json::from_str(&text).map_err(|e| Error::malformed(&cfg_path, format!("not JSON ({e})")))?
        } else {
            serde_json::Value::Null
        };
        let from_config = match cfg.get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
            _ => None,
        };
        let jinja = dir.join("chat_template.jinja");
        let template = match from_config {
            Some(t) => Some(t),
            None if jinja.exists() => Some(crate::fs::read_file(&jinja, "")?),
            None => None,
        };
        let own_template = template.is_some();
        let this = ChatTokenizer {
            tokenizer,
            template: template.unwrap_or_else(|| FALLBACK_TEMPLATE.to_string()),
            own_template,
            bos_token: special_token(&cfg, "bos_token"),
            eos_token: special_token(&cfg, "eos_token"),
        };
        // Compile once now so a broken template is reported at load time, naming the file.
        this.env()
            .template_from_str(&this.template)
            .map_err(|e| Error::Template(format!("the chat template of `{}` does not compile: {e}", dir.display())))?;
        Ok(this)
    }

    fn env(&self) -> minijinja::Environment<'static> {
        let mut env = minijinja::Environment::new();
        // As transformers' `_compile_jinja_template`: jinja2 with trim_blocks and lstrip_blocks.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        // A bound on the work one render may do: a template with runaway loops (a hostile file,
        // or a GGUF's embedded template) ends with an error instead of never returning.
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |_fmt: String| -> String {
            // Templates use this for a "today is" line; a fixed date keeps rendering reproducible.
            "26 Jul 2024".to_string()
        });
        env
    }

    /// Renders `messages` with the model's chat template.
    ///
    /// ```
    /// # let model = secure_tuning::Model::load_dir("tests/fixtures/qwen2").unwrap();
    /// use secure_tuning::model::Message;
    /// let s = model.tokenizer().render(&[Message::user("Hi")], true).unwrap();
    /// assert_eq!(s, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    /// ```
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let env = self.env();
        let tmpl = env.template_from_str(&self.template).map_err(|e| Error::Template(e.to_string()))?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone().unwrap_or_default(),
            eos_token => self.eos_token.clone().unwrap_or_default(),
        })
        .map_err(|e| Error::Template(format!("rendering failed: {e}")))
    }

    /// Token ids of raw `text`; `add_special_tokens` applies the tokenizer's post-processor
    /// (e.g. a BOS token).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = crate::error::catch_panic("tokenizer input", || self.tokenizer.encode(text, add_special_tokens))?
            .map_err(|e| Error::Tokenizer(format!("cannot encode {}: {e}", crate::fs::excerpt(text, 80))))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of a chat prompt: the rendered template, without adding special tokens again
    /// (templates write their own BOS).
    pub fn encode_chat(&self, messages: &[Message], add_generation_prompt: bool) -> Result<Vec<u32>> {
        self.encode(&self.render(messages, add_generation_prompt)?, false)
    }

    /// Text of `ids`, skipping special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids, true).map_err(|e| Error::Tokenizer(format!("cannot decode: {e}")))
    }

    /// Id of a token string, if it is in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// The EOS token string from `tokenizer_config.json`.
    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// Whether the model ships a chat template (false: [`FALLBACK_TEMPLATE`] is used).
    pub fn has_own_template(&self) -> bool {
        self.own_template
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer
    }
}
