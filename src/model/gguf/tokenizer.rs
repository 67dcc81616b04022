//! `tokenizer.json`, `tokenizer_config.json` and `generation_config.json` rebuilt from a GGUF
//! file's `tokenizer.ggml.*` metadata (byte-level BPE only).

use super::Meta;
use crate::error::{Error, Result};
use serde_json::json;
use std::path::Path;

/// The tokenizer files rebuilt from `tokenizer.ggml.*`.
pub(super) struct TokenizerFiles {
    pub(super) tokenizer: serde_json::Value,
    pub(super) tokenizer_config: serde_json::Value,
    pub(super) generation_config: serde_json::Value,
    pub(super) bos_id: Option<usize>,
    pub(super) eos_id: Option<usize>,
    pub(super) pre: String,
    pub(super) vocab_size: usize,
}

/// Llama 3's split regex (llama.cpp's `LLAMA_VOCAB_PRE_TYPE_LLAMA3`; HF's `Split` before a
/// regex-free `ByteLevel`); Qwen2's differs only in splitting digits one by one.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// HF's pre-tokenizer (and normalizer, and BPE `ignore_merges`) for llama.cpp's
/// `tokenizer.ggml.pre`, following the regexes llama.cpp assigns each name.
fn pre_tokenizer(
    pre: &str,
    add_prefix_space: bool,
    path: &Path,
) -> Result<(serde_json::Value, serde_json::Value, bool)> {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": true, "use_regex": use_regex});
    let split = |pattern: &str| json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false});
    let none = serde_json::Value::Null;
    Ok(match pre {
        "default" | "gpt-2" | "gpt2" => (byte_level(true), none, false),
        "smollm" | "starcoder" | "refact" => (
            json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)]}),
            none,
            false,
        ),
        "llama3" | "llama-bpe" | "llama-v3" => {
            (json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_SPLIT), byte_level(false)]}), none, true)
        }
        "qwen2" => (
            json!({"type": "Sequence", "pretokenizers": [split(QWEN2_SPLIT), byte_level(false)]}),
            json!({"type": "NFC"}),
            false,
        ),
        other => {
            return Err(Error::malformed(
                path,
                format!(
                    "tokenizer.ggml.pre `{other}` is not supported (supported: default, gpt-2, smollm, starcoder, \
                     refact, llama3, llama-bpe, qwen2); the tokenizer would split text differently from llama.cpp"
                ),
            ))
        }
    })
}

pub(super) fn tokenizer_files(meta: &Meta) -> Result<TokenizerFiles> {
    let model = meta.str("tokenizer.ggml.model")?.ok_or_else(|| meta.missing("tokenizer.ggml.model"))?;
    if model != "gpt2" {
        return Err(Error::malformed(
            meta.path,
            format!(
                "tokenizer.ggml.model `{model}` is not supported; only `gpt2` (byte-level BPE: SmolLM, Llama 3, Qwen2) \
                 is rebuilt. For SentencePiece (`llama`) models load the original Hugging Face checkpoint"
            ),
        ));
    }
    let tokens = meta.strings("tokenizer.ggml.tokens")?;
    let merges = meta.strings("tokenizer.ggml.merges")?;
    let types = meta.ints("tokenizer.ggml.token_type")?.unwrap_or_default();
    if !types.is_empty() && types.len() != tokens.len() {
        return Err(Error::malformed(meta.path, format!("{} token types for {} tokens", types.len(), tokens.len())));
    }
    let pre = meta.str("tokenizer.ggml.pre")?.unwrap_or("default").to_string();
    let add_prefix_space = meta.bool("tokenizer.ggml.add_space_prefix")?.unwrap_or(false);
    let (pre_tokenizer, normalizer, ignore_merges) = pre_tokenizer(&pre, add_prefix_space, meta.path)?;

    let mut vocab = serde_json::Map::new();
    for (id, t) in tokens.iter().enumerate() {
        vocab.entry(t.clone()).or_insert(json!(id)); // a repeated token keeps its first id
    }
    // llama.cpp token types: 3 = control (HF special added token), 4 = user-defined (added token).
    let added: Vec<serde_json::Value> = types
        .iter()
        .enumerate()
        .filter(|(_, ty)| **ty == 3 || **ty == 4)
        .map(|(id, ty)| {
            json!({"id": id, "content": tokens[id], "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": *ty == 3})
        })
        .collect();
    let id = |k: &str| -> Result<Option<usize>> {
        match meta.opt_usize(k)? {
            Some(i) if i < tokens.len() => Ok(Some(i)),
            Some(i) => Err(Error::malformed(meta.path, format!("`{k}` = {i} is outside the {} tokens", tokens.len()))),
            None => Ok(None),
        }
    };
    let (bos_id, eos_id) = (id("tokenizer.ggml.bos_token_id")?, id("tokenizer.ggml.eos_token_id")?);
    let (unk_id, pad_id, eot_id) = (
        id("tokenizer.ggml.unknown_token_id")?,
        id("tokenizer.ggml.padding_token_id")?,
        id("tokenizer.ggml.eot_token_id")?,
    );
    let add_bos = meta.bool("tokenizer.ggml.add_bos_token")?.unwrap_or(false);
    let token = |i: Option<usize>| i.map(|i| tokens[i].clone());
    let post_processor = match (add_bos, token(bos_id)) {
        (true, Some(bos)) => json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos.clone(): {"id": bos, "ids": [bos_id], "tokens": [bos]}},
        }),
        _ => json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true}),
    };
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": ignore_merges,
            "vocab": vocab, "merges": merges,
        },
    });
    let mut tokenizer_config = json!({
        "add_bos_token": add_bos,
        "add_eos_token": false,
        "bos_token": token(bos_id),
        "eos_token": token(eos_id),
        "unk_token": token(unk_id),
        "pad_token": token(pad_id),
        "clean_up_tokenization_spaces": false,
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    if let Some(template) = meta.str("tokenizer.chat_template")? {
        tokenizer_config["chat_template"] = json!(template);
    }
    let mut eos_ids: Vec<usize> = eos_id.into_iter().chain(eot_id).collect();
    eos_ids.dedup();
    let generation_config = json!({"bos_token_id": bos_id, "eos_token_id": eos_ids, "pad_token_id": pad_id});
    Ok(TokenizerFiles { tokenizer, tokenizer_config, generation_config, bos_id, eos_id, pre, vocab_size: tokens.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_pre_tokenizers_are_named() {
        let e = pre_tokenizer("falcon", false, Path::new("m.gguf")).unwrap_err().to_string();
        assert!(e.contains("falcon") && e.contains("smollm"), "{e}");
    }
}
