//! AdamW with inspectable, saveable state.
//!
//! The update is PyTorch's / candle's AdamW (decoupled weight decay, bias-corrected moments).
//! It is written out here rather than using `candle_nn::AdamW` because candle keeps the moment
//! tensors private, so a checkpoint could not save them and a resumed run would not be
//! bit-identical to an uninterrupted one.

use crate::error::Result;
use candle_core::{Tensor, Var};
use std::collections::BTreeMap;

/// AdamW hyperparameters (PyTorch defaults).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWParams {
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay (applied to matrices only).
    pub weight_decay: f64,
}

impl Default for AdamWParams {
    fn default() -> Self {
        AdamWParams { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// One parameter's optimizer state.
struct Slot {
    var: Var,
    m: Tensor,
    v: Tensor,
    decay: bool,
    /// Updates this parameter has had: bias correction counts from a parameter's own first
    /// step, so a group that joins late (SWAT's phase 2) starts with a normal-sized step.
    t: usize,
}

/// AdamW over named parameters; each step takes a per-parameter learning rate, so one
/// optimizer serves every LR group.
pub struct AdamW {
    slots: BTreeMap<String, Slot>,
    params: AdamWParams,
    step: usize,
}

impl AdamW {
    /// An optimizer over `vars`; weight decay applies to 2-D tensors only (nanoGPT's rule).
    pub fn new(vars: &[(String, Var)], params: AdamWParams) -> Result<Self> {
        let slots = vars
            .iter()
            .map(|(name, var)| {
                let zeros = var.as_tensor().zeros_like()?;
                let decay = var.as_tensor().rank() == 2;
                Ok((name.clone(), Slot { var: var.clone(), m: zeros.clone(), v: zeros, decay, t: 0 }))
            })
            .collect::<Result<_>>()?;
        Ok(AdamW { slots, params, step: 0 })
    }

    /// Applies one update. `grads` holds each parameter's gradient by name (a parameter without
    /// one is left alone, moments included); `lr(name)` gives its learning rate this step.
    pub fn step(&mut self, grads: &BTreeMap<String, Tensor>, lr: impl Fn(&str) -> f64) -> Result<()> {
        self.step_traced(grads, lr, false).map(|_| ())
    }

    /// [`AdamW::step`]; with `trace`, also returns each updated parameter's `||new - old||`.
    pub fn step_traced(
        &mut self,
        grads: &BTreeMap<String, Tensor>,
        lr: impl Fn(&str) -> f64,
        trace: bool,
    ) -> Result<BTreeMap<String, f64>> {
        self.step += 1;
        let p = self.params;
        let mut norms = BTreeMap::new();
        for (name, slot) in self.slots.iter_mut() {
            let Some(g) = grads.get(name) else { continue };
            slot.t += 1;
            let t = slot.t as i32;
            let (c1, c2) = (1.0 - p.beta1.powi(t), 1.0 - p.beta2.powi(t));
            let lr = lr(name);
            slot.m = ((&slot.m * p.beta1)? + (g * (1.0 - p.beta1))?)?;
            slot.v = ((&slot.v * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
            let update = ((&slot.m / c1)? / ((&slot.v / c2)?.sqrt()? + p.eps)?)?;
            let w = slot.var.as_tensor();
            let decayed =
                if slot.decay && p.weight_decay > 0.0 { (w * (1.0 - lr * p.weight_decay))? } else { w.clone() };
            let new = (decayed - (update * lr)?)?;
            if trace {
                let delta = (&new - w)?.to_dtype(candle_core::DType::F32)?.sqr()?.sum_all()?.to_scalar::<f32>()?;
                norms.insert(name.clone(), (delta as f64).sqrt());
            }
            slot.var.set(&new)?;
        }
        Ok(norms)
    }

    /// Number of steps taken.
    pub fn steps_taken(&self) -> usize {
        self.step
    }

    /// The moments as named tensors (`m.NAME`, `v.NAME`), for checkpoints.
    pub fn state(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for (name, s) in &self.slots {
            out.insert(format!("m.{name}"), s.m.clone());
            out.insert(format!("v.{name}"), s.v.clone());
            if let Ok(t) = Tensor::new(&[s.t as u32], s.m.device()) {
                out.insert(format!("t.{name}"), t);
            }
        }
        out
    }

    /// Restores moments saved by [`AdamW::state`] and the step count.
    pub fn load_state(&mut self, state: &BTreeMap<String, Tensor>, step: usize) -> Result<()> {
        for (name, s) in self.slots.iter_mut() {
            let get = |k: String| {
                state.get(&k).cloned().ok_or_else(|| {
                    crate::Error::invalid(
                        "checkpoint",
                        format!("optimizer state lacks `{k}`; was it written by another plan?"),
                    )
                })
            };
            s.m = get(format!("m.{name}"))?;
            s.v = get(format!("v.{name}"))?;
            // Checkpoints from before per-parameter counts: every parameter had every step.
            s.t = match state.get(&format!("t.{name}")) {
                Some(t) => t.flatten_all()?.to_vec1::<u32>()?[0] as usize,
                None => step,
            };
        }
        self.step = step;
        Ok(())
    }
}
