//! Plans for other trainers: an [`MlLr`] plan written as a file (schema v1, documented in
//! docs/scale.md) that names every parameter of the model by its Hugging Face name with its
//! learning-rate group, scale and start step, plus the optimizer, schedule, clipping, batch and
//! LoRA settings, so PyTorch's trainers (DDP, FSDP, Accelerate, DeepSpeed) can train exactly the
//! plan this library would (`integrations/torch` reads it).

use super::plan::MlLr;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::train::AdamWParams;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The `format` every plan file carries.
pub const PLAN_FORMAT: &str = "secure-tuning-plan";
/// The schema version this build writes and reads.
pub const PLAN_VERSION: u32 = 1;

/// A training plan as a file (schema v1): what `secure-tuning export-plan` writes.
///
/// ```
/// use secure_tuning::model::{ModuleId, ModuleKind, ModuleSet};
/// use secure_tuning::tune::{MlLr, PlanFile};
/// let model = secure_tuning::Model::load_dir("tests/fixtures/llama3")?;
/// let robust = ModuleSet::from_iter([ModuleId::new(0, ModuleKind::Q)]);
/// let plan = MlLr::builder().robust(robust).ratio(0.1).steps(100).build()?;
/// let file = PlanFile::export(&plan, &model, 100)?;
/// assert_eq!(file.groups.iter().map(|g| g.params.len()).sum::<usize>() + file.frozen.len(), model.weights().len());
/// let back: PlanFile = serde_json::from_str(&serde_json::to_string(&file).unwrap()).unwrap();
/// assert_eq!(back, file);
/// assert_eq!(back.source_plan.as_ref(), Some(&plan));
/// # Ok::<(), secure_tuning::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanFile {
    /// Always [`PLAN_FORMAT`].
    pub format: String,
    /// The schema version, [`PLAN_VERSION`].
    pub version: u32,
    /// Which strategy the plan is (`plain`, `ml-lr`, `swat`, `freeze-rest`); informative.
    pub strategy: String,
    /// The model the plan was made for.
    pub model: PlanModel,
    /// The full learning rate; a group trains at `base_lr * lr_scale * factor(step)`.
    pub base_lr: f64,
    /// AdamW's settings.
    pub optimizer: PlanOptimizer,
    /// Warm-up and cosine decay.
    pub schedule: PlanSchedule,
    /// Global gradient-norm clip over every trainable tensor (`null`: none).
    pub clip_grad_norm: Option<f64>,
    /// Examples per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Data-order seed.
    pub seed: u64,
    /// Longest tokenised example.
    pub max_len: usize,
    /// What the loss averages: `mean-over-response-tokens`.
    pub loss: String,
    /// LoRA adapters instead of full fine-tuning (`null`: full fine-tuning).
    pub lora: Option<PlanLora>,
    /// The learning-rate groups, each listing its parameters.
    pub groups: Vec<PlanGroup>,
    /// Every parameter that does not train.
    pub frozen: Vec<String>,
    /// The library plan this file was written from, so it reads back whole; other trainers
    /// ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_plan: Option<MlLr>,
}

/// The `model` section of a [`PlanFile`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanModel {
    /// Where the model was loaded from.
    pub name_or_path: String,
    /// `llama`, `qwen2` or `mistral`.
    pub model_type: String,
    /// Decoder layers.
    pub num_hidden_layers: usize,
}

/// The `optimizer` section of a [`PlanFile`]: AdamW, weight decay on rank-2 tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanOptimizer {
    /// `adamw`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `(beta1, beta2)`.
    pub betas: [f64; 2],
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// `rank-2`: only matrices decay.
    pub weight_decay_applies_to: String,
}

/// The `schedule` section of a [`PlanFile`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanSchedule {
    /// `linear-warmup-cosine`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Steps of linear warm-up (step `s < W` has factor `(s + 1) / W`).
    pub warmup_steps: usize,
    /// Optimizer steps in all.
    pub total_steps: usize,
    /// The final LR as a share of the peak.
    pub min_lr_ratio: f64,
}

/// The `lora` section of a [`PlanFile`], in PEFT's terms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanLora {
    /// Rank.
    pub r: usize,
    /// The update is scaled by `lora_alpha / r`.
    pub lora_alpha: f64,
    /// Projection names (`q_proj`, ...).
    pub target_modules: Vec<String>,
    /// Always 0: the adapters train without dropout.
    pub lora_dropout: f64,
    /// Seed of `A`'s initialisation in this library.
    pub init_seed: u64,
}

/// One learning-rate group of a [`PlanFile`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanGroup {
    /// The group's name (`robust`, `rest`, `non-module`).
    pub name: String,
    /// Its share of the full learning rate.
    pub lr_scale: f64,
    /// The first (0-based) step at which it trains; before it, its tensors get no update.
    pub start_step: usize,
    /// Hugging Face parameter names (adapter tensors with LoRA).
    pub params: Vec<String>,
}

impl PlanFile {
    /// Writes `plan` for `model` and a run of `total_steps` optimizer steps. The model must
    /// have the modules the plan names (the builder's checks run again); with LoRA the groups
    /// name adapter tensors and every base weight is frozen.
    pub fn export(plan: &MlLr, model: &Model, total_steps: usize) -> Result<Self> {
        if total_steps == 0 {
            return Err(Error::invalid("plan length", "a plan needs at least one step"));
        }
        let mut target = model.clone();
        if let Some(lora) = &plan.lora {
            target.add_lora(lora)?;
        }
        let train = &plan.train;
        let mut groups = Vec::new();
        let mut frozen = Vec::new();
        for g in plan.groups(&target, total_steps)? {
            if g.lr_scale > 0.0 {
                groups.push(PlanGroup {
                    name: g.name,
                    lr_scale: g.lr_scale,
                    start_step: g.start_step,
                    params: g.params,
                });
            } else {
                frozen.extend(g.params);
            }
        }
        // Everything no group trains (with LoRA: every base weight) is frozen, once.
        let trained: std::collections::BTreeSet<&String> = groups.iter().flat_map(|g| &g.params).collect();
        let untrained: Vec<String> = target.weights().keys().filter(|n| !trained.contains(n)).cloned().collect();
        frozen.extend(untrained);
        frozen.sort();
        frozen.dedup();
        let adam = AdamWParams { weight_decay: train.weight_decay, ..AdamWParams::default() };
        let schedule = train.schedule(total_steps);
        Ok(PlanFile {
            format: PLAN_FORMAT.to_string(),
            version: PLAN_VERSION,
            strategy: plan.kind().name().to_string(),
            model: PlanModel {
                name_or_path: model.name().to_string(),
                model_type: model.config().arch.as_str().to_string(),
                num_hidden_layers: model.config().num_layers,
            },
            base_lr: train.lr,
            optimizer: PlanOptimizer {
                kind: "adamw".into(),
                betas: [adam.beta1, adam.beta2],
                eps: adam.eps,
                weight_decay: adam.weight_decay,
                weight_decay_applies_to: "rank-2".into(),
            },
            schedule: PlanSchedule {
                kind: "linear-warmup-cosine".into(),
                warmup_steps: schedule.warmup_steps,
                total_steps,
                min_lr_ratio: schedule.min_ratio,
            },
            clip_grad_norm: train.clip_norm,
            batch_size: train.batch_size,
            grad_accum: train.grad_accum,
            seed: train.seed,
            max_len: plan.max_len,
            loss: "mean-over-response-tokens".into(),
            lora: plan.lora.as_ref().map(|l| PlanLora {
                r: l.rank,
                lora_alpha: l.alpha,
                target_modules: l.kinds.iter().map(|k| k.projection().to_string()).collect(),
                lora_dropout: 0.0,
                init_seed: l.seed,
            }),
            groups,
            frozen,
            source_plan: Some(plan.clone()),
        })
    }

    /// Reads a plan file, checking its format and version.
    pub fn read(path: &Path) -> Result<Self> {
        let file: PlanFile = crate::fs::read_json(path, "a plan written by `secure-tuning export-plan`")?;
        if file.format != PLAN_FORMAT || file.version != PLAN_VERSION {
            return Err(Error::malformed(
                path,
                format!(
                    "format `{}` version {}; this build reads `{PLAN_FORMAT}` version {PLAN_VERSION}",
                    file.format, file.version
                ),
            ));
        }
        Ok(file)
    }

    /// Writes the plan as pretty JSON.
    pub fn write(&self, path: &Path) -> Result<()> {
        crate::fs::write_json(path, self)
    }
}

impl std::fmt::Display for PlanFile {
    /// The plan in a few lines: strategy, LR and schedule, then each group's size.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} plan for {} ({} layers): lr {:e}, {} steps ({} warm-up), batch {} x {}",
            self.strategy,
            self.model.name_or_path,
            self.model.num_hidden_layers,
            self.base_lr,
            self.schedule.total_steps,
            self.schedule.warmup_steps,
            self.batch_size,
            self.grad_accum
        )?;
        for g in &self.groups {
            write!(
                f,
                "\n  {:<12} lr x{:<6} from step {:<4} {} tensors",
                g.name,
                g.lr_scale,
                g.start_step,
                g.params.len()
            )?;
        }
        write!(f, "\n  frozen: {} tensors", self.frozen.len())
    }
}
