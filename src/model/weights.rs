//! Named parameter tensors: loading safetensors (single or sharded), lookups by dotted path
//! with shape checks, and atomic saving in Hugging Face layout.

use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Parameter tensors by full Hugging Face name (`model.layers.0.self_attn.q_proj.weight`).
pub type Weights = BTreeMap<String, Tensor>;

/// A view of [`Weights`] under a dotted prefix; `pp` descends one segment, as candle's
/// `VarBuilder` does, so each segment of a checkpoint name is written once.
pub struct WeightSource<'a> {
    weights: &'a Weights,
    prefix: String,
    origin: &'a Path,
    /// `alpha / r` when LoRA adapters (`lora_A`/`lora_B` beside a weight) are to be used.
    lora_scale: Option<f64>,
}

impl<'a> WeightSource<'a> {
    /// A root view; `origin` (the model folder) is named in errors.
    pub fn new(weights: &'a Weights, origin: &'a Path) -> Self {
        WeightSource { weights, prefix: String::new(), origin, lora_scale: None }
    }

    /// The same view, reading LoRA adapters (scaled by `scale`) where a module has them.
    pub fn with_lora_scale(mut self, scale: Option<f64>) -> Self {
        self.lora_scale = scale;
        self
    }

    /// The LoRA scale, if adapters are to be read.
    pub fn lora_scale(&self) -> Option<f64> {
        self.lora_scale
    }

    /// The number of rows of tensor `name` under this prefix, if it exists.
    pub fn rows(&self, name: &str) -> Option<usize> {
        self.weights.get(&format!("{}.{name}", self.prefix)).and_then(|t| t.dims().first().copied())
    }

    /// The view one segment deeper.
    pub fn pp(&self, segment: &str) -> WeightSource<'a> {
        let prefix = if self.prefix.is_empty() { segment.to_string() } else { format!("{}.{segment}", self.prefix) };
        WeightSource { weights: self.weights, prefix, origin: self.origin, lora_scale: self.lora_scale }
    }

    /// The tensor `name` under this prefix, checked to have `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let full = format!("{}.{name}", self.prefix);
        let t = self.weights.get(&full).ok_or_else(|| Error::MissingTensor {
            name: full.clone(),
            path: self.origin.to_path_buf(),
            hint: hint_for(&full).to_string(),
        })?;
        if t.dims() != shape {
            return Err(Error::ShapeMismatch {
                name: full.clone(),
                expected: shape.to_vec(),
                found: t.dims().to_vec(),
                hint: hint_for(&full).to_string(),
            });
        }
        Ok(t.clone())
    }
}

/// Which config field usually explains a missing or misshapen tensor.
fn hint_for(name: &str) -> &'static str {
    if name.contains("k_proj") || name.contains("v_proj") {
        "check `num_key_value_heads`, `head_dim` and `hidden_size` in config.json"
    } else if name.contains("q_proj") || name.contains("o_proj") {
        "check `num_attention_heads`, `head_dim` and `hidden_size` in config.json"
    } else if name.contains("mlp") {
        "check `intermediate_size` (and `mlp_bias`) in config.json"
    } else if name.contains("embed_tokens") || name.contains("lm_head") {
        "check `vocab_size`, `hidden_size` and `tie_word_embeddings` in config.json"
    } else if name.ends_with(".bias") {
        "check `attention_bias` in config.json"
    } else {
        "check `num_hidden_layers` and `hidden_size` in config.json"
    }
}

/// The shard file names listed in a `model.safetensors.index.json`, sorted, without repeats.
pub(crate) fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text = crate::fs::read_file(index, "")?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::malformed(index, format!("not JSON ({e})")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::malformed(index, "no `weight_map` object"))?;
    let mut names: Vec<String> = map.values().filter_map(|v| v.as_str()).map(str::to_string).collect();
    // Shards live in the model folder itself: a name that is a path could reach any file.
    if let Some(bad) = names.iter().find(|n| n.is_empty() || n.contains(['/', '\\']) || n.starts_with('.')) {
        return Err(Error::malformed(
            index,
            format!("shard name {} is not a plain file name in the model folder", crate::fs::excerpt(bad, 80)),
        ));
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// The safetensors files of a model folder: `model.safetensors`, or the shards listed in
/// `model.safetensors.index.json`. A folder with only pickled weights is refused.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let files: Vec<PathBuf> = shard_names(&index)?.iter().map(|f| dir.join(f)).collect();
        if let Some(missing) = files.iter().find(|f| !f.exists()) {
            return Err(Error::MissingFile {
                path: missing.clone(),
                hint: format!("it is listed in `{}`; the download may be incomplete", index.display()),
            });
        }
        return Ok(files);
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let pickles: Vec<String> = std::fs::read_dir(dir)
        .map_err(|source| Error::Read { path: dir.to_path_buf(), source })?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".bin") || n.ends_with(".pth") || n.ends_with(".pt"))
        .collect();
    if !pickles.is_empty() {
        return Err(Error::PickleOnly { path: dir.to_path_buf(), found: pickles.join(", ") });
    }
    Err(Error::MissingFile {
        path: single,
        hint: "a model folder needs model.safetensors or model.safetensors.index.json".into(),
    })
}

/// The weight files in `dir` other than `model.safetensors` (an index, shards, pickled or GGUF
/// files): what a folder written to must not hold, or loaders would read them instead.
pub(crate) fn other_weight_files(dir: &Path) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(source) => return Err(Error::Read { path: dir.to_path_buf(), source }),
    };
    let mut out: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n == "model.safetensors.index.json"
                || (n.ends_with(".safetensors") && n != "model.safetensors" && n != "optimizer.safetensors")
                || [".bin", ".pth", ".pt", ".gguf"].iter().any(|ext| n.ends_with(ext))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Loads every tensor of `files` onto `device` as `dtype`.
///
/// Each file is memory-mapped and every tensor copied out of it; the copied range's pages are
/// then released from this process, so the peak resident memory is the loaded weights plus one
/// tensor rather than the weights twice (mapped file pages count as resident once touched).
pub fn load_safetensors(files: &[PathBuf], dtype: DType, device: &Device) -> Result<Weights> {
    use candle_core::safetensors::Load;
    let mut out = Weights::new();
    for f in files {
        crate::fs::check_regular_file(f, u64::MAX)?;
        let malformed = |why: String| Error::malformed(f, why);
        let file = std::fs::File::open(f).map_err(|source| Error::Read { path: f.clone(), source })?;
        // SAFETY: the file is mapped read-only; it must not change while we load it, which holds
        // for model folders and the hub cache.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| Error::Read { path: f.clone(), source })?;
        let st = safetensors::SafeTensors::deserialize(&map)
            .map_err(|e| malformed(format!("not a readable safetensors file ({e})")))?;
        for (name, view) in st.tensors() {
            let t = view.load(device).map_err(|e| malformed(format!("tensor `{name}`: {e}")))?;
            let t = if t.dtype() == dtype { t } else { t.to_dtype(dtype)? };
            let start = view.data().as_ptr() as usize - map.as_ptr() as usize;
            // SAFETY: the mapping is private and read-only, so dropping its pages loses nothing:
            // a later access would read them from the file again. Nothing reads them afterwards.
            // Failure only means the pages stay resident until the map is dropped.
            let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, view.data().len()) };
            out.insert(name, t);
        }
    }
    Ok(out)
}

/// Checks that a checkpoint holds no tensor beyond `expected` (tied `lm_head.weight` and
/// rotary frequency buffers are tolerated): a config claiming fewer layers or a smaller size than
/// the weights have would otherwise load part of the model and silently ignore the rest.
pub(crate) fn check_all_used(
    weights: &Weights,
    expected: &std::collections::BTreeSet<String>,
    origin: &Path,
) -> Result<()> {
    let unused: Vec<&String> = weights
        .keys()
        .filter(|n| !expected.contains(*n) && *n != "lm_head.weight" && !n.ends_with("rotary_emb.inv_freq"))
        .collect();
    match unused.as_slice() {
        [] => Ok(()),
        [first, rest @ ..] => Err(Error::malformed(
            origin,
            format!(
                "the weights hold {} tensor(s) that config.json does not describe (`{first}`{}); check \
                 num_hidden_layers and the other sizes in config.json",
                unused.len(),
                if rest.is_empty() { String::new() } else { format!(" and {} more", rest.len()) }
            ),
        )),
    }
}

/// Writes `weights` to `path` as safetensors, atomically (temp file, then rename), so an
/// interrupted save never leaves a truncated checkpoint behind.
pub fn save_safetensors(weights: &Weights, path: &Path) -> Result<()> {
    let tmp = crate::fs::temp_beside(path);
    // Candle creates the file itself; nothing (no planted link) may be at the name first.
    crate::fs::remove_leftover(&tmp)?;
    let tensors: Vec<(String, Tensor)> =
        weights.iter().map(|(k, v)| Ok((k.clone(), v.contiguous()?.detach()))).collect::<Result<_>>()?;
    candle_core::safetensors::save(&tensors.into_iter().collect(), &tmp)?;
    crate::fs::rename(&tmp, path)
}

/// Reads every tensor of one safetensors file, keeping stored dtypes.
pub fn load_tensors(path: &Path, device: &Device) -> Result<Weights> {
    crate::fs::check_regular_file(path, u64::MAX)?;
    let map = candle_core::safetensors::load(path, device)
        .map_err(|e| Error::malformed(path, format!("not a readable safetensors file ({e})")))?;
    Ok(map.into_iter().collect())
}
