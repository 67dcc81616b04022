//! Where a model comes from: a local folder, or a Hugging Face hub id resolved through
//! hf-hub's cache (honouring `HF_HOME` and `HF_HUB_OFFLINE`). Either way the result is a
//! folder in Hugging Face layout that [`crate::Model::load_dir`] reads.

use crate::error::{Error, Result};
use candle_core::{DType, Device};
use std::path::{Path, PathBuf};

/// How to load a model: revision (hub only), dtype and device.
///
/// ```
/// use secure_tuning::model::LoadOptions;
/// let opts = LoadOptions { revision: Some("main".into()), ..LoadOptions::default() };
/// assert_eq!(opts.dtype(), candle_core::DType::F32); // f32 on CPU
/// ```
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Hub revision (branch, tag or commit); `None` = `main`.
    pub revision: Option<String>,
    /// Weight dtype; `None` = f32 on CPU, bf16 on CUDA.
    pub dtype: Option<DType>,
    /// Where the weights live; the default is [`auto_device`].
    pub device: Device,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { revision: None, dtype: None, device: auto_device() }
    }
}

/// The first CUDA GPU when the crate is built with the `cuda` feature and one is present,
/// else the CPU. `SECURE_TUNING_DEVICE=cpu` (or `cuda:N`) overrides the choice.
///
/// ```
/// let dev = secure_tuning::model::auto_device();
/// # #[cfg(not(feature = "cuda"))]
/// assert!(dev.is_cpu()); // built without `cuda`
/// ```
pub fn auto_device() -> Device {
    if let Ok(spec) = std::env::var("SECURE_TUNING_DEVICE") {
        // `auto` means what it does without the variable (and must not recurse through parse_device).
        if !spec.trim().eq_ignore_ascii_case("auto") {
            match parse_device(&spec) {
                Ok(dev) => return dev,
                Err(e) => eprintln!("warning: SECURE_TUNING_DEVICE ignored: {e}"),
            }
        }
    }
    if candle_core::utils::cuda_is_available() {
        if let Ok(dev) = Device::new_cuda(0) {
            return dev;
        }
    }
    Device::Cpu
}

/// Where the embedded default model lives: `data/models/default` in the crate's shipped data.
///
/// ```
/// assert!(secure_tuning::model::default_model_dir().join("config.json").exists());
/// ```
pub fn default_model_dir() -> PathBuf {
    crate::fs::data_home().join("models/default")
}

/// Parses `auto`, `cpu`, `cuda` or `cuda:N` into a device; asking for CUDA in a build without
/// the `cuda` feature, or for a GPU that is not there, is an error that says so.
///
/// ```
/// use secure_tuning::model::parse_device;
/// assert!(parse_device("cpu").unwrap().is_cpu());
/// assert!(parse_device("tpu").is_err());
/// # #[cfg(not(feature = "cuda"))]
/// assert!(parse_device("cuda:0").unwrap_err().to_string().contains("--features cuda"));
/// ```
pub fn parse_device(spec: &str) -> crate::Result<Device> {
    let spec = spec.trim().to_ascii_lowercase();
    let ordinal = match spec.as_str() {
        "auto" => return Ok(auto_device()),
        "cpu" => return Ok(Device::Cpu),
        "cuda" | "gpu" => 0,
        s => match s.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()) {
            Some(n) => n,
            None => {
                return Err(Error::invalid("device", format!("`{spec}`; expected auto, cpu, cuda or cuda:N")));
            }
        },
    };
    if !candle_core::utils::cuda_is_available() {
        return Err(Error::invalid(
            "device",
            format!("`{spec}`: this build has no CUDA support; rebuild with `--features cuda`"),
        ));
    }
    Device::new_cuda(ordinal)
        .map_err(|e| Error::invalid("device", format!("`{spec}`: no usable CUDA GPU {ordinal} ({e})")))
}

impl LoadOptions {
    /// The dtype to load weights as.
    pub fn dtype(&self) -> DType {
        self.dtype.unwrap_or(if self.device.is_cpu() { DType::F32 } else { DType::BF16 })
    }
}

/// Whether `HF_HUB_OFFLINE` asks for no network access (`1`, `true`, `yes`, `on`).
pub fn hub_offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

/// Whether `id` looks like a hub id (`name` or `org/name`).
pub fn is_hub_id(id: &str) -> bool {
    let ok = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    match id.split_once('/') {
        Some((org, name)) => ok(org) && ok(name) && !name.contains('/'),
        None => ok(id),
    }
}

const OPTIONAL_FILES: [&str; 3] = ["tokenizer_config.json", "chat_template.jinja", "generation_config.json"];

/// Resolves hub `id` to a snapshot folder holding config, tokenizer and safetensors files,
/// downloading what is missing unless `HF_HUB_OFFLINE` is set.
pub fn resolve_hub(id: &str, revision: Option<&str>) -> Result<PathBuf> {
    let revision = revision.unwrap_or("main").to_string();
    // A revision names a branch, tag or commit, and becomes part of a cache path: `..` or an
    // absolute path would lead out of the cache.
    let segment_ok = |s: &str| !s.is_empty() && s != "." && s != ".." && !s.contains('\\');
    if revision.starts_with('/') || !revision.split('/').all(segment_ok) || revision.len() > 256 {
        return Err(Error::invalid(
            "--revision",
            format!("{} is not a branch, tag or commit name", crate::fs::excerpt(&revision, 60)),
        ));
    }
    let repo = hf_hub::Repo::with_revision(id.to_string(), hf_hub::RepoType::Model, revision.clone());
    let hub_err = |reason: String| Error::Hub { id: id.to_string(), reason };
    if hub_offline() {
        let cache = hf_hub::Cache::from_env();
        let cached = cache.repo(repo.clone());
        // A revision given as a commit hash has no refs/ entry; look in its snapshot directly.
        let snapshot = cache.path().join(repo.folder_name()).join("snapshots").join(&revision);
        let get = |f: &str| cached.get(f).or_else(|| Some(snapshot.join(f)).filter(|p| p.exists()));
        let missing = |f: &str| {
            hub_err(format!(
                "`{f}` (revision `{revision}`) is not in the local cache `{}` and HF_HUB_OFFLINE=1 is set; \
                 run once online, or pass a local folder instead",
                cache.path().display()
            ))
        };
        let config = get("config.json").ok_or_else(|| missing("config.json"))?;
        get("tokenizer.json").ok_or_else(|| missing("tokenizer.json"))?;
        let dir = config.parent().expect("a cached file has a parent").to_path_buf();
        if get("model.safetensors.index.json").is_none() && get("model.safetensors").is_none() {
            return Err(missing("model.safetensors"));
        }
        return Ok(dir);
    }
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(false)
        .build()
        .map_err(|e| hub_err(format!("cannot start the hub client ({e})")))?;
    let remote = api.repo(repo);
    let fetch = |f: &str| {
        remote.get(f).map_err(|e| {
            hub_err(format!(
                "cannot fetch `{f}` ({e}); check the id and your network, or set HF_HUB_OFFLINE=1 to use the \
                 local cache, or pass a local folder"
            ))
        })
    };
    let config = fetch("config.json")?;
    fetch("tokenizer.json")?;
    for f in OPTIONAL_FILES {
        let _ = remote.get(f); // absent for many models; load_dir copes
    }
    match remote.get("model.safetensors.index.json") {
        Ok(index) => {
            for shard in super::weights::shard_names(&index)? {
                fetch(&shard)?;
            }
        }
        Err(_) => {
            fetch("model.safetensors")?;
        }
    }
    Ok(config.parent().expect("a cached file has a parent").to_path_buf())
}

/// End-of-sequence ids from `generation_config.json`, if the folder has one.
pub(crate) fn generation_eos_ids(dir: &Path) -> Result<Vec<u32>> {
    let path = dir.join("generation_config.json");
    if !path.exists() {
        return Ok(vec![]);
    }
    let text = crate::fs::read_file(&path, "")?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::malformed(&path, format!("not JSON ({e})")))?;
    Ok(super::config::token_ids(json.get("eos_token_id")))
}
