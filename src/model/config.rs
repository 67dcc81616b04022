//! Model configuration in two steps: [`HfConfig`] mirrors Hugging Face's `config.json`
//! (optional fields included) and converts once into [`Config`], where every fallback is
//! settled. Llama, Qwen2 and Mistral differ only in [`Config`] fields, never in code paths.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The supported decoder families (`model_type` in `config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Llama 2, Llama 3.x, TinyLlama, SmolLM and other `model_type: "llama"` checkpoints.
    Llama,
    /// Qwen2 and Qwen2.5: biases on q/k/v, usually tied embeddings.
    Qwen2,
    /// Mistral: Llama layout plus an optional sliding attention window.
    Mistral,
}

impl Arch {
    /// The `model_type` string Hugging Face uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Mistral => "mistral",
        }
    }
}

/// `config.json` exactly as Hugging Face writes it (only the fields this crate reads).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[allow(missing_docs)]
pub struct HfConfig {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default)]
    pub rms_norm_eps: Option<f64>,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    /// transformers >= 5 writes `rope_theta` and the scaling together under this key.
    #[serde(default)]
    pub rope_parameters: Option<serde_json::Value>,
    #[serde(default)]
    pub max_position_embeddings: Option<usize>,
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
    #[serde(default)]
    pub attention_bias: Option<bool>,
    #[serde(default)]
    pub mlp_bias: Option<bool>,
    #[serde(default)]
    pub sliding_window: Option<usize>,
    #[serde(default)]
    pub use_sliding_window: Option<bool>,
    #[serde(default)]
    pub max_window_layers: Option<usize>,
    #[serde(default)]
    pub hidden_act: Option<String>,
    #[serde(default)]
    pub bos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
}

/// Rotary embedding frequency scaling (`rope_scaling` in `config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RopeScaling {
    /// Plain rotary embeddings.
    None,
    /// Positions divided by `factor` (`rope_type: "linear"`).
    Linear {
        /// Position divisor.
        factor: f64,
    },
    /// Llama 3.1's frequency-dependent scaling (`rope_type: "llama3"`).
    Llama3 {
        /// Scale for low frequencies.
        factor: f64,
        /// Wavelength bound below which frequencies are divided by `factor`.
        low_freq_factor: f64,
        /// Wavelength bound above which frequencies are kept.
        high_freq_factor: f64,
        /// Context length of the original pre-training.
        original_max_position_embeddings: usize,
    },
}

/// Runtime configuration with every default settled.
///
/// ```
/// use secure_tuning::model::Config;
/// let json = r#"{"model_type":"qwen2","vocab_size":100,"hidden_size":64,
///   "intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,
///   "num_key_value_heads":2,"tie_word_embeddings":true}"#;
/// let cfg = Config::from_json_str(json, "config.json".as_ref()).unwrap();
/// assert_eq!(cfg.head_dim, 16);
/// assert!(cfg.qkv_bias && cfg.tie_word_embeddings);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Decoder family.
    pub arch: Arch,
    /// Vocabulary size (rows of `embed_tokens`).
    pub vocab_size: usize,
    /// Residual stream width.
    pub hidden_size: usize,
    /// MLP inner width.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (GQA when smaller than `num_heads`).
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Rotary base.
    pub rope_theta: f64,
    /// Rotary scaling.
    pub rope_scaling: RopeScaling,
    /// Longest position the model was configured for.
    pub max_position_embeddings: usize,
    /// `lm_head` shares `embed_tokens`' weight.
    pub tie_word_embeddings: bool,
    /// q/k/v projections have a bias.
    pub qkv_bias: bool,
    /// o projection has a bias (Llama `attention_bias`).
    pub o_bias: bool,
    /// gate/up/down projections have a bias (Llama `mlp_bias`).
    pub mlp_bias: bool,
    /// Sliding attention window for each layer, if any.
    pub sliding_window: Vec<Option<usize>>,
    /// End-of-sequence token ids from `config.json`.
    pub eos_token_ids: Vec<u32>,
    /// Beginning-of-sequence token id from `config.json`.
    pub bos_token_id: Option<u32>,
}

/// Token ids written as one number or a list of numbers (`eos_token_id` and friends).
pub(crate) fn token_ids(v: Option<&serde_json::Value>) -> Vec<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect(),
        _ => vec![],
    }
}

impl Config {
    /// Reads and settles `config.json` at `path`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::fs::read_file(path, "a model folder needs config.json")?;
        Self::from_json_str(&text, path)
    }

    /// Parses and settles a `config.json` text; `path` names it in errors.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let hf: HfConfig =
            serde_json::from_str(text).map_err(|e| Error::malformed(path, format!("not a valid config.json ({e})")))?;
        Self::from_hf(hf, path)
    }

    /// Settles every fallback of a parsed [`HfConfig`].
    pub fn from_hf(hf: HfConfig, path: &Path) -> Result<Self> {
        let arch = match hf.model_type.as_str() {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "mistral" => Arch::Mistral,
            other => {
                return Err(Error::UnsupportedArchitecture { model_type: other.to_string(), path: path.to_path_buf() })
            }
        };
        let bad = |reason: String| Error::malformed(path, reason);
        if let Some(act) = &hf.hidden_act {
            if act != "silu" {
                return Err(bad(format!("hidden_act `{act}` is not supported (only silu)")));
            }
        }
        for (name, v) in [
            ("vocab_size", hf.vocab_size),
            ("hidden_size", hf.hidden_size),
            ("intermediate_size", hf.intermediate_size),
            ("num_hidden_layers", hf.num_hidden_layers),
            ("num_attention_heads", hf.num_attention_heads),
        ] {
            if v == 0 {
                return Err(bad(format!("{name} must be positive")));
            }
        }
        let num_kv_heads = hf.num_key_value_heads.unwrap_or(hf.num_attention_heads);
        if num_kv_heads == 0 || hf.num_attention_heads % num_kv_heads != 0 {
            return Err(bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {num_kv_heads}",
                hf.num_attention_heads
            )));
        }
        let head_dim = match hf.head_dim {
            Some(d) => d,
            None if hf.hidden_size % hf.num_attention_heads == 0 => hf.hidden_size / hf.num_attention_heads,
            None => {
                return Err(bad(format!(
                    "hidden_size {} is not divisible by num_attention_heads {} and head_dim is unset",
                    hf.hidden_size, hf.num_attention_heads
                )))
            }
        };
        if head_dim % 2 != 0 {
            return Err(bad(format!("head_dim {head_dim} must be even for rotary embeddings")));
        }
        // Sizes no real model has: a typo or a hostile file, which would otherwise ask for
        // terabytes or loop for ever.
        for (name, v, max) in [
            ("vocab_size", hf.vocab_size, 1 << 22),
            ("hidden_size", hf.hidden_size, 1 << 16),
            ("intermediate_size", hf.intermediate_size, 1 << 18),
            ("num_hidden_layers", hf.num_hidden_layers, 1 << 10),
            ("num_attention_heads", hf.num_attention_heads, 1 << 10),
            ("head_dim", head_dim, 1 << 12),
        ] {
            if v > max {
                return Err(bad(format!("{name} {v} is larger than any supported model ({max})")));
            }
        }
        let rope_scaling = parse_rope_scaling(hf.rope_scaling.as_ref().or(hf.rope_parameters.as_ref())).map_err(bad)?;
        let rope_theta =
            hf.rope_theta.or_else(|| hf.rope_parameters.as_ref()?.get("rope_theta")?.as_f64()).unwrap_or(10_000.0);
        let rms_norm_eps = hf.rms_norm_eps.unwrap_or(1e-6);
        if !(rope_theta.is_finite() && rope_theta > 1.0) {
            return Err(bad(format!("rope_theta {rope_theta} must be a finite number above 1")));
        }
        if !(rms_norm_eps.is_finite() && rms_norm_eps > 0.0 && rms_norm_eps < 1.0) {
            return Err(bad(format!("rms_norm_eps {rms_norm_eps} must be a small positive number")));
        }
        let max_position_embeddings = hf.max_position_embeddings.unwrap_or(4096);
        if max_position_embeddings == 0 {
            return Err(bad("max_position_embeddings must be positive".into()));
        }
        let n = hf.num_hidden_layers;
        let sliding_window = match arch {
            Arch::Mistral => vec![hf.sliding_window; n],
            // Qwen2 slides only when asked, and only from `max_window_layers` on (as HF does).
            Arch::Qwen2 if hf.use_sliding_window == Some(true) => {
                let from = hf.max_window_layers.unwrap_or(n);
                (0..n).map(|l| if l >= from { hf.sliding_window } else { None }).collect()
            }
            _ => vec![None; n],
        };
        let attention_bias = hf.attention_bias.unwrap_or(false);
        Ok(Config {
            arch,
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_layers: n,
            num_heads: hf.num_attention_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps,
            rope_theta,
            rope_scaling,
            max_position_embeddings,
            tie_word_embeddings: hf.tie_word_embeddings.unwrap_or(false),
            qkv_bias: arch == Arch::Qwen2 || attention_bias,
            o_bias: arch == Arch::Llama && attention_bias,
            mlp_bias: arch == Arch::Llama && hf.mlp_bias.unwrap_or(false),
            sliding_window,
            eos_token_ids: token_ids(hf.eos_token_id.as_ref()),
            bos_token_id: token_ids(hf.bos_token_id.as_ref()).first().copied(),
        })
    }

    /// Number of parameters implied by the config.
    ///
    /// ```
    /// # use secure_tuning::model::Config;
    /// let cfg = Config::from_json_str(r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,
    ///   "intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2}"#, "c".as_ref()).unwrap();
    /// // embed 80 + lm_head 80 + attn 4*64 + mlp 3*128 + 3 norms of 8
    /// assert_eq!(cfg.num_params(), 80 + 80 + 256 + 384 + 24);
    /// ```
    pub fn num_params(&self) -> usize {
        let (d, i, hd) = (self.hidden_size, self.intermediate_size, self.head_dim);
        let (q, kv) = (self.num_heads * hd, self.num_kv_heads * hd);
        let mut attn = d * q + 2 * d * kv + q * d;
        if self.qkv_bias {
            attn += q + 2 * kv;
        }
        if self.o_bias {
            attn += d;
        }
        let mut mlp = 3 * d * i;
        if self.mlp_bias {
            mlp += 2 * i + d;
        }
        let layer = attn + mlp + 2 * d;
        let embed = self.vocab_size * d;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        embed + head + self.num_layers * layer + d
    }
}

fn parse_rope_scaling(v: Option<&serde_json::Value>) -> std::result::Result<RopeScaling, String> {
    let Some(obj) = v.and_then(|v| v.as_object()) else {
        return Ok(RopeScaling::None);
    };
    let kind = obj.get("rope_type").or_else(|| obj.get("type")).and_then(|t| t.as_str()).unwrap_or("default");
    let num = |key: &str| {
        obj.get(key)
            .and_then(|x| x.as_f64())
            .filter(|x| x.is_finite() && *x > 0.0)
            .ok_or_else(|| format!("rope_scaling of type `{kind}` needs a positive number `{key}`"))
    };
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear { factor: num("factor")? }),
        "llama3" => {
            let (low, high) = (num("low_freq_factor")?, num("high_freq_factor")?);
            if high <= low {
                return Err(format!("rope_scaling: high_freq_factor {high} must be above low_freq_factor {low}"));
            }
            Ok(RopeScaling::Llama3 {
                factor: num("factor")?,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
            })
        }
        other => Err(format!("rope_scaling type `{other}` is not supported (supported: default, linear, llama3)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> Result<Config> {
        let json = format!(
            r#"{{"vocab_size":32,"hidden_size":16,"intermediate_size":32,"num_hidden_layers":2,
            "num_attention_heads":4{extra}}}"#
        );
        Config::from_json_str(&json, Path::new("config.json"))
    }

    #[test]
    fn unknown_model_type_is_named_in_the_error() {
        let e = cfg(r#","model_type":"gpt2""#).unwrap_err().to_string();
        assert!(e.contains("gpt2") && e.contains("llama, qwen2, mistral"), "{e}");
    }

    #[test]
    fn llama3_rope_scaling_is_parsed() {
        let c = cfg(r#","model_type":"llama","rope_scaling":{"rope_type":"llama3","factor":8.0,
            "low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192}"#)
        .unwrap();
        assert!(matches!(c.rope_scaling, RopeScaling::Llama3 { factor, .. } if factor == 8.0));
    }

    #[test]
    fn transformers5_rope_parameters_are_read() {
        let c = cfg(r#","model_type":"llama","rope_parameters":{"rope_type":"llama3","rope_theta":500000.0,
            "factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":16}"#)
        .unwrap();
        assert_eq!(c.rope_theta, 500000.0);
        assert!(matches!(c.rope_scaling, RopeScaling::Llama3 { .. }));
        let d = cfg(r#","model_type":"qwen2","rope_parameters":{"rope_type":"default","rope_theta":1e6}"#).unwrap();
        assert_eq!((d.rope_theta, d.rope_scaling), (1e6, RopeScaling::None));
    }

    #[test]
    fn unsupported_rope_type_is_an_error() {
        let e =
            cfg(r#","model_type":"llama","rope_scaling":{"rope_type":"yarn","factor":4.0}"#).unwrap_err().to_string();
        assert!(e.contains("yarn"), "{e}");
    }

    #[test]
    fn mistral_slides_every_layer_qwen2_only_when_asked() {
        let m = cfg(r#","model_type":"mistral","sliding_window":8"#).unwrap();
        assert_eq!(m.sliding_window, vec![Some(8), Some(8)]);
        let q = cfg(r#","model_type":"qwen2","sliding_window":8"#).unwrap();
        assert_eq!(q.sliding_window, vec![None, None]);
    }

    #[test]
    fn gqa_heads_must_divide() {
        let e = cfg(r#","model_type":"llama","num_key_value_heads":3"#).unwrap_err();
        assert!(e.to_string().contains("num_key_value_heads"));
    }
}
