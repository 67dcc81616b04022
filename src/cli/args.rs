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

/// Claims an output folder before any work starts (created if missing, writable, not used by
/// another run); the claim is released when the returned guard drops.
pub fn claim(out: &std::path::Path) -> Result<secure_tuning::fs::Claim> {
    secure_tuning::fs::Claim::new(out, "--out")
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

/// The numeric flag parsers: a number is checked once, where it enters, so NaN, infinities and
/// out-of-range values are one clear error naming the flag, never a panic or a silent default.
pub mod num {
    /// A finite number above 0 (learning rates, noise, temperatures).
    pub fn positive(s: &str) -> Result<f64, String> {
        match s.parse::<f64>() {
            Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
            _ => Err("must be a finite number above 0".into()),
        }
    }

    /// A finite number of at least 0 (ratios, tolerances, clip norms where 0 means off).
    pub fn non_negative(s: &str) -> Result<f64, String> {
        match s.parse::<f64>() {
            Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
            _ => Err("must be a finite number of at least 0".into()),
        }
    }

    /// A share in [0, 1) (SWAT's warm-up).
    pub fn share(s: &str) -> Result<f64, String> {
        match s.parse::<f64>() {
            Ok(v) if (0.0..1.0).contains(&v) => Ok(v),
            _ => Err("must be a number from 0 up to (not including) 1".into()),
        }
    }

    /// A share in (0, 1] (caps, nucleus mass).
    pub fn fraction(s: &str) -> Result<f64, String> {
        match s.parse::<f64>() {
            Ok(v) if v > 0.0 && v <= 1.0 => Ok(v),
            _ => Err("must be a number above 0 and at most 1".into()),
        }
    }

    /// Seconds: finite, above 0, at most a year.
    pub fn seconds(s: &str) -> Result<f64, String> {
        match s.parse::<f64>() {
            Ok(v) if v.is_finite() && v > 0.0 && v <= 3.2e7 => Ok(v),
            _ => Err("must be a number of seconds above 0 and at most a year (3.2e7)".into()),
        }
    }

    /// A whole number from 1 to `max`.
    fn whole(s: &str, max: usize) -> Result<usize, String> {
        match s.parse::<usize>() {
            Ok(v) if (1..=max).contains(&v) => Ok(v),
            _ => Err(format!("must be a whole number from 1 to {max}")),
        }
    }

    /// A count that may be 0 (warm-up runs, optional extras).
    pub fn count_or_zero(s: &str) -> Result<usize, String> {
        match s.parse::<usize>() {
            Ok(v) if v <= 1 << 20 => Ok(v),
            _ => Err(format!("must be a whole number from 0 to {}", 1 << 20)),
        }
    }

    /// A count of things that must be at least one (batch sizes, token budgets, intervals).
    pub fn count(s: &str) -> Result<usize, String> {
        whole(s, 1 << 20)
    }

    /// Optimizer steps: 1 to [`secure_tuning::train::MAX_STEPS`].
    pub fn steps(s: &str) -> Result<usize, String> {
        whole(s, secure_tuning::train::MAX_STEPS)
    }
}
