//! Flags several commands share, and their conversion into the library's inputs.

use clap::Args;
use secure_tuning::data::{benign_set_path, default_data_dir, load_records, split, Record};
use secure_tuning::model::{parse_device, LoadOptions};
use secure_tuning::{Error, Model, Result};
use std::path::PathBuf;

/// Which model, from where, on which device and in which dtype.
#[derive(Args)]
pub struct ModelArgs {
    /// A model folder, a hub id (`org/name`, through the hub cache; HF_HUB_OFFLINE=1 honoured) or `default`.
    #[arg(long)]
    pub model: String,
    /// Hub revision (branch, tag or commit).
    #[arg(long)]
    pub revision: Option<String>,
    /// auto (a CUDA GPU when built with `cuda` and one is present), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Weight dtype: f32, bf16 or f16 (default: f32 on the CPU, bf16 on a GPU).
    #[arg(long)]
    pub dtype: Option<String>,
}

impl ModelArgs {
    /// Loads the model the flags name.
    pub fn load(&self) -> Result<Model> {
        let dtype = match self.dtype.as_deref() {
            None => None,
            Some("f32") => Some(candle_core::DType::F32),
            Some("bf16") => Some(candle_core::DType::BF16),
            Some("f16") => Some(candle_core::DType::F16),
            Some(other) => return Err(Error::invalid("--dtype", format!("`{other}`; expected f32, bf16 or f16"))),
        };
        let opts = LoadOptions { revision: self.revision.clone(), dtype, device: parse_device(&self.device)? };
        Model::load_with(&self.model, &opts)
    }
}

/// An evaluation set: `path`, or the default model's `default_file`. With `split`, only records
/// of that split; without, a file that marks some records `eval` contributes those only.
pub fn load_set(
    path: &Option<PathBuf>,
    default_file: &str,
    split_name: Option<&str>,
    limit: Option<usize>,
) -> Result<Vec<Record>> {
    let path = path.clone().unwrap_or_else(|| default_data_dir().join(default_file));
    let mut records = load_records(&path)?;
    let wanted = split_name.or(records.iter().any(|r| r.split == "eval").then_some("eval"));
    if let Some(s) = wanted {
        records.retain(|r| r.split == s);
    }
    records.truncate(limit.unwrap_or(usize::MAX));
    Ok(records)
}

/// `general` and `expertise` name the default model's benign sets; anything else is a file.
pub fn benign_path(name: &str) -> PathBuf {
    benign_set_path(&default_data_dir(), name)
}

/// The training records (all but the `eval` split) of a benign set.
pub fn benign_data(name: &str) -> Result<Vec<Record>> {
    let records = load_records(&benign_path(name))?;
    Ok(records.into_iter().filter(|r| r.split != "eval").collect())
}

/// The held-out records (`eval` split) of a benign set.
pub fn benign_tasks(name: &str) -> Result<Vec<Record>> {
    Ok(split(&load_records(&benign_path(name))?, "eval"))
}
