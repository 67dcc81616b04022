//! AdamW with inspectable, saveable state.
//!
//! The update is PyTorch's / candle's AdamW (decoupled weight decay, bias-corrected moments).
//! It is written out here rather than using `candle_nn::AdamW` because candle keeps the moment
//! tensors private, so a checkpoint could not save them and a resumed run would not be
//! bit-identical to an uninterrupted one.

use crate::error::Result;
use crate::kernels::AdamWStep;
use candle_core::{DType, Tensor, Var};
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

/// One parameter's optimizer state: f32 rows `[master weight; m; v]`, shape `(3, n)`. The
/// master copy is what the update applies to, so a bf16 parameter does not round small updates
/// away; the parameter is then set from it.
struct Slot {
    var: Var,
    state: Tensor,
    decay: bool,
    /// Updates this parameter has had: bias correction counts from a parameter's own first
    /// step, so a group that joins late (SWAT's phase 2) starts with a normal-sized step.
    t: usize,
}

impl Slot {
    fn new(var: &Var, master: Tensor, m: Tensor, v: Tensor, t: usize) -> Result<Self> {
        let flat = |x: Tensor| -> Result<Tensor> { Ok(x.to_dtype(DType::F32)?.flatten_all()?) };
        let state = Tensor::stack(&[flat(master)?, flat(m)?, flat(v)?], 0)?.contiguous()?;
        Ok(Slot { var: var.clone(), state, decay: var.as_tensor().rank() == 2, t })
    }

    /// Row `i` of the state (0 master, 1 m, 2 v) in the parameter's shape.
    fn row(&self, i: usize) -> Result<Tensor> {
        Ok(self.state.get(i)?.reshape(self.var.shape())?)
    }
}

/// AdamW over named parameters; each step takes a per-parameter learning rate, so one
/// optimizer serves every LR group. Each parameter's update is one fused pass (see
/// `crate::kernels::AdamWStep`): one kernel launch on a GPU instead of about sixteen.
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
                let w = var.as_tensor();
                let zeros = w.zeros_like()?;
                Ok((name.clone(), Slot::new(var, w.clone(), zeros.clone(), zeros, 0)?))
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
            let lr = lr(name);
            let decay = if slot.decay { 1.0 - lr * p.weight_decay } else { 1.0 };
            let op = AdamWStep {
                lr: lr as f32,
                beta1: p.beta1 as f32,
                beta2: p.beta2 as f32,
                eps: p.eps as f32,
                c1: (1.0 - p.beta1.powi(t)) as f32,
                c2: (1.0 - p.beta2.powi(t)) as f32,
                decay: decay as f32,
            };
            let old = if trace { Some(slot.state.get(0)?.copy()?) } else { None };
            slot.state.inplace_op2(&g.flatten_all()?.contiguous()?, &op)?;
            if let Some(old) = old {
                let delta = (slot.state.get(0)? - old)?.sqr()?.sum_all()?.to_scalar::<f32>()?;
                norms.insert(name.clone(), (delta as f64).sqrt());
            }
            slot.var.set(&slot.row(0)?.to_dtype(slot.var.dtype())?)?;
        }
        Ok(norms)
    }

    /// Number of steps taken.
    pub fn steps_taken(&self) -> usize {
        self.step
    }

    /// The moments and master weights as named tensors (`m.NAME`, `v.NAME`, `master.NAME`,
    /// `t.NAME`), copies for checkpoints.
    pub fn state(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        for (name, s) in &self.slots {
            for (i, key) in ["master", "m", "v"].iter().enumerate() {
                out.insert(format!("{key}.{name}"), s.row(i)?.copy()?);
            }
            out.insert(format!("t.{name}"), Tensor::new(&[s.t as u32], s.state.device())?);
        }
        Ok(out)
    }

    /// Restores moments (and master weights) saved by [`AdamW::state`] and the step count.
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
            let (m, v) = (get(format!("m.{name}"))?, get(format!("v.{name}"))?);
            // Older checkpoints have no master copy: start from the (restored) weight itself.
            let master = state.get(&format!("master.{name}")).cloned().unwrap_or_else(|| s.var.as_tensor().clone());
            // Checkpoints from before per-parameter counts: every parameter had every step.
            let t = match state.get(&format!("t.{name}")) {
                Some(t) => t.flatten_all()?.to_vec1::<u32>()?[0] as usize,
                None => step,
            };
            *s = Slot::new(&s.var, master, m, v, t)?;
        }
        self.step = step;
        Ok(())
    }
}
