//! Importing llama.cpp GGUF files into Hugging Face layout, so that [`Model::load_dir`] (and
//! everything built on it: probes, robustness, fine-tuning) works on the many chat models that
//! are published, or packaged on PyPI, only as GGUF.
//!
//! [`import_gguf`] reads the file with candle's `gguf_file`, and:
//! - dequantizes every tensor to f32 (the import is exact: the f32 weights are what the
//!   quantized file encodes);
//! - renames tensors to Hugging Face names (`blk.3.attn_q.weight` →
//!   `model.layers.3.self_attn.q_proj.weight`, `token_embd` → `model.embed_tokens`, ...);
//! - for `general.architecture = llama`, undoes the row permutation llama.cpp's converter
//!   applies to `q_proj` / `k_proj` (weights and biases) so that its interleaved rotary
//!   embedding matches HF's rotate-half: GGUF rows are `w.reshape(heads, 2, head_dim/2, in)
//!   .swapaxes(1, 2)` of HF's, with `heads = num_key_value_heads` for `k_proj`; Qwen2 files are
//!   not permuted;
//! - writes `config.json` from the `{arch}.*` metadata, `tokenizer.json` rebuilt from the
//!   `tokenizer.ggml.*` metadata (byte-level BPE vocabulary and merges, control tokens as
//!   special added tokens, the pre-tokenizer `tokenizer.ggml.pre` names), `tokenizer_config.json`
//!   with `tokenizer.chat_template` and the special tokens, and `generation_config.json`.
//!
//! Supported: architectures `llama` (Llama, SmolLM, Mistral-as-llama) and `qwen2`; tokenizer
//! model `gpt2` (byte-level BPE) with pre-tokenizers `default`/`gpt-2`, `smollm`/`starcoder`/
//! `refact`, `llama3`/`llama-bpe` and `qwen2`. Anything else is refused with an error that names
//! the key and value (SentencePiece `llama` tokenizers, Llama 3.1's `rope_freqs` scaling, fused
//! or unknown tensors), rather than importing a model that would silently differ.
//!
//! [`compare_with_candle`] checks an import against candle-transformers' `quantized_llama`
//! running the same GGUF: on the quantized weights as llama.cpp would, or on their f32
//! dequantization (which isolates our decoder from the quantized matmuls).
//!
//! ```no_run
//! use secure_tuning::model::gguf::import_gguf;
//! let report = import_gguf("SmolLM2-135M-Instruct.Q4_1.gguf".as_ref(), "smollm2-135m".as_ref())?;
//! println!("{report}");
//! let model = secure_tuning::Model::load_dir("smollm2-135m")?;
//! # Ok::<(), secure_tuning::Error>(())
//! ```

mod parity;
mod tokenizer;

pub use parity::{compare_with_candle, GgufParity};

use super::{weights, Model, Weights};
use crate::error::{Error, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// What [`import_gguf`] did; its `Display` is one line (see the module example).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GgufImport {
    /// The GGUF file.
    pub file: PathBuf,
    /// The Hugging Face folder written.
    pub out: PathBuf,
    /// `general.architecture`.
    pub architecture: String,
    /// `general.name`, if set.
    pub name: Option<String>,
    /// Tensors imported.
    pub tensors: usize,
    /// Parameters imported (tied `lm_head` counted once).
    pub params: usize,
    /// How many tensors had each GGUF storage type (`Q4_1`, `Q8_0`, `F32`, ...).
    pub storage_types: BTreeMap<String, usize>,
    /// `q_proj` / `k_proj` tensors whose llama.cpp row permutation was undone.
    pub unpermuted: usize,
    /// `tokenizer.ggml.pre`, the pre-tokenizer rebuilt.
    pub pre_tokenizer: String,
    /// Vocabulary size of the rebuilt tokenizer.
    pub vocab_size: usize,
    /// Wall-clock seconds.
    pub seconds: f64,
}

impl std::fmt::Display for GgufImport {
    /// `imported llama "Smollm2 135M" (272 tensors, 134.5M params; Q4_1 x210, ...) into DIR in 4.1s`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let types: Vec<String> = self.storage_types.iter().map(|(t, n)| format!("{t} x{n}")).collect();
        write!(
            f,
            "imported {} {:?} ({} tensors, {:.1}M params; {}; {} q/k tensors un-permuted; tokenizer: {} BPE tokens, \
             pre-tokenizer `{}`) into {} in {:.1}s",
            self.architecture,
            self.name.as_deref().unwrap_or("(unnamed)"),
            self.tensors,
            self.params as f64 / 1e6,
            types.join(", "),
            self.unpermuted,
            self.vocab_size,
            self.pre_tokenizer,
            self.out.display(),
            self.seconds
        )
    }
}

/// Typed reads of GGUF metadata; errors name the file and the key.
struct Meta<'a> {
    md: &'a HashMap<String, Value>,
    path: &'a Path,
}

impl Meta<'_> {
    fn missing(&self, key: &str) -> Error {
        Error::malformed(self.path, format!("GGUF metadata key `{key}` is missing"))
    }

    fn wrong(&self, key: &str, what: &str) -> Error {
        Error::malformed(self.path, format!("GGUF metadata key `{key}` is not {what}"))
    }

    fn num(&self, key: &str) -> Result<Option<f64>> {
        let Some(v) = self.md.get(key) else { return Ok(None) };
        Ok(Some(match v {
            Value::U8(x) => *x as f64,
            Value::I8(x) => *x as f64,
            Value::U16(x) => *x as f64,
            Value::I16(x) => *x as f64,
            Value::U32(x) => *x as f64,
            Value::I32(x) => *x as f64,
            Value::U64(x) => *x as f64,
            Value::I64(x) => *x as f64,
            Value::F32(x) => *x as f64,
            Value::F64(x) => *x,
            _ => return Err(self.wrong(key, "a number")),
        }))
    }

    fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| self.missing(key))
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.num(key)? {
            Some(x) if x >= 0.0 && x.fract() == 0.0 => Ok(Some(x as usize)),
            Some(_) => Err(self.wrong(key, "a non-negative integer")),
            None => Ok(None),
        }
    }

    fn str(&self, key: &str) -> Result<Option<&str>> {
        match self.md.get(key) {
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.wrong(key, "a string")),
            None => Ok(None),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.md.get(key) {
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.wrong(key, "a boolean")),
            None => Ok(None),
        }
    }

    fn strings(&self, key: &str) -> Result<Vec<String>> {
        match self.md.get(key) {
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    _ => Err(self.wrong(key, "an array of strings")),
                })
                .collect(),
            Some(_) => Err(self.wrong(key, "an array")),
            None => Err(self.missing(key)),
        }
    }

    fn ints(&self, key: &str) -> Result<Option<Vec<i64>>> {
        match self.md.get(key) {
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| match v {
                    Value::I32(x) => Ok(*x as i64),
                    Value::U32(x) => Ok(*x as i64),
                    Value::I8(x) => Ok(*x as i64),
                    Value::U8(x) => Ok(*x as i64),
                    _ => Err(self.wrong(key, "an array of integers")),
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(_) => Err(self.wrong(key, "an array")),
            None => Ok(None),
        }
    }
}

/// The architectures this importer knows, with their HF names.
fn hf_architecture(arch: &str, path: &Path) -> Result<(&'static str, &'static str)> {
    match arch {
        "llama" => Ok(("llama", "LlamaForCausalLM")),
        "qwen2" => Ok(("qwen2", "Qwen2ForCausalLM")),
        other => Err(Error::UnsupportedArchitecture {
            model_type: format!("{other} (GGUF general.architecture)"),
            path: path.to_path_buf(),
        }),
    }
}

/// The Hugging Face name of a GGUF tensor, or `None` for a tensor this importer does not know.
///
/// ```
/// use secure_tuning::model::gguf::hf_tensor_name;
/// assert_eq!(hf_tensor_name("blk.3.attn_q.weight").unwrap(), "model.layers.3.self_attn.q_proj.weight");
/// assert_eq!(hf_tensor_name("output_norm.weight").unwrap(), "model.norm.weight");
/// assert!(hf_tensor_name("blk.0.attn_qkv.weight").is_none());
/// ```
pub fn hf_tensor_name(gguf: &str) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, param) = rest.rsplit_once('.')?;
    if param != "weight" && param != "bias" {
        return None;
    }
    let hf = match module {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{param}"))
}

/// Undoes llama.cpp's q/k row permutation: GGUF rows are HF's `reshape(heads, 2, head_dim/2, ..)`
/// with the two middle axes swapped; swapping them back gives HF's rotate-half layout.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use secure_tuning::model::gguf::unpermute_qk;
/// // One head of width 4, one input: HF rows [a0, a1, b0, b1] are stored as [a0, b0, a1, b1].
/// let gguf = Tensor::new(&[[0f32], [2.], [1.], [3.]], &Device::Cpu).unwrap();
/// let hf = unpermute_qk(&gguf, 1).unwrap();
/// assert_eq!(hf.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [0., 1., 2., 3.]);
/// ```
pub fn unpermute_qk(t: &Tensor, heads: usize) -> Result<Tensor> {
    let rows = t.dims()[0];
    if heads == 0 || rows % (2 * heads) != 0 {
        return Err(Error::invalid("q/k tensor", format!("{rows} rows do not split into {heads} heads of even width")));
    }
    let half = rows / heads / 2;
    let out = match t.dims() {
        [_] => t.reshape((heads, half, 2))?.transpose(1, 2)?.contiguous()?.reshape(rows)?,
        [_, cols] => t.reshape((heads, half, 2, *cols))?.transpose(1, 2)?.contiguous()?.reshape((rows, *cols))?,
        other => return Err(Error::invalid("q/k tensor", format!("expected 1 or 2 dimensions, found {other:?}"))),
    };
    Ok(out)
}

/// Imports the GGUF `file` into the Hugging Face folder `out` (created if needed; files are
/// written atomically). See the module docs for what is converted and what is refused.
pub fn import_gguf(file: &Path, out: &Path) -> Result<GgufImport> {
    let start = std::time::Instant::now();
    if out.join("model.safetensors.index.json").exists() {
        // Model::load_dir would read the old shards instead of the imported weights.
        return Err(Error::invalid(
            format!("output folder `{}`", out.display()),
            "it holds a sharded model (model.safetensors.index.json); import into an empty folder",
        ));
    }
    let (content, mut reader) = open(file)?;
    let meta = Meta { md: &content.metadata, path: file };
    let arch = meta.str("general.architecture")?.ok_or_else(|| meta.missing("general.architecture"))?.to_string();
    let (model_type, hf_class) = hf_architecture(&arch, file)?;
    if content.tensor_infos.contains_key("rope_freqs.weight") {
        return Err(Error::malformed(
            file,
            "holds `rope_freqs.weight` (Llama 3.1-style rope scaling stored as factors), which cannot be turned back \
             into config.json's rope_scaling; load the original Hugging Face checkpoint instead",
        ));
    }
    let tok = tokenizer::tokenizer_files(&meta)?;
    let mut config = config_json(&meta, &arch, model_type, hf_class, &content, &tok)?;
    let heads = meta.usize(&format!("{arch}.attention.head_count"))?;
    let kv_heads = meta.opt_usize(&format!("{arch}.attention.head_count_kv"))?.unwrap_or(heads);

    let mut tensors = Weights::new();
    let mut storage_types = BTreeMap::new();
    let mut unpermuted = 0;
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    for name in names {
        let hf = hf_tensor_name(name).ok_or_else(|| {
            Error::malformed(file, format!("tensor `{name}` has no Hugging Face counterpart this importer knows"))
        })?;
        let q = content
            .tensor(&mut reader, name, &Device::Cpu)
            .map_err(|e| Error::malformed(file, format!("tensor `{name}`: {e}")))?;
        *storage_types.entry(format!("{:?}", q.dtype())).or_insert(0) += 1;
        let mut t = q.dequantize(&Device::Cpu)?;
        if arch == "llama" {
            if hf.contains("self_attn.q_proj") {
                t = unpermute_qk(&t, heads)?;
                unpermuted += 1;
            } else if hf.contains("self_attn.k_proj") {
                t = unpermute_qk(&t, kv_heads)?;
                unpermuted += 1;
            }
        }
        tensors.insert(hf, t);
    }
    // Llama files may carry biases (HF `attention_bias` covers q/k/v/o, `mlp_bias` the MLP);
    // Qwen2's q/k/v biases are implied by its model type.
    if arch == "llama" && tensors.keys().any(|k| k.contains("self_attn.") && k.ends_with(".bias")) {
        config["attention_bias"] = json!(true);
    }
    if tensors.keys().any(|k| k.contains(".mlp.") && k.ends_with(".bias")) {
        config["mlp_bias"] = json!(true);
    }
    let params = tensors.values().map(|t| t.elem_count()).sum();

    std::fs::create_dir_all(out).map_err(|source| Error::Write { path: out.to_path_buf(), source })?;
    let write_json = |name: &str, v: &serde_json::Value| {
        let text = serde_json::to_string_pretty(v).expect("JSON values serialise");
        crate::fs::write_atomic(&out.join(name), text.as_bytes())
    };
    write_json("config.json", &config)?;
    write_json("tokenizer.json", &tok.tokenizer)?;
    write_json("tokenizer_config.json", &tok.tokenizer_config)?;
    write_json("generation_config.json", &tok.generation_config)?;
    weights::save_safetensors(&tensors, &out.join("model.safetensors"))?;
    Ok(GgufImport {
        file: file.to_path_buf(),
        out: out.to_path_buf(),
        architecture: arch,
        name: meta.str("general.name")?.map(str::to_string),
        tensors: tensors.len(),
        params,
        storage_types,
        unpermuted,
        pre_tokenizer: tok.pre,
        vocab_size: tok.vocab_size,
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn open(file: &Path) -> Result<(Content, std::io::BufReader<std::fs::File>)> {
    let f = std::fs::File::open(file).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => {
            Error::MissingFile { path: file.to_path_buf(), hint: "pass the path of a .gguf model file".into() }
        }
        _ => Error::Read { path: file.to_path_buf(), source },
    })?;
    let mut reader = std::io::BufReader::new(f);
    let content = crate::error::catch_panic(&format!("GGUF file `{}`", file.display()), || Content::read(&mut reader))?
        .map_err(|e| Error::malformed(file, format!("not a readable GGUF file ({e})")))?;
    Ok((content, reader))
}

fn config_json(
    meta: &Meta,
    arch: &str,
    model_type: &str,
    hf_class: &str,
    content: &Content,
    tok: &tokenizer::TokenizerFiles,
) -> Result<serde_json::Value> {
    let key = |k: &str| format!("{arch}.{k}");
    let hidden = meta.usize(&key("embedding_length"))?;
    let heads = meta.usize(&key("attention.head_count"))?;
    let kv_heads = meta.opt_usize(&key("attention.head_count_kv"))?.unwrap_or(heads);
    if heads == 0 {
        return Err(meta.wrong(&key("attention.head_count"), "positive"));
    }
    let head_dim = meta.opt_usize(&key("attention.key_length"))?.unwrap_or(hidden / heads);
    if let Some(rope_dim) = meta.opt_usize(&key("rope.dimension_count"))? {
        if rope_dim != head_dim {
            return Err(Error::malformed(
                meta.path,
                format!("rotary width {rope_dim} differs from head width {head_dim}; partial rotary is not supported"),
            ));
        }
    }
    // The embedding's rows are the model's vocabulary (it may exceed the tokenizer's).
    let vocab = content
        .tensor_infos
        .get("token_embd.weight")
        .map(|t| t.shape.dims()[0])
        .ok_or_else(|| Error::malformed(meta.path, "tensor `token_embd.weight` is missing"))?;
    let rope_scaling = match meta.str(&key("rope.scaling.type"))? {
        None | Some("none") => serde_json::Value::Null,
        Some("linear") => {
            let factor =
                meta.num(&key("rope.scaling.factor"))?.ok_or_else(|| meta.missing(&key("rope.scaling.factor")))?;
            json!({"rope_type": "linear", "factor": factor})
        }
        Some(other) => {
            return Err(Error::malformed(
                meta.path,
                format!("rope scaling `{other}` is not supported (supported: none, linear)"),
            ))
        }
    };
    Ok(json!({
        "architectures": [hf_class],
        "model_type": model_type,
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": meta.usize(&key("feed_forward_length"))?,
        "num_hidden_layers": meta.usize(&key("block_count"))?,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": meta.num(&key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-6),
        "rope_theta": meta.num(&key("rope.freq_base"))?.unwrap_or(10_000.0),
        "rope_scaling": rope_scaling,
        "max_position_embeddings": meta.opt_usize(&key("context_length"))?.unwrap_or(4096),
        "tie_word_embeddings": !content.tensor_infos.contains_key("output.weight"),
        "attention_bias": false,
        "mlp_bias": false,
        "bos_token_id": tok.bos_id,
        "eos_token_id": tok.eos_id,
        "torch_dtype": "float32",
    }))
}

/// The folder [`Model::load_gguf`] imports `file` into: `$SECURE_TUNING_CACHE/gguf/` (default
/// `<system temp>/secure-tuning/gguf/`) + `<file stem>-<size>-<mtime>`, so an unchanged file is
/// imported once.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// # let file = dir.path().join("tiny.gguf");
/// std::fs::write(&file, b"GGUF").unwrap();
/// let cache = secure_tuning::model::gguf::import_cache_dir(&file).unwrap();
/// assert!(cache.file_name().unwrap().to_str().unwrap().starts_with("tiny-4-"));
/// ```
pub fn import_cache_dir(file: &Path) -> Result<PathBuf> {
    let meta = std::fs::metadata(file).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => {
            Error::MissingFile { path: file.to_path_buf(), hint: "pass the path of a .gguf model file".into() }
        }
        _ => Error::Read { path: file.to_path_buf(), source },
    })?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    Ok(crate::fs::cache_dir().join("gguf").join(format!("{stem}-{}-{mtime}", meta.len())))
}

impl Model {
    /// Loads a GGUF file: imports it once into [`import_cache_dir`] (reused while the file is
    /// unchanged; `gguf_import.json` there records the import) and loads that folder.
    ///
    /// ```no_run
    /// use secure_tuning::prelude::*;
    /// let model = Model::load_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")?;
    /// let reply = model.chat(&[Message::user("What is the capital of France?")], &GenerateOptions::default())?;
    /// # Ok::<(), secure_tuning::Error>(())
    /// ```
    pub fn load_gguf(file: impl AsRef<Path>) -> Result<Model> {
        let file = file.as_ref();
        let dir = import_cache_dir(file)?;
        let marker = dir.join("gguf_import.json");
        if !marker.exists() {
            let report = import_gguf(file, &dir)?;
            let json = serde_json::to_vec_pretty(&report).expect("the report serialises");
            crate::fs::write_atomic(&marker, &json)?;
        }
        let mut model = Model::load_dir(&dir)?;
        model.name = file.display().to_string();
        Ok(model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute_for_gqa_shapes() {
        // llama.cpp: w.reshape(heads, 2, hd/2, in).swapaxes(1, 2).reshape(rows, in)
        let (heads, hd, cols) = (3, 8, 5);
        let hf = Tensor::arange(0f32, (heads * hd * cols) as f32, &Device::Cpu)
            .unwrap()
            .reshape((heads * hd, cols))
            .unwrap();
        let gguf = hf
            .reshape((heads, 2, hd / 2, cols))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((heads * hd, cols))
            .unwrap();
        let back = unpermute_qk(&gguf, heads).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), hf.to_vec2::<f32>().unwrap());
        let bias = Tensor::arange(0f32, (heads * hd) as f32, &Device::Cpu).unwrap();
        let gbias = bias.reshape((heads, 2, hd / 2)).unwrap().transpose(1, 2).unwrap().flatten_all().unwrap();
        assert_eq!(unpermute_qk(&gbias, heads).unwrap().to_vec1::<f32>().unwrap(), bias.to_vec1::<f32>().unwrap());
        assert!(unpermute_qk(&hf, 5).is_err(), "24 rows do not split into 5 heads");
    }
}
