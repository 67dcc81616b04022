//! LoRA adapters: a trainable low-rank update `scale * B @ A` beside a frozen projection
//! (Hu et al. 2021), named as PEFT names them (`...q_proj.lora_A.weight`, `...lora_B.weight`).
//!
//! Adapters are kept in f32 whatever the base dtype, so a bf16 model trains f32 adapters.
//! `A` starts as PEFT's default (Kaiming-uniform, bound `1/sqrt(in)`), `B` as zeros, so an
//! adapted model computes exactly what the base does until the first update.

use super::modules::{ModuleId, ModuleKind, ModuleSet};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

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
