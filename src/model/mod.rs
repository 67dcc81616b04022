//! The model: configuration, the hooked decoder, module identities, loading, chat formatting
//! and generation. This layer knows tensors and tokens only; probes, robustness and training
//! build on it and it imports none of them.

mod activations;
mod chat;
mod config;
mod decoder;
mod generate;
pub mod gguf;
mod load;
mod modules;
mod weights;

pub use activations::{Activations, Capture, HookPoint, LogitsMode};
pub use chat::{ChatTokenizer, Message, FALLBACK_TEMPLATE};
pub use config::{Arch, Config, HfConfig, RopeScaling};
pub use decoder::{Batch, Decoder, KvCache};
pub use generate::{GenerateOptions, Sampling};
pub use gguf::{import_gguf, GgufImport};
pub use load::{hub_offline, is_hub_id, LoadOptions};
pub use modules::{ModuleId, ModuleKind, ModuleSet};
pub use weights::{load_tensors, save_safetensors, write_atomic, Weights};

use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor, Var};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// A loaded chat model: decoder weights, tokenizer and chat template.
///
/// Weights are plain tensors until [`Model::make_trainable`] turns some into candle `Var`s;
/// inference ([`Model::forward`]) always runs on detached views sharing the same storage, so it
/// builds no autograd graph, while [`Model::forward_train`] lets gradients reach the `Var`s.
///
/// ```
/// use secure_tuning::Model;
/// let model = Model::load_dir("tests/fixtures/qwen2").unwrap();
/// assert_eq!(model.to_string(), "qwen2, 3 layers, 33.7K params, cpu f32");
/// ```
pub struct Model {
    config: Config,
    tokenizer: ChatTokenizer,
    weights: Weights,
    vars: BTreeMap<String, Var>,
    decoder: Decoder,
    train_decoder: Option<Decoder>,
    dir: PathBuf,
    name: String,
    eos_ids: Vec<u32>,
    device: Device,
}

impl Model {
    /// Loads a model by name: `default` (the embedded model), a local folder, or a hub id
    /// (`org/name`) through hf-hub's cache. Weights are f32 on the CPU.
    pub fn load(name: &str) -> Result<Self> {
        Self::load_with(name, &LoadOptions::default())
    }

    /// [`Model::load`] with a revision, dtype and device.
    pub fn load_with(name: &str, opts: &LoadOptions) -> Result<Self> {
        if name == "default" {
            let dir = crate::recipe::default_model_dir();
            if !dir.join("model.safetensors").exists() {
                return Err(Error::MissingFile {
                    path: dir,
                    hint: "the embedded default model is missing; rebuild it with `secure-tuning build-default`".into(),
                });
            }
            let mut model = Self::load_dir_with(&dir, opts)?;
            model.name = "default".into();
            return Ok(model);
        }
        let path = Path::new(name);
        if path.is_dir() {
            return Self::load_dir_with(path, opts);
        }
        if !is_hub_id(name) || name.starts_with('.') || name.contains("..") {
            return Err(Error::MissingFile {
                path: path.to_path_buf(),
                hint: "it is neither a model folder nor a hub id like `org/name`".into(),
            });
        }
        let dir = load::resolve_hub(name, opts.revision.as_deref())?;
        let mut model = Self::load_dir_with(&dir, opts)?;
        model.name = name.to_string();
        Ok(model)
    }

    /// Loads a Hugging Face model folder (config.json, tokenizer.json, safetensors).
    pub fn load_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Self::load_dir_with(dir.as_ref(), &LoadOptions::default())
    }

    /// [`Model::load_dir`] with a dtype and device.
    pub fn load_dir_with(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::MissingFile {
                path: dir.to_path_buf(),
                hint: "pass a folder holding config.json, tokenizer.json and model.safetensors".into(),
            });
        }
        let config = Config::from_file(&dir.join("config.json"))?;
        let tokenizer = ChatTokenizer::from_dir(dir)?;
        let files = weights::safetensors_files(dir)?;
        let weights = weights::load_safetensors(&files, opts.dtype(), &opts.device)?;
        let decoder = Decoder::load(&weights::WeightSource::new(&weights, dir), &config)?;
        let mut eos_ids = load::generation_eos_ids(dir)?;
        eos_ids.extend(&config.eos_token_ids);
        eos_ids.extend(tokenizer.eos_token().and_then(|t| tokenizer.token_id(t)));
        eos_ids.sort_unstable();
        eos_ids.dedup();
        Ok(Model {
            name: dir.display().to_string(),
            config,
            tokenizer,
            weights,
            vars: BTreeMap::new(),
            decoder,
            train_decoder: None,
            dir: dir.to_path_buf(),
            eos_ids,
            device: opts.device.clone(),
        })
    }

    /// Runs the model without building an autograd graph.
    pub fn forward(&self, batch: &Batch, capture: &Capture) -> Result<Activations> {
        self.decoder.forward(batch, capture, None)
    }

    /// Runs the model continuing the sequence in `cache` (and appending to it).
    pub fn forward_cached(&self, batch: &Batch, capture: &Capture, cache: &mut KvCache) -> Result<Activations> {
        if batch.lengths.len() != 1 {
            return Err(Error::invalid("batch", "cached decoding takes one sequence at a time"));
        }
        self.decoder.forward(batch, capture, Some(cache))
    }

    /// Runs the model so that gradients reach the trainable parameters
    /// (see [`Model::make_trainable`]).
    pub fn forward_train(&self, batch: &Batch, capture: &Capture) -> Result<Activations> {
        self.train_decoder.as_ref().unwrap_or(&self.decoder).forward(batch, capture, None)
    }

    /// Makes the named parameters trainable and returns their `Var`s, in name order. Calling it
    /// again with other names adds to the trainable set.
    pub fn make_trainable(&mut self, names: &[String]) -> Result<Vec<(String, Var)>> {
        for name in names {
            if self.vars.contains_key(name) {
                continue;
            }
            let t = self
                .weights
                .get(name)
                .ok_or_else(|| Error::invalid("parameter", format!("`{name}` is not a parameter of this model")))?;
            self.vars.insert(name.clone(), Var::from_tensor(t)?);
        }
        self.rebuild()?;
        Ok(names.iter().map(|n| (n.clone(), self.vars[n].clone())).collect())
    }

    /// Replaces the named parameters' values (same shapes; cast to the model's dtype), e.g. to
    /// apply a weight edit or a perturbation.
    ///
    /// ```
    /// let mut model = secure_tuning::Model::load_dir("tests/fixtures/llama3")?;
    /// let name = "model.layers.0.mlp.up_proj.weight".to_string();
    /// let zero = model.weights()[&name].zeros_like()?;
    /// model.set_weights([(name.clone(), zero)])?;
    /// assert_eq!(model.weights()[&name].abs()?.sum_all()?.to_scalar::<f32>()?, 0.0);
    /// # Ok::<(), secure_tuning::Error>(())
    /// ```
    pub fn set_weights(&mut self, new: impl IntoIterator<Item = (String, Tensor)>) -> Result<()> {
        for (name, t) in new {
            let old = self
                .weights
                .get(&name)
                .ok_or_else(|| Error::invalid("parameter", format!("`{name}` is not a parameter of this model")))?;
            if old.dims() != t.dims() {
                return Err(Error::ShapeMismatch {
                    name: name.clone(),
                    expected: old.dims().to_vec(),
                    found: t.dims().to_vec(),
                    hint: "a replacement must have the parameter's own shape".into(),
                });
            }
            let t = t.to_dtype(old.dtype())?.to_device(&self.device)?;
            match self.vars.get(&name) {
                Some(var) => var.set(&t)?,
                None => {
                    self.weights.insert(name, t);
                }
            }
        }
        self.rebuild()
    }

    /// Makes every parameter a plain tensor again (values kept).
    pub fn freeze_all(&mut self) -> Result<()> {
        self.vars.clear();
        self.rebuild()
    }

    /// Rebuilds both decoders after the set of `Var`s changed: the training one over the vars,
    /// the inference one over detached views of the same storage.
    fn rebuild(&mut self) -> Result<()> {
        for (name, var) in &self.vars {
            self.weights.insert(name.clone(), var.as_tensor().detach());
        }
        self.decoder = Decoder::load(&weights::WeightSource::new(&self.weights, &self.dir), &self.config)?;
        self.train_decoder = if self.vars.is_empty() {
            None
        } else {
            let mut live = self.weights.clone();
            for (name, var) in &self.vars {
                live.insert(name.clone(), var.as_tensor().clone());
            }
            Some(Decoder::load(&weights::WeightSource::new(&live, &self.dir), &self.config)?)
        };
        Ok(())
    }

    /// Names of the parameter tensors of `modules` (weights, and biases where the config has them).
    ///
    /// ```
    /// # let model = secure_tuning::Model::load_dir("tests/fixtures/qwen2").unwrap();
    /// use secure_tuning::model::{ModuleSet, ModuleKind};
    /// let names = model.param_names(&ModuleSet::kinds(1, &[ModuleKind::Q]));
    /// assert_eq!(names, ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj.bias"]);
    /// ```
    pub fn param_names(&self, modules: &ModuleSet) -> Vec<String> {
        modules
            .iter()
            .filter(|m| m.layer < self.config.num_layers)
            .flat_map(|m| decoder::module_param_names(m, &self.config))
            .collect()
    }

    /// Every parameter tensor by HF name (detached views; tied `lm_head` is not listed).
    pub fn weights(&self) -> &Weights {
        &self.weights
    }

    /// Total number of parameters.
    pub fn num_params(&self) -> usize {
        self.weights.values().map(|t| t.elem_count()).sum()
    }

    /// Number of parameters (elements) of the modules in `set`.
    ///
    /// ```
    /// # let model = secure_tuning::Model::load_dir("tests/fixtures/llama3").unwrap();
    /// use secure_tuning::model::ModuleSet;
    /// let n = model.config().num_layers;
    /// assert_eq!(model.num_params_of(&ModuleSet::all(n)), model.num_params_of(&ModuleSet::attn(n)) + model.num_params_of(&ModuleSet::mlp(n)));
    /// ```
    pub fn num_params_of(&self, set: &ModuleSet) -> usize {
        self.param_names(set).iter().map(|n| self.weights[n].elem_count()).sum()
    }

    /// Saves the model as a Hugging Face folder (config, tokenizer files, model.safetensors),
    /// each file written atomically.
    pub fn save_dir(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
        for f in
            ["config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"]
        {
            let src = self.dir.join(f);
            if src.exists() && src != dir.join(f) {
                let bytes = std::fs::read(&src).map_err(|source| Error::Io { path: src.clone(), source })?;
                weights::write_atomic(&dir.join(f), &bytes)?;
            }
        }
        weights::save_safetensors(&self.weights, &dir.join("model.safetensors"))
    }

    /// The settled configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The tokenizer and chat template.
    pub fn tokenizer(&self) -> &ChatTokenizer {
        &self.tokenizer
    }

    /// Token ids that end generation.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The weights' dtype.
    pub fn dtype(&self) -> DType {
        self.weights.values().next().map(|t| t.dtype()).unwrap_or(DType::F32)
    }

    /// Where the model was loaded from (folder or hub id).
    pub fn name(&self) -> &str {
        &self.name
    }
}

fn human_count(n: usize) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.1}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

impl fmt::Display for Model {
    /// One line: `llama, 22 layers, 1.1B params, cpu f32`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dev = if self.device.is_cpu() { "cpu" } else { "cuda" };
        write!(
            f,
            "{}, {} layers, {} params, {dev} {}",
            self.config.arch.as_str(),
            self.config.num_layers,
            human_count(self.num_params()),
            self.dtype().as_str()
        )
    }
}

impl Clone for Model {
    /// An independent copy: trainable (`Var`) weights are copied, frozen ones shared (they are
    /// never written), and the copy starts with nothing trainable.
    fn clone(&self) -> Self {
        let weights: Weights = self
            .weights
            .iter()
            .map(|(k, t)| {
                let t = if self.vars.contains_key(k) { t.copy().expect("tensor copy") } else { t.clone() };
                (k.clone(), t)
            })
            .collect();
        let decoder = Decoder::load(&weights::WeightSource::new(&weights, &self.dir), &self.config)
            .expect("the same weights loaded before");
        Model {
            config: self.config.clone(),
            tokenizer: self.tokenizer.clone(),
            weights,
            vars: BTreeMap::new(),
            decoder,
            train_decoder: None,
            dir: self.dir.clone(),
            name: self.name.clone(),
            eos_ids: self.eos_ids.clone(),
            device: self.device.clone(),
        }
    }
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Model({self}, from {})", self.name)
    }
}
