//! What a training run is asked to do: [`TrainConfig`] and the learning-rate groups it trains.

use crate::error::{Error, Result};
use crate::model::Model;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Parameters trained at `lr_scale` times the scheduled learning rate, from `start_step` on.
///
/// ```
/// use secure_tuning::train::LrGroup;
/// let g = LrGroup::new("rest", vec!["model.norm.weight".into()], 0.1).starting_at(50);
/// assert_eq!((g.lr_scale, g.start_step), (0.1, 50));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LrGroup {
    /// A name for logs and reports (`robust`, `rest`, `all`).
    pub name: String,
    /// HF names of the parameter tensors in the group.
    pub params: Vec<String>,
    /// Multiplier of the scheduled LR; 0 freezes the group (its tensors stay bit-identical).
    pub lr_scale: f64,
    /// The first step (0-based) at which the group trains; before it, its tensors and optimizer
    /// state stay untouched (SWAT's phase 2 starts here).
    #[serde(default)]
    pub start_step: usize,
}

impl LrGroup {
    /// A group trained from the first step.
    pub fn new(name: impl Into<String>, params: Vec<String>, lr_scale: f64) -> Self {
        LrGroup { name: name.into(), params, lr_scale, start_step: 0 }
    }

    /// Number of parameters (elements) of the group's tensors in `model`.
    pub fn num_params(&self, model: &Model) -> usize {
        self.params.iter().filter_map(|p| model.weights().get(p)).map(|t| t.elem_count()).sum()
    }

    /// The same group, trained only from `step` on.
    pub fn starting_at(mut self, step: usize) -> Self {
        self.start_step = step;
        self
    }
}

/// Training settings. `Default` is a sensible small run; change fields with struct update.
///
/// ```
/// use secure_tuning::train::TrainConfig;
/// let cfg = TrainConfig { lr: 1e-4, max_steps: Some(50), ..TrainConfig::default() };
/// assert_eq!(cfg.batch_size, 16);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// Passes over the data (used when `max_steps` is `None`).
    pub epochs: f64,
    /// Optimizer steps; overrides `epochs`.
    pub max_steps: Option<usize>,
    /// Examples per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Warm-up as a share of the steps.
    pub warmup_ratio: f64,
    /// Final LR as a share of the peak.
    pub min_lr_ratio: f64,
    /// AdamW decoupled weight decay (matrices only).
    pub weight_decay: f64,
    /// Global gradient-norm clip; `None` = no clipping.
    pub clip_norm: Option<f64>,
    /// Seed for the data order.
    pub seed: u64,
    /// LR groups; empty = every parameter at scale 1.
    pub groups: Vec<LrGroup>,
    /// Where checkpoints go; `None` = no checkpoints.
    pub checkpoint_dir: Option<PathBuf>,
    /// Steps between checkpoints (a final one is always written).
    pub checkpoint_every: usize,
    /// Continue from the latest checkpoint in `checkpoint_dir`, if any.
    pub resume: bool,
    /// Stop (after checkpointing) once this much wall time has passed in this call.
    pub time_budget: Option<Duration>,
    /// Stop (after checkpointing) once this call has taken this many steps.
    pub step_budget: Option<usize>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            lr: 3e-4,
            epochs: 1.0,
            max_steps: None,
            batch_size: 16,
            grad_accum: 1,
            warmup_ratio: 0.05,
            min_lr_ratio: 0.1,
            weight_decay: 0.0,
            clip_norm: Some(1.0),
            seed: 0,
            groups: vec![],
            checkpoint_dir: None,
            checkpoint_every: 200,
            resume: false,
            time_budget: None,
            step_budget: None,
        }
    }
}

impl TrainConfig {
    /// The learning-rate schedule of a run of `total_steps` steps: warm-up over `warmup_ratio`
    /// of them (at least one), then cosine decay to `min_lr_ratio`.
    ///
    /// ```
    /// use secure_tuning::train::TrainConfig;
    /// let s = TrainConfig { warmup_ratio: 0.1, ..TrainConfig::default() }.schedule(150);
    /// assert_eq!((s.warmup_steps, s.total_steps), (15, 150));
    /// ```
    pub fn schedule(&self, total_steps: usize) -> super::Schedule {
        super::Schedule {
            warmup_steps: ((total_steps as f64 * self.warmup_ratio).round() as usize).max(1),
            total_steps,
            min_ratio: self.min_lr_ratio,
        }
    }

    /// Optimizer steps this plan takes on `n_examples` examples: `max_steps`, or enough
    /// steps for `epochs` passes (at least one).
    ///
    /// ```
    /// use secure_tuning::train::TrainConfig;
    /// let cfg = TrainConfig { epochs: 2.0, batch_size: 4, ..TrainConfig::default() };
    /// assert_eq!(cfg.total_steps(10), 5);
    /// ```
    pub fn total_steps(&self, n_examples: usize) -> usize {
        let per_step = self.batch_size.saturating_mul(self.grad_accum).max(1);
        // `as usize` saturates, so an infinite or huge `epochs` gives usize::MAX, which validation refuses.
        self.max_steps.unwrap_or_else(|| ((self.epochs * n_examples as f64) / per_step as f64).ceil().max(1.0) as usize)
    }
}

/// The most optimizer steps one plan may ask for: beyond any real run, and a guard against a
/// typo (`--steps 18446744073709551615`) or an infinite `epochs` running for ever.
pub const MAX_STEPS: usize = 10_000_000;

pub(crate) fn validate(cfg: &TrainConfig, n_examples: usize) -> Result<()> {
    let bad = |what: &str, why: String| Err(Error::invalid(what, why));
    if n_examples == 0 {
        return bad("training data", "no examples".into());
    }
    if !(cfg.lr.is_finite() && cfg.lr > 0.0) {
        return bad("learning rate", format!("{} must be a positive number", cfg.lr));
    }
    if cfg.batch_size == 0 || cfg.grad_accum == 0 {
        return bad("batch", "batch size and gradient accumulation must be at least 1".into());
    }
    if cfg.max_steps == Some(0) || (cfg.max_steps.is_none() && !(cfg.epochs.is_finite() && cfg.epochs > 0.0)) {
        return bad("training length", "need max_steps >= 1 or a finite epochs > 0".into());
    }
    let steps = cfg.total_steps(n_examples);
    if steps > MAX_STEPS {
        return bad(
            "training length",
            format!("{steps} steps is more than {MAX_STEPS}; for open-ended training set a time budget and resume"),
        );
    }
    if let Some(g) = cfg.groups.iter().find(|g| !(g.lr_scale >= 0.0 && g.lr_scale.is_finite())) {
        return bad("LR group", format!("`{}` has scale {}; scales must be >= 0", g.name, g.lr_scale));
    }
    if cfg.clip_norm.is_some_and(|c| !(c.is_finite() && c > 0.0)) {
        return bad("clip norm", "must be a finite positive number (or none, for no clipping)".into());
    }
    for (what, v, ok) in [
        ("warm-up share", cfg.warmup_ratio, (0.0..1.0).contains(&cfg.warmup_ratio)),
        ("final LR share", cfg.min_lr_ratio, (0.0..=1.0).contains(&cfg.min_lr_ratio)),
        ("weight decay", cfg.weight_decay, cfg.weight_decay.is_finite() && cfg.weight_decay >= 0.0),
    ] {
        if !ok {
            return bad(what, format!("{v} is out of range"));
        }
    }
    Ok(())
}
