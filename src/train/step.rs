//! One optimizer step, outside the loop: the loop calls it and the benchmark times it.

use super::config::{LrGroup, TrainConfig};
use super::examples::{response_loss, Example};
use super::optim::{AdamW, AdamWParams};
use crate::error::{Error, Result};
use crate::model::Model;
use candle_core::{DType, Tensor, Var};
use std::collections::BTreeMap;

/// One optimizer step of a plan, outside the loop: the training loop calls it, and the
/// benchmark times it. It owns the trainable `Var`s and the optimizer.
pub struct TrainStep {
    pub(super) vars: Vec<(String, Var)>,
    pub(super) opt: AdamW,
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
    /// # use secure_tuning::{Model, data::Record, train::{encode_examples, TrainConfig, TrainStep}};
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
