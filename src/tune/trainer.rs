//! The one training loop every strategy uses: response-only loss, padded batches, AdamW with
//! per-group learning rates, warm-up + cosine schedule, global gradient clipping, seeded
//! shuffling, a progress line every few seconds, step and time budgets, atomic checkpoints with
//! resume, and a hard stop on a NaN/inf loss.

use super::optim::{AdamW, AdamWParams};
use super::schedule::Schedule;
use crate::data::Record;
use crate::error::{Error, Result};
use crate::model::{Batch, Capture, LogitsMode, Message, Model};
use crate::rng::Rng;
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A tokenised training example: the loss covers positions `loss_start..` (the response and
/// the end-of-turn token), never the prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// Prompt and response token ids.
    pub ids: Vec<u32>,
    /// Index of the first response token.
    pub loss_start: usize,
}

/// Tokenises records with the model's chat template: the prompt is the user turn plus the
/// assistant header; the response is what the template writes for the assistant turn
/// (so it ends with the template's own end-of-turn token). Examples longer than `max_len`
/// tokens are cut at `max_len`.
pub fn encode_examples(model: &Model, records: &[Record], max_len: usize) -> Result<Vec<Example>> {
    let tok = model.tokenizer();
    records
        .iter()
        .map(|r| {
            let user = r.messages();
            let prompt = tok.encode_chat(&user, true)?;
            let mut full_msgs = user.clone();
            full_msgs.push(Message::assistant(r.output.clone()));
            let full = tok.encode_chat(&full_msgs, false)?;
            let mut ids = if full.starts_with(&prompt) && full.len() > prompt.len() {
                full
            } else {
                // The template's full render does not extend the prompt token-wise (rare
                // merges at the boundary): append the response and an EOS instead.
                let mut ids = prompt.clone();
                ids.extend(tok.encode(&r.output, false)?);
                ids.extend(model.eos_ids().first());
                ids
            };
            // Drop what the template writes after the end-of-turn token (e.g. a newline).
            if let Some(end) = ids[prompt.len()..].iter().position(|t| model.eos_ids().contains(t)) {
                ids.truncate(prompt.len() + end + 1);
            }
            ids.truncate(max_len);
            if ids.len() <= prompt.len() {
                return Err(Error::invalid(
                    "training record",
                    format!("{:?}: the prompt alone fills max_len {max_len}; raise max_len", r.instruction),
                ));
            }
            Ok(Example { ids, loss_start: prompt.len() })
        })
        .collect()
}

/// Parameters trained at `lr_scale` times the scheduled learning rate, from `start_step` on.
///
/// ```
/// use secure_tuning::tune::LrGroup;
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

/// One LR group's trace in a [`TrainReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupTrace {
    /// The group's name.
    pub name: String,
    /// Its LR multiplier.
    pub lr_scale: f64,
    /// Its first training step.
    pub start_step: usize,
    /// Number of parameters (elements).
    pub num_params: usize,
    /// `(step, lr)` actually applied to the group, at traced steps.
    pub lrs: Vec<(usize, f64)>,
    /// `(step, ||update||)` over the group's tensors together, at traced steps.
    pub update_norms: Vec<(usize, f64)>,
}

/// Training settings. `Default` is a sensible small run; change fields with struct update.
///
/// ```
/// use secure_tuning::tune::TrainConfig;
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
    /// Seconds between progress lines; `None` = silent.
    pub log_every_secs: Option<f64>,
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
            log_every_secs: Some(5.0),
        }
    }
}

impl TrainConfig {
    /// Optimizer steps this plan takes on `n_examples` examples: `max_steps`, or enough
    /// steps for `epochs` passes (at least one).
    ///
    /// ```
    /// use secure_tuning::tune::TrainConfig;
    /// let cfg = TrainConfig { epochs: 2.0, batch_size: 4, ..TrainConfig::default() };
    /// assert_eq!(cfg.total_steps(10), 5);
    /// ```
    pub fn total_steps(&self, n_examples: usize) -> usize {
        let per_step = (self.batch_size * self.grad_accum).max(1);
        self.max_steps.unwrap_or_else(|| ((self.epochs * n_examples as f64) / per_step as f64).ceil().max(1.0) as usize)
    }
}

/// What a training run did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    /// Steps completed in total (including before a resume).
    pub steps: usize,
    /// Steps the plan asked for.
    pub total_steps: usize,
    /// `(step, mean response-token loss)` for every step.
    pub losses: Vec<(usize, f32)>,
    /// `(step, lr)` of the base schedule for every step.
    pub lrs: Vec<(usize, f64)>,
    /// Response tokens trained on.
    pub tokens: usize,
    /// Wall seconds spent (this call and before a resume).
    pub seconds: f64,
    /// Whether the plan ran to its last step (false: stopped by a time or step budget).
    pub finished: bool,
    /// Per LR group: applied LR and update norm, at about 100 evenly spaced steps.
    #[serde(default)]
    pub groups: Vec<GroupTrace>,
}

impl TrainReport {
    /// Mean loss over the last `n` steps.
    pub fn recent_loss(&self, n: usize) -> f32 {
        let tail = &self.losses[self.losses.len().saturating_sub(n)..];
        tail.iter().map(|(_, l)| l).sum::<f32>() / tail.len().max(1) as f32
    }
}

#[derive(Serialize, Deserialize)]
struct TrainerState {
    report: TrainReport,
    config: TrainConfig,
}

/// Trains `model` in place on `examples` as `cfg` says and returns the report.
///
/// ```no_run
/// # use secure_tuning::{Model, data::Record, tune::{encode_examples, train, TrainConfig}};
/// let mut model = Model::load("default")?;
/// let ex = encode_examples(&model, &[Record::new("What is 2 plus 2?", "4")], 64)?;
/// let report = train(&mut model, &ex, &TrainConfig { max_steps: Some(3), ..Default::default() })?;
/// assert_eq!(report.steps, 3);
/// # Ok::<(), secure_tuning::Error>(())
/// ```
pub fn train(model: &mut Model, examples: &[Example], cfg: &TrainConfig) -> Result<TrainReport> {
    train_observed(model, examples, cfg, usize::MAX, |_, _| Ok(()))
}

/// [`train`], calling `observe(model, report)` before step 1 and after every `every` steps
/// (and after the last), e.g. to evaluate along the training trajectory.
pub fn train_observed(
    model: &mut Model,
    examples: &[Example],
    cfg: &TrainConfig,
    every: usize,
    mut observe: impl FnMut(&Model, &TrainReport) -> Result<()>,
) -> Result<TrainReport> {
    validate(cfg, examples)?;
    let mut stepper = TrainStep::new(model, cfg)?;
    let groups = stepper.groups().to_vec();

    let total_steps = cfg.total_steps(examples.len());
    let schedule = Schedule {
        warmup_steps: ((total_steps as f64 * cfg.warmup_ratio).round() as usize).max(1),
        total_steps,
        min_ratio: cfg.min_lr_ratio,
    };
    let traces = groups
        .iter()
        .map(|g| GroupTrace {
            name: g.name.clone(),
            lr_scale: g.lr_scale,
            start_step: g.start_step,
            num_params: g.num_params(model),
            lrs: vec![],
            update_norms: vec![],
        })
        .collect();
    let mut report = TrainReport {
        steps: 0,
        total_steps,
        losses: vec![],
        lrs: vec![],
        tokens: 0,
        seconds: 0.0,
        finished: false,
        groups: traces,
    };
    if cfg.log_every_secs.is_some() {
        print_plan(&groups, &report.groups);
    }
    let trace_every = (total_steps / 100).max(1);
    if cfg.resume {
        if let Some(dir) = &cfg.checkpoint_dir {
            if let Some(state) = checkpoint::restore(dir, model, &mut stepper.opt, &stepper.vars)? {
                if state.report.total_steps != total_steps {
                    return Err(Error::invalid(
                        "resume",
                        format!(
                            "the checkpoint in `{}` belongs to a {}-step plan, this one has {total_steps} steps; \
                             use the same settings or another checkpoint dir",
                            dir.display(),
                            state.report.total_steps
                        ),
                    ));
                }
                report = state.report;
            }
        }
    }
    if every != usize::MAX && report.steps == 0 {
        observe(model, &report)?;
    }

    let order = DataOrder::new(examples.len(), cfg.batch_size, cfg.seed);
    let start = Instant::now();
    let seconds_before = report.seconds;
    let mut last_log = Instant::now();
    let mut last_ckpt: Option<PathBuf> = cfg.checkpoint_dir.as_ref().and_then(|d| checkpoint::latest(d));
    let first_step = report.steps;
    while report.steps < total_steps {
        let step = report.steps;
        let lr = cfg.lr * schedule.factor(step);
        let micro: Vec<Vec<&Example>> = (0..cfg.grad_accum)
            .map(|k| order.batch(step * cfg.grad_accum + k).into_iter().map(|i| &examples[i]).collect())
            .collect();
        let traced = step % trace_every == 0 || step + 1 == total_steps;
        let out = stepper.step(model, &micro, step, lr, traced)?;
        if !out.loss.is_finite() {
            let kept = match &last_ckpt {
                Some(p) => format!("last good checkpoint kept at `{}`", p.display()),
                None => "no checkpoint was written (set a checkpoint dir to keep one)".into(),
            };
            return Err(Error::NonFiniteLoss { loss: out.loss, step: step + 1, lr, kept });
        }
        report.tokens += out.tokens;
        if let Some(norms) = out.group_update_norms {
            for ((g, trace), norm) in groups.iter().zip(report.groups.iter_mut()).zip(norms) {
                let active = step >= g.start_step;
                trace.lrs.push((step + 1, if active { lr * g.lr_scale } else { 0.0 }));
                trace.update_norms.push((step + 1, norm));
            }
        }
        let step_loss = out.loss;
        report.steps += 1;
        report.losses.push((report.steps, step_loss));
        report.lrs.push((report.steps, lr));
        report.seconds = seconds_before + start.elapsed().as_secs_f64();
        let out_of_time = cfg.time_budget.is_some_and(|b| start.elapsed() >= b)
            || cfg.step_budget.is_some_and(|b| report.steps - first_step >= b);
        let done = report.steps == total_steps;
        report.finished = done;
        if let Some(dir) = &cfg.checkpoint_dir {
            if done || out_of_time || report.steps % cfg.checkpoint_every.max(1) == 0 {
                let state = TrainerState { report: report.clone(), config: cfg.clone() };
                last_ckpt = Some(checkpoint::save(dir, model, &stepper.opt, &state)?);
            }
        }
        if let Some(every) = cfg.log_every_secs {
            if done || last_log.elapsed().as_secs_f64() >= every {
                last_log = Instant::now();
                let rate = report.tokens as f64 / report.seconds.max(1e-9);
                println!(
                    "step {}/{} loss {:.4} lr {:.2e} {:.0} tok/s {:.0}s",
                    report.steps,
                    total_steps,
                    report.recent_loss(10),
                    lr,
                    rate,
                    report.seconds
                );
            }
        }
        if every != usize::MAX && (report.steps % every.max(1) == 0 || done) {
            observe(model, &report)?;
        }
        if out_of_time && !done {
            break;
        }
    }
    Ok(report)
}

/// One optimizer step of a plan, outside the loop: the training loop calls it, and the
/// benchmark times it. It owns the trainable `Var`s and the optimizer.
pub struct TrainStep {
    vars: Vec<(String, Var)>,
    opt: AdamW,
    groups: Vec<LrGroup>,
    scale: BTreeMap<String, f64>,
    start_of: BTreeMap<String, usize>,
    group_of: BTreeMap<String, usize>,
    clip_norm: Option<f64>,
}

/// What one [`TrainStep::step`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutcome {
    /// Mean response-token loss over the micro-batches; when it is not finite, no update was applied.
    pub loss: f32,
    /// Response tokens trained on.
    pub tokens: usize,
    /// Per group (in plan order), the norm of this step's update, when traced.
    pub group_update_norms: Option<Vec<f64>>,
}

impl TrainStep {
    /// Makes the plan's parameters trainable (all of them, or all adapters with LoRA, when
    /// `cfg.groups` is empty; any others the model had trainable become frozen) and sets up the
    /// optimizer.
    ///
    /// ```
    /// # use secure_tuning::{Model, data::Record, tune::{encode_examples, TrainConfig, TrainStep}};
    /// let mut model = Model::load_dir("tests/fixtures/llama3")?;
    /// let ex = encode_examples(&model, &[Record::new("Say hi", "hi")], 32)?;
    /// let mut step = TrainStep::new(&mut model, &TrainConfig::default())?;
    /// let out = step.step(&model, &[ex.iter().collect()], 0, 1e-3, false)?;
    /// assert!(out.loss > 0.0 && out.tokens > 0);
    /// # Ok::<(), secure_tuning::Error>(())
    /// ```
    pub fn new(model: &mut Model, cfg: &TrainConfig) -> Result<Self> {
        let groups = if cfg.groups.is_empty() {
            vec![LrGroup::new("all", model.default_trainable(), 1.0)]
        } else {
            cfg.groups.clone()
        };
        let mut scale: BTreeMap<String, f64> = BTreeMap::new();
        let mut start_of: BTreeMap<String, usize> = BTreeMap::new();
        let mut group_of: BTreeMap<String, usize> = BTreeMap::new();
        for (gi, g) in groups.iter().enumerate() {
            for p in &g.params {
                if !model.weights().contains_key(p) {
                    return Err(Error::invalid(
                        "LR group",
                        format!("`{}` names `{p}`, which is not a parameter", g.name),
                    ));
                }
                if scale.insert(p.clone(), g.lr_scale).is_some() {
                    return Err(Error::invalid("LR group", format!("`{p}` is in more than one group")));
                }
                start_of.insert(p.clone(), g.start_step);
                group_of.insert(p.clone(), gi);
            }
        }
        // Frozen (scale 0) parameters never become Vars, so they cannot change. Vars left from an
        // earlier training are made again, here: in an evcxr notebook they may come from another
        // cell, whose tensor ids count from a different counter (see `Model`'s training decoder).
        let trainable: Vec<String> = scale.iter().filter(|(_, &s)| s > 0.0).map(|(n, _)| n.clone()).collect();
        model.freeze_all()?;
        let vars = model.make_trainable(&trainable)?;
        let opt = AdamW::new(&vars, AdamWParams { weight_decay: cfg.weight_decay, ..Default::default() })?;
        Ok(TrainStep { vars, opt, groups, scale, start_of, group_of, clip_norm: cfg.clip_norm })
    }

    /// The plan's groups (the single `all` group when the config named none).
    pub fn groups(&self) -> &[LrGroup] {
        &self.groups
    }

    /// Step `step` (0-based) at base learning rate `lr`: loss and gradients over the
    /// micro-batches, global clipping, then AdamW. The loss is read back once, after the
    /// backward passes are queued, and a non-finite loss stops before any weight changes.
    pub fn step(
        &mut self,
        model: &Model,
        micro_batches: &[Vec<&Example>],
        step: usize,
        lr: f64,
        traced: bool,
    ) -> Result<StepOutcome> {
        crate::kernels::run_on_cpu_pool(model.device(), || self.step_here(model, micro_batches, step, lr, traced))
    }

    fn step_here(
        &mut self,
        model: &Model,
        micro_batches: &[Vec<&Example>],
        step: usize,
        lr: f64,
        traced: bool,
    ) -> Result<StepOutcome> {
        let mut grads: BTreeMap<String, Tensor> = BTreeMap::new();
        let mut losses = Vec::with_capacity(micro_batches.len());
        let mut tokens = 0;
        let share = 1.0 / micro_batches.len().max(1) as f64;
        for batch in micro_batches {
            let (loss, n_tokens) = response_loss(model, batch, true)?;
            tokens += n_tokens;
            let g = (&loss * share)?.backward()?;
            losses.push(loss);
            for (name, var) in &self.vars {
                if let Some(gv) = g.get(var.as_tensor()) {
                    let sum = match grads.remove(name) {
                        Some(prev) => (prev + gv)?,
                        None => gv.clone(),
                    };
                    grads.insert(name.clone(), sum);
                }
            }
        }
        let loss = (Tensor::stack(&losses, 0)?.to_dtype(DType::F32)?.sum_all()? * share)?.to_scalar::<f32>()?;
        if !loss.is_finite() {
            return Ok(StepOutcome { loss, tokens, group_update_norms: None });
        }
        if let Some(max_norm) = self.clip_norm {
            clip_global_norm(&mut grads, max_norm)?;
        }
        // Groups that have not started yet get no update and keep their optimizer state clean.
        grads.retain(|name, _| step >= self.start_of[name]);
        let scale = &self.scale;
        let norms = self.opt.step_traced(&grads, |name| lr * scale[name], traced)?;
        let group_update_norms = traced.then(|| {
            let mut sq = vec![0.0; self.groups.len()];
            for (name, n) in &norms {
                sq[self.group_of[name]] += n * n;
            }
            sq.into_iter().map(f64::sqrt).collect()
        });
        Ok(StepOutcome { loss, tokens, group_update_norms })
    }
}

fn validate(cfg: &TrainConfig, examples: &[Example]) -> Result<()> {
    let bad = |what: &str, why: String| Err(Error::invalid(what, why));
    if examples.is_empty() {
        return bad("training data", "no examples".into());
    }
    if !(cfg.lr.is_finite() && cfg.lr > 0.0) {
        return bad("learning rate", format!("{} must be a positive number", cfg.lr));
    }
    if cfg.batch_size == 0 || cfg.grad_accum == 0 {
        return bad("batch", "batch size and gradient accumulation must be at least 1".into());
    }
    if cfg.max_steps == Some(0)
        || (cfg.max_steps.is_none() && cfg.epochs.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater))
    {
        return bad("training length", "need max_steps >= 1 or epochs > 0".into());
    }
    if let Some(g) = cfg.groups.iter().find(|g| !(g.lr_scale >= 0.0 && g.lr_scale.is_finite())) {
        return bad("LR group", format!("`{}` has scale {}; scales must be >= 0", g.name, g.lr_scale));
    }
    if cfg.clip_norm.is_some_and(|c| c.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)) {
        return bad("clip norm", "must be positive".into());
    }
    Ok(())
}

/// Before step 1: each group's tensor and parameter count.
fn print_plan(groups: &[LrGroup], traces: &[GroupTrace]) {
    for (g, t) in groups.iter().zip(traces) {
        println!("group {:<8} lr x{:<5} {:>4} tensors {:>10} params", g.name, g.lr_scale, g.params.len(), t.num_params);
    }
}

/// Mean cross-entropy over the response tokens of a right-padded batch, and their count; with
/// `grad`, through the trainable parameters (see [`Model::forward_train`]).
pub(crate) fn response_loss(model: &Model, batch: &[&Example], grad: bool) -> Result<(Tensor, usize)> {
    let seqs: Vec<Vec<u32>> = batch.iter().map(|e| e.ids.clone()).collect();
    let input = Batch::from_sequences(&seqs, 0, model.device())?;
    let t = input.input_ids.dim(1)?;
    // Position p predicts token p + 1; keep the positions whose target is a response token.
    let (mut rows, mut targets) = (Vec::new(), Vec::new());
    for (b, e) in batch.iter().enumerate() {
        for p in e.loss_start.saturating_sub(1)..e.ids.len() - 1 {
            rows.push((b * t + p) as u32);
            targets.push(e.ids[p + 1]);
        }
    }
    let n = targets.len();
    let capture = Capture::logits().with_logits(LogitsMode::Rows(rows));
    let acts = if grad { model.forward_train(&input, &capture)? } else { model.forward(&input, &capture)? };
    let logits = acts.logits()?.to_dtype(DType::F32)?; // (n, vocab)
    let targets = Tensor::new(targets.as_slice(), model.device())?;
    let nll = crate::kernels::cross_entropy(&logits, &targets)?; // (n,)
    Ok(((nll.sum_all()? / n as f64)?, n))
}

/// Scales all gradients so their global L2 norm is at most `max_norm`, on the gradients'
/// device without reading anything back; returns the norm before clipping as a scalar tensor.
pub fn clip_global_norm(grads: &mut BTreeMap<String, Tensor>, max_norm: f64) -> Result<Tensor> {
    let squares =
        grads.values().map(|g| g.to_dtype(DType::F32)?.sqr()?.sum_all()).collect::<candle_core::Result<Vec<_>>>()?;
    let Some(first) = squares.first() else {
        return Ok(Tensor::new(0f32, &candle_core::Device::Cpu)?);
    };
    let norm = Tensor::stack(&squares, 0)?.sum_all()?.sqrt()?;
    // factor = min(1, max_norm / (norm + 1e-6)), as PyTorch's clip_grad_norm_.
    let factor =
        (norm.affine(1.0, 1e-6)?.recip()? * max_norm)?.minimum(&Tensor::ones((), DType::F32, first.device())?)?;
    for g in grads.values_mut() {
        *g = g.broadcast_mul(&factor.to_dtype(g.dtype())?)?;
    }
    Ok(norm)
}

/// Which examples form micro-batch `k`: each epoch is a fresh seeded shuffle, so the order is a
/// pure function of (seed, k) and a resumed run sees exactly the batches it would have seen.
struct DataOrder {
    n: usize,
    batch_size: usize,
    seed: u64,
}

impl DataOrder {
    fn new(n: usize, batch_size: usize, seed: u64) -> Self {
        DataOrder { n, batch_size: batch_size.min(n), seed }
    }

    fn batch(&self, k: usize) -> Vec<usize> {
        let per_epoch = self.n / self.batch_size;
        let (epoch, i) = (k / per_epoch, k % per_epoch);
        let mut perm: Vec<usize> = (0..self.n).collect();
        Rng::new(self.seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64)).shuffle(&mut perm);
        perm[i * self.batch_size..(i + 1) * self.batch_size].to_vec()
    }
}

/// Checkpoints: `DIR/step-NNNNNN/` is a loadable model folder plus `optimizer.safetensors` and
/// `trainer_state.json`; `DIR/latest` names the newest. Each is written to a temp path and
/// renamed, so a crash never leaves a half-written checkpoint as `latest`.
pub mod checkpoint {
    use super::*;

    /// The newest complete checkpoint in `dir`, if any.
    pub fn latest(dir: &Path) -> Option<PathBuf> {
        let name = std::fs::read_to_string(dir.join("latest")).ok()?;
        let p = dir.join(name.trim());
        p.is_dir().then_some(p)
    }

    pub(super) fn save(dir: &Path, model: &Model, opt: &AdamW, state: &TrainerState) -> Result<PathBuf> {
        let name = format!("step-{:06}", state.report.steps);
        let final_dir = dir.join(&name);
        let tmp = dir.join(format!("{name}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        model.save_dir(&tmp)?;
        crate::model::save_safetensors(&opt.state()?, &tmp.join("optimizer.safetensors"))?;
        let json = serde_json::to_vec_pretty(state).expect("state serialises");
        crate::fs::write_atomic(&tmp.join("trainer_state.json"), &json)?;
        let _ = std::fs::remove_dir_all(&final_dir);
        std::fs::rename(&tmp, &final_dir).map_err(|source| Error::Io { path: final_dir.clone(), source })?;
        let previous = latest(dir);
        crate::fs::write_atomic(&dir.join("latest"), name.as_bytes())?;
        // Keep the newest two, so a checkpoint that turns out bad still has a predecessor.
        if let Some(prev) = previous {
            let mut all: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|source| Error::Io { path: dir.to_path_buf(), source })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("step-")))
                .filter(|p| p.extension().is_none())
                .collect();
            all.sort();
            for old in all.iter().filter(|p| **p != prev && **p != final_dir) {
                let _ = std::fs::remove_dir_all(old);
            }
        }
        Ok(final_dir)
    }

    pub(super) fn restore(
        dir: &Path,
        model: &Model,
        opt: &mut AdamW,
        vars: &[(String, candle_core::Var)],
    ) -> Result<Option<TrainerState>> {
        let Some(ckpt) = latest(dir) else {
            return Ok(None);
        };
        let state_path = ckpt.join("trainer_state.json");
        let text = crate::fs::read_file(&state_path, "the checkpoint is incomplete")?;
        let state: TrainerState =
            serde_json::from_str(&text).map_err(|e| Error::malformed(&state_path, e.to_string()))?;
        let weights = crate::model::load_tensors(&ckpt.join("model.safetensors"), model.device())?;
        for (name, var) in vars {
            let w = weights.get(name).ok_or_else(|| Error::MissingTensor {
                name: name.clone(),
                path: ckpt.clone(),
                hint: "the checkpoint was written by a run training other parameters".into(),
            })?;
            var.set(&w.to_dtype(var.dtype())?)?;
        }
        let opt_state = crate::model::load_tensors(&ckpt.join("optimizer.safetensors"), model.device())?;
        opt.load_state(&opt_state, state.report.steps)?;
        Ok(Some(state))
    }
}
