//! LoRA adapters: a trainable low-rank update `scale * B @ A` beside a frozen projection
//! (Hu et al. 2021), named as PEFT names them (`...q_proj.lora_A.weight`, `...lora_B.weight`).
//!
//! Adapters are kept in f32 whatever the base dtype, so a bf16 model trains f32 adapters.
//! `A` starts as PEFT's default (Kaiming-uniform, bound `1/sqrt(in)`), `B` as zeros, so an
//! adapted model computes exactly what the base does until the first update.

use super::modules::{ModuleId, ModuleKind, ModuleSet};
use super::weights::{self, Weights};
use super::Model;
use crate::error::{Error, Result};
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Where and how big the adapters are.
///
/// ```
/// use secure_tuning::model::{LoraConfig, ModuleKind};
/// let cfg = LoraConfig::new(16, 32.0);
/// assert_eq!(cfg.scale(), 2.0);
/// assert_eq!(cfg.kinds.len(), 7); // every projection kind by default
/// assert_eq!(LoraConfig { kinds: vec![ModuleKind::Q, ModuleKind::V], ..cfg }.kinds.len(), 2);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Rank `r` of the update.
    pub rank: usize,
    /// `alpha`; the update is scaled by `alpha / r`.
    pub alpha: f64,
    /// Which projection kinds get an adapter (in every layer).
    pub kinds: Vec<ModuleKind>,
    /// Seed for `A`'s initialisation.
    pub seed: u64,
}

impl LoraConfig {
    /// Rank `rank`, `alpha`, adapters on all seven projection kinds, seed 0.
    pub fn new(rank: usize, alpha: f64) -> Self {
        LoraConfig { rank, alpha, kinds: ModuleKind::ALL.to_vec(), seed: 0 }
    }

    /// The factor applied to `B @ A`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// The adapted modules of a model with `num_layers` layers.
    pub fn modules(&self, num_layers: usize) -> ModuleSet {
        ModuleSet::kinds(num_layers, &self.kinds)
    }

    /// Checks rank, alpha and kinds.
    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            return Err(Error::invalid("LoRA rank", "must be at least 1"));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(Error::invalid("LoRA alpha", format!("{} must be a positive number", self.alpha)));
        }
        if self.kinds.is_empty() {
            return Err(Error::invalid("LoRA target kinds", "name at least one of q, k, v, o, gate, up, down"));
        }
        Ok(())
    }
}

/// The names of a module's adapter tensors: `(A, B)`.
///
/// ```
/// use secure_tuning::model::{lora_names, ModuleId, ModuleKind};
/// let (a, b) = lora_names(&ModuleId::new(2, ModuleKind::Down));
/// assert_eq!(a, "model.layers.2.mlp.down_proj.lora_A.weight");
/// assert_eq!(b, "model.layers.2.mlp.down_proj.lora_B.weight");
/// ```
pub fn lora_names(m: &ModuleId) -> (String, String) {
    let prefix = m.hf_prefix();
    (format!("{prefix}.lora_A.weight"), format!("{prefix}.lora_B.weight"))
}

/// Whether a parameter name is an adapter tensor.
pub(crate) fn is_adapter(name: &str) -> bool {
    name.ends_with(".lora_A.weight") || name.ends_with(".lora_B.weight")
}

impl Model {
    /// Adds LoRA adapters (f32; `A` Kaiming-uniform, `B` zero) to every module `cfg` targets and
    /// returns their tensor names. The model computes exactly what it did until the adapters
    /// train; the trainer then trains only them (see [`Model::trainable_names`]).
    ///
    /// ```
    /// use secure_tuning::model::{LoraConfig, ModuleKind};
    /// let mut model = secure_tuning::Model::load_dir("tests/fixtures/llama3")?;
    /// let names = model.add_lora(&LoraConfig { kinds: vec![ModuleKind::Q], ..LoraConfig::new(4, 8.0) })?;
    /// assert_eq!(names.len(), 2 * model.config().num_layers); // A and B per layer
    /// assert_eq!(model.weights()[&names[0]].dims()[0], 4);
    /// # Ok::<(), secure_tuning::Error>(())
    /// ```
    pub fn add_lora(&mut self, cfg: &LoraConfig) -> Result<Vec<String>> {
        cfg.validate()?;
        if self.lora.is_some() {
            return Err(Error::invalid("LoRA", "this model already has adapters; merge them first (merge_lora)"));
        }
        let mut rng = crate::rng::Rng::new(cfg.seed);
        let mut names = Vec::new();
        for m in cfg.modules(self.config.num_layers).iter() {
            let (out_dim, in_dim) = self.weights[&m.weight_name()].dims2()?;
            if cfg.rank > in_dim.min(out_dim) {
                return Err(Error::invalid(
                    "LoRA rank",
                    format!("{} exceeds {}'s smaller side ({out_dim} x {in_dim})", cfg.rank, m.label()),
                ));
            }
            // PEFT's default: kaiming_uniform(a = sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)).
            let bound = 1.0 / (in_dim as f64).sqrt();
            let a: Vec<f32> = (0..cfg.rank * in_dim).map(|_| ((rng.unit() * 2.0 - 1.0) * bound) as f32).collect();
            let (a_name, b_name) = lora_names(m);
            self.weights.insert(a_name.clone(), Tensor::from_vec(a, (cfg.rank, in_dim), &self.device)?);
            self.weights.insert(b_name.clone(), Tensor::zeros((out_dim, cfg.rank), DType::F32, &self.device)?);
            names.extend([a_name, b_name]);
        }
        self.lora = Some(cfg.clone());
        self.rebuild()?;
        Ok(names)
    }

    /// The adapters' settings, if the model has LoRA adapters.
    pub fn lora(&self) -> Option<&LoraConfig> {
        self.lora.as_ref()
    }

    /// Folds every adapter into its weight (`W + scale * B @ A`, computed in f32) and removes
    /// the adapters; the result is a plain model of the base's dtype.
    pub fn merge_lora(&mut self) -> Result<()> {
        self.weights = self.merged_weights()?;
        self.vars.retain(|name, _| !is_adapter(name));
        self.lora = None;
        self.rebuild()
    }

    /// The weights with adapters folded in (the weights themselves when there are none).
    pub(super) fn merged_weights(&self) -> Result<Weights> {
        let Some(cfg) = &self.lora else {
            return Ok(self.weights.clone());
        };
        let mut out: Weights =
            self.weights.iter().filter(|(n, _)| !is_adapter(n)).map(|(n, t)| (n.clone(), t.clone())).collect();
        for m in cfg.modules(self.config.num_layers).iter() {
            let (a_name, b_name) = lora_names(m);
            let (a, b) = (&self.weights[&a_name], &self.weights[&b_name]);
            let w = &self.weights[&m.weight_name()];
            let merged = (w.to_dtype(DType::F32)? + (b.matmul(a)? * cfg.scale())?)?.to_dtype(w.dtype())?;
            out.insert(m.weight_name(), merged);
        }
        Ok(out)
    }

    /// Writes the adapters as a PEFT adapter folder: `adapter_config.json` and
    /// `adapter_model.safetensors` with PEFT's tensor names
    /// (`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`), which
    /// `peft.PeftModel.from_pretrained(base, dir)` loads onto the base model.
    ///
    /// ```
    /// use secure_tuning::model::LoraConfig;
    /// let mut model = secure_tuning::Model::load_dir("tests/fixtures/llama3")?;
    /// model.add_lora(&LoraConfig::new(2, 4.0))?;
    /// let dir = tempfile::tempdir()?;
    /// model.save_adapters(dir.path())?;
    /// let mut again = secure_tuning::Model::load_dir("tests/fixtures/llama3")?;
    /// again.load_adapters(dir.path())?;
    /// assert_eq!(again.lora(), model.lora());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn save_adapters(&self, dir: &Path) -> Result<()> {
        let cfg = self.lora.as_ref().ok_or_else(|| {
            Error::invalid("LoRA adapters", "this model has none; add them (add_lora) or train with LoRA first")
        })?;
        crate::fs::create_dir_all(dir)?;
        let adapters: Weights = self
            .weights
            .iter()
            .filter(|(n, _)| is_adapter(n))
            .map(|(n, t)| (format!("{PEFT_PREFIX}{n}"), t.clone()))
            .collect();
        weights::save_safetensors(&adapters, &dir.join("adapter_model.safetensors"))?;
        let config = serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": self.name,
            "r": cfg.rank,
            "lora_alpha": cfg.alpha,
            "lora_dropout": 0.0,
            "target_modules": cfg.kinds.iter().map(|k| k.projection()).collect::<Vec<_>>(),
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "use_rslora": false,
            "use_dora": false,
            "modules_to_save": null,
            "layers_to_transform": null,
            "rank_pattern": {},
            "alpha_pattern": {},
        });
        crate::fs::write_json(&dir.join("adapter_config.json"), &config)
    }

    /// Reads a PEFT LoRA adapter folder ([`Model::save_adapters`], or one PEFT wrote) onto this
    /// model. Options this crate does not implement (rsLoRA, DoRA, per-layer ranks, biases,
    /// a subset of layers) are refused by name.
    pub fn load_adapters(&mut self, dir: &Path) -> Result<()> {
        let cfg_path = dir.join("adapter_config.json");
        let v: serde_json::Value = crate::fs::read_json(&cfg_path, "a PEFT adapter_config.json")?;
        let bad = |why: String| Error::malformed(&cfg_path, why);
        if v.get("peft_type").and_then(|t| t.as_str()) != Some("LORA") {
            return Err(bad("`peft_type` is not LORA".into()));
        }
        for key in ["use_rslora", "use_dora", "fan_in_fan_out"] {
            if v.get(key).is_some_and(|x| !matches!(x, serde_json::Value::Bool(false) | serde_json::Value::Null)) {
                return Err(bad(format!("`{key}` is set; only plain LoRA is supported")));
            }
        }
        if v.get("bias").and_then(|b| b.as_str()).is_some_and(|b| b != "none") {
            return Err(bad("`bias` is not \"none\"; adapters with trained biases are not supported".into()));
        }
        for key in ["rank_pattern", "alpha_pattern"] {
            if v.get(key).and_then(|x| x.as_object()).is_some_and(|m| !m.is_empty()) {
                return Err(bad(format!("`{key}` is set; one rank and alpha for every module are supported")));
            }
        }
        if v.get("layers_to_transform").is_some_and(|x| !x.is_null()) {
            return Err(bad("`layers_to_transform` is set; adapters on every layer are supported".into()));
        }
        let rank = v.get("r").and_then(|r| r.as_u64()).ok_or_else(|| bad("no integer `r`".into()))? as usize;
        let alpha = v.get("lora_alpha").and_then(|a| a.as_f64()).ok_or_else(|| bad("no number `lora_alpha`".into()))?;
        let targets: Vec<String> = match v.get("target_modules") {
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect(),
            Some(serde_json::Value::String(s)) if s == "all-linear" => {
                ModuleKind::ALL.iter().map(|k| k.projection().to_string()).collect()
            }
            _ => return Err(bad("`target_modules` is not a list of projection names".into())),
        };
        let kinds = targets
            .iter()
            .map(|t| {
                ModuleKind::ALL
                    .into_iter()
                    .find(|k| k.projection() == t)
                    .ok_or_else(|| bad(format!("target module `{t}` is not one of q_proj ... down_proj")))
            })
            .collect::<Result<Vec<_>>>()?;
        let cfg = LoraConfig { rank, alpha, kinds, seed: 0 };
        cfg.validate()?;
        let file = dir.join("adapter_model.safetensors");
        let stored = weights::load_tensors(&file, &self.device)?;
        self.add_lora(&cfg)?;
        for m in cfg.modules(self.config.num_layers).iter() {
            let (a, b) = lora_names(m);
            for name in [a, b] {
                let peft = format!("{PEFT_PREFIX}{}", name.replace(".weight", ".default.weight"));
                let plain = format!("{PEFT_PREFIX}{name}");
                let t = stored.get(&plain).or_else(|| stored.get(&peft)).ok_or_else(|| Error::MissingTensor {
                    name: plain.clone(),
                    path: file.clone(),
                    hint: "the adapter does not cover every module its config targets".into(),
                })?;
                let want = self.weights[&name].dims().to_vec();
                if t.dims() != want.as_slice() {
                    return Err(Error::ShapeMismatch {
                        name: plain,
                        expected: want,
                        found: t.dims().to_vec(),
                        hint: "check `r` in adapter_config.json and that the adapter was made for this model".into(),
                    });
                }
                self.weights.insert(name, t.to_dtype(DType::F32)?);
            }
        }
        self.rebuild()
    }
}

/// What PEFT puts before a parameter's own name when it saves an adapter.
const PEFT_PREFIX: &str = "base_model.model.";
