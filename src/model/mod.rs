//! The model: configuration, the hooked decoder, module identities, loading, chat formatting
//! and generation. This layer knows tensors and tokens only; probes, robustness and training
//! build on it and it imports none of them.

mod activations;
mod chat;
mod config;
mod decoder;
mod generate;
pub mod gguf;
mod inspect;
mod load;
mod lora;
mod modules;
mod weights;

pub use activations::{Activations, Capture, HookPoint, LogitsMode};
pub use chat::{ChatTokenizer, Message, FALLBACK_TEMPLATE};
pub use config::{Arch, Config, HfConfig, RopeScaling};
pub use decoder::{Batch, Decoder, KvCache};
pub use generate::{GenerateOptions, Sampling};
pub use gguf::{import_gguf, GgufImport};
pub use inspect::Inspection;
pub use load::{auto_device, default_model_dir, hub_offline, is_hub_id, parse_device, LoadOptions};
pub use lora::{lora_names, LoraConfig};
pub use modules::{ModuleId, ModuleKind, ModuleSet};
pub use weights::{load_tensors, save_safetensors, Weights};

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
    lora: Option<LoraConfig>,
}

/// The same tensor (shared storage, no copy) under an id from this code's own counter.
///
/// Candle's backward pass keys gradients by tensor id, from a process-wide counter. In an evcxr
/// notebook every cell is its own shared library with its own copy of that counter, so a model
/// loaded in one cell and trained in another would mix ids from two counters: a frozen weight and
/// an intermediate tensor of the training step could share an id, and the backward pass would
/// merge their gradients (a shape error, or silently wrong gradients). The training decoder is
/// built in the cell that trains, from tensors renumbered here.
fn with_fresh_id(t: &Tensor) -> Result<Tensor> {
    // `squeeze` of a size-1 dimension makes a new tensor over the same storage.
    Ok(t.unsqueeze(0)?.squeeze(0)?)
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
            let dir = default_model_dir();
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
        let expected = decoder::param_shapes(&config).into_iter().map(|(name, _)| name).collect();
        weights::check_all_used(&weights, &expected, dir)?;
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
            lora: None,
        })
    }

    /// A model of `config`'s shapes with random weights (normal, std 0.02; norm weights 1),
    /// drawn on `device` as `dtype`, with the tokenizer of the folder `tokenizer_dir`. For
    /// benchmarks and tests: nothing is downloaded.
    ///
    /// ```
    /// use secure_tuning::Model;
    /// let cfg = Model::load_dir("tests/fixtures/llama3")?.config().clone();
    /// let m = Model::random(&cfg, "tests/fixtures/llama3".as_ref(), &candle_core::Device::Cpu, candle_core::DType::F32)?;
    /// assert_eq!(m.num_params(), cfg.num_params());
    /// # Ok::<(), secure_tuning::Error>(())
    /// ```
    pub fn random(config: &Config, tokenizer_dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let tokenizer = ChatTokenizer::from_dir(tokenizer_dir)?;
        let shapes = decoder::param_shapes(config);
        let mut weights = Weights::new();
        for (name, shape) in shapes {
            let t = if name.ends_with("norm.weight") {
                Tensor::ones(shape, dtype, device)?
            } else {
                Tensor::randn(0f32, 0.02, shape, device)?.to_dtype(dtype)?
            };
            weights.insert(name, t);
        }
        let decoder = Decoder::load(&weights::WeightSource::new(&weights, tokenizer_dir), config)?;
        Ok(Model {
            name: format!("random {}", config.arch.as_str()),
            config: config.clone(),
            tokenizer,
            weights,
            vars: BTreeMap::new(),
            decoder,
            train_decoder: None,
            dir: tokenizer_dir.to_path_buf(),
            eos_ids: vec![],
            device: device.clone(),
            lora: None,
        })
    }

    /// Runs the model without building an autograd graph.
    pub fn forward(&self, batch: &Batch, capture: &Capture) -> Result<Activations> {
        self.decoder.forward(batch, capture, None)
    }

    /// Runs the model continuing the sequences in `cache` (and appending to it): one sequence, or
    /// as many as a [`KvCache::left_padded`] cache was made for.
    pub fn forward_cached(&self, batch: &Batch, capture: &Capture, cache: &mut KvCache) -> Result<Activations> {
        if batch.lengths.len() != cache.rows() || batch.lengths.iter().any(|&l| l != batch.lengths[0]) {
            return Err(Error::invalid(
                "batch",
                format!(
                    "cached decoding of {} sequences needs a cache made for that many, with the rows left-padded to \
                     one length (KvCache::left_padded; Model::generate_batch does this)",
                    batch.lengths.len()
                ),
            ));
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
        let scale = self.lora.as_ref().map(LoraConfig::scale);
        let source = |w| weights::WeightSource::new(w, &self.dir).with_lora_scale(scale);
        self.decoder = Decoder::load(&source(&self.weights), &self.config)?;
        self.train_decoder = if self.vars.is_empty() {
            None
        } else {
            let mut live = BTreeMap::new();
            for (name, t) in &self.weights {
                let t = match self.vars.get(name) {
                    Some(var) => var.as_tensor().clone(),
                    None => with_fresh_id(t)?,
                };
                live.insert(name.clone(), t);
            }
            Some(Decoder::load(&source(&live), &self.config)?.for_training())
        };
        Ok(())
    }

    /// The tensors that train for `modules`: their adapters when the model has LoRA adapters
    /// (modules without one train nothing), else their weights and biases.
    ///
    /// ```
    /// use secure_tuning::model::{LoraConfig, ModuleSet};
    /// let mut model = secure_tuning::Model::load_dir("tests/fixtures/llama3")?;
    /// let first = ModuleSet::layers(0..1);
    /// assert_eq!(model.trainable_names(&first), model.param_names(&first));
    /// model.add_lora(&LoraConfig::new(2, 4.0))?;
    /// assert!(model.trainable_names(&first).iter().all(|n| n.contains(".lora_")));
    /// # Ok::<(), secure_tuning::Error>(())
    /// ```
    pub fn trainable_names(&self, modules: &ModuleSet) -> Vec<String> {
        match &self.lora {
            None => self.param_names(modules),
            Some(cfg) => {
                let adapted = cfg.modules(self.config.num_layers);
                modules
                    .iter()
                    .filter(|m| adapted.contains(m))
                    .flat_map(|m| {
                        let (a, b) = lora_names(m);
                        [a, b]
                    })
                    .collect()
            }
        }
    }

    /// Every tensor that trains by default: all adapters with LoRA, else every parameter.
    pub fn default_trainable(&self) -> Vec<String> {
        match &self.lora {
            Some(_) => self.weights.keys().filter(|n| lora::is_adapter(n)).cloned().collect(),
            None => self.weights.keys().cloned().collect(),
        }
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

    /// Total number of parameters of the base model (adapters not counted).
    pub fn num_params(&self) -> usize {
        self.weights.iter().filter(|(n, _)| !lora::is_adapter(n)).map(|(_, t)| t.elem_count()).sum()
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
    /// each file written atomically. A folder that already holds other weights (shards, an index,
    /// pickled files) is refused: `transformers` and this crate would load those instead of the
    /// new `model.safetensors`. [`Model::save_dir_replacing`] removes them first.
    ///
    /// ```
    /// let model = secure_tuning::Model::load_dir("tests/fixtures/qwen2")?;
    /// let dir = tempfile::tempdir()?;
    /// std::fs::write(dir.path().join("model.safetensors.index.json"), "{}")?;
    /// assert!(model.save_dir(dir.path()).unwrap_err().to_string().contains("model.safetensors.index.json"));
    /// model.save_dir_replacing(dir.path())?;
    /// assert!(secure_tuning::Model::load_dir(dir.path()).is_ok());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn save_dir(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        check_save_folder(dir)?;
        self.write_dir(dir)
    }

    /// [`Model::save_dir`], first removing any other weight files the folder holds.
    pub fn save_dir_replacing(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        for name in weights::other_weight_files(dir)? {
            crate::fs::remove_leftover(&dir.join(name))?;
        }
        self.write_dir(dir)
    }

    fn write_dir(&self, dir: &Path) -> Result<()> {
        crate::fs::create_dir_all(dir)?;
        for f in
            ["config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"]
        {
            let src = self.dir.join(f);
            if src.exists() && src != dir.join(f) {
                let bytes = crate::fs::read_bytes(&src, "")?;
                crate::fs::write_atomic(&dir.join(f), &bytes)?;
            }
        }
        // Adapters are merged on the way out, so the folder is a plain Hugging Face model.
        weights::save_safetensors(&self.merged_weights()?, &dir.join("model.safetensors"))
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

    /// The base weights' dtype.
    pub fn dtype(&self) -> DType {
        self.weights.get("model.embed_tokens.weight").map(|t| t.dtype()).unwrap_or(DType::F32)
    }

    /// Where the model was loaded from (folder or hub id).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Names the model in reports (by default where it was loaded from).
    ///
    /// ```
    /// let mut model = secure_tuning::Model::load_dir("tests/fixtures/qwen2")?;
    /// model.set_name("tiny qwen2");
    /// assert_eq!(model.name(), "tiny qwen2");
    /// # Ok::<(), secure_tuning::Error>(())
    /// ```
    pub fn set_name(&mut self, name: impl Into<String>) {
        self.name = name.into();
    }
}

/// Checks that a model can be saved into `dir` without being shadowed: the folder must not hold
/// other weights (shards, an index, pickled files), which loaders would read instead.
pub fn check_save_folder(dir: &Path) -> Result<()> {
    let foreign = weights::other_weight_files(dir)?;
    if foreign.is_empty() {
        return Ok(());
    }
    Err(Error::invalid(
        format!("output folder `{}`", dir.display()),
        format!(
            "holds another model's weights ({}), which would be loaded instead of these; pick another folder, or \
             replace them (`--overwrite`, Model::save_dir_replacing)",
            foreign.join(", ")
        ),
    ))
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

impl Model {
    /// The HTML card shown in notebooks: the one-line summary and the shapes that matter.
    ///
    /// ```
    /// let model = secure_tuning::Model::load_dir("tests/fixtures/llama3").unwrap();
    /// assert!(model.html().contains("<td>num_key_value_heads</td><td>2</td>"));
    /// ```
    pub fn html(&self) -> String {
        let c = self.config();
        let rows = [
            ("source", crate::display::escape_html(self.name())),
            ("hidden_size", c.hidden_size.to_string()),
            ("intermediate_size", c.intermediate_size.to_string()),
            ("num_attention_heads", c.num_heads.to_string()),
            ("num_key_value_heads", c.num_kv_heads.to_string()),
            ("vocab_size", c.vocab_size.to_string()),
            ("chat template", if self.tokenizer().has_own_template() { "own" } else { "fallback" }.to_string()),
        ];
        let table: String = rows.iter().map(|(k, v)| format!("<tr><td>{k}</td><td>{v}</td></tr>")).collect();
        format!("<div><b>{}</b><table>{table}</table></div>", crate::display::escape_html(&self.to_string()))
    }

    /// Inline display in evcxr: the HTML card plus the one-line summary as text.
    pub fn evcxr_display(&self) {
        crate::display::emit(&self.html(), &self.to_string());
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
        let scale = self.lora.as_ref().map(LoraConfig::scale);
        let decoder =
            Decoder::load(&weights::WeightSource::new(&weights, &self.dir).with_lora_scale(scale), &self.config)
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
            lora: self.lora.clone(),
        }
    }
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Model({self}, from {})", self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_id_shares_the_storage_and_tracks_nothing() {
        let t = Tensor::new(&[1f32, 2.0, 3.0], &Device::Cpu).unwrap();
        let fresh = with_fresh_id(&t).unwrap();
        assert_ne!(t.id(), fresh.id());
        assert!(!fresh.track_op(), "a renumbered frozen weight must stay a leaf");
        assert_eq!(fresh.to_vec1::<f32>().unwrap(), [1.0, 2.0, 3.0]);
        let (a, b) = (t.storage_and_layout().0, fresh.storage_and_layout().0);
        assert!(std::ptr::eq(&*a, &*b), "renumbering must not copy the weight");
    }
}
