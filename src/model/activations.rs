//! Named points in the forward pass, what to capture, and the captured [`Activations`].
//!
//! Hook points and their shapes (`b` batch, `t` positions, `d` hidden size):
//!
//! | point | shape | Hugging Face equivalent |
//! |---|---|---|
//! | `Embed` | `(b, t, d)` | `hidden_states[0]` |
//! | `ResidPost(l)` | `(b, t, d)` | `hidden_states[l + 1]` for `l < L - 1` |
//! | `FinalNorm` | `(b, t, d)` | `hidden_states[L]` (the last entry is after the final norm) |
//! | `AttnOut(l)` | `(b, t, d)` | what attention adds to the residual stream (after `o_proj`) |
//! | `MlpOut(l)` | `(b, t, d)` | what the MLP adds to the residual stream (after `down_proj`) |
//! | `Module(id)` | `(b, t, out)` | the projection's output: q/k/v before rotary, gate before SiLU |
//!
//! The footgun: `ResidPost(L - 1)` is *not* in Hugging Face's list; its last entry is the
//! normed stream, [`HookPoint::FinalNorm`]. [`Activations::hidden_states`] returns the HF list.

use super::modules::{ModuleId, ModuleKind, ModuleSet};
use crate::error::{Error, Result};
use candle_core::Tensor;
use std::collections::BTreeMap;
use std::fmt;

/// A named point in the forward pass (see the module docs for shapes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HookPoint {
    /// Token embeddings, before layer 0.
    Embed,
    /// Attention output of layer `l`, as added to the residual stream.
    AttnOut(usize),
    /// MLP output of layer `l`, as added to the residual stream.
    MlpOut(usize),
    /// Residual stream after layer `l`.
    ResidPost(usize),
    /// One projection's output.
    Module(ModuleId),
    /// The residual stream after the final RMSNorm.
    FinalNorm,
}

impl HookPoint {
    /// Shorthand for `HookPoint::Module(ModuleId::new(layer, kind))`.
    pub fn module(layer: usize, kind: ModuleKind) -> Self {
        HookPoint::Module(ModuleId::new(layer, kind))
    }
}

impl fmt::Display for HookPoint {
    /// `embed`, `layers.3.attn_out`, `layers.3.mlp_out`, `layers.3.resid_post`,
    /// `layers.3.self_attn.q_proj`, `final_norm`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HookPoint::Embed => f.write_str("embed"),
            HookPoint::AttnOut(l) => write!(f, "layers.{l}.attn_out"),
            HookPoint::MlpOut(l) => write!(f, "layers.{l}.mlp_out"),
            HookPoint::ResidPost(l) => write!(f, "layers.{l}.resid_post"),
            HookPoint::Module(m) => write!(f, "{m}"),
            HookPoint::FinalNorm => f.write_str("final_norm"),
        }
    }
}

/// Which logits a forward pass computes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LogitsMode {
    /// Every position: `(b, t, vocab)`.
    #[default]
    All,
    /// The last real token of each row: `(b, vocab)`.
    Last,
    /// Only these rows of the flattened `(b * t)` positions: `(n, vocab)`. Training uses it to
    /// skip the LM head on prompt and padding positions.
    Rows(Vec<u32>),
    /// No logits (feature extraction only).
    None,
}

/// What a forward pass keeps. Explicit, so memory stays bounded.
///
/// ```
/// use secure_tuning::model::{Capture, LogitsMode, ModuleSet};
/// let c = Capture::residual().with_modules(ModuleSet::attn(2)).with_logits(LogitsMode::Last);
/// assert!(c.hidden_states && c.modules.len() == 8);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Capture {
    /// Keep every hidden state (embeddings, each layer's residual output, final norm).
    pub hidden_states: bool,
    /// Keep each layer's attention and MLP outputs.
    pub block_outputs: bool,
    /// Keep these projections' outputs.
    pub modules: ModuleSet,
    /// Which logits to compute.
    pub logits: LogitsMode,
}

impl Capture {
    /// Logits at every position, nothing else.
    pub fn logits() -> Self {
        Capture::default()
    }

    /// Every hidden state, no logits.
    pub fn residual() -> Self {
        Capture { hidden_states: true, logits: LogitsMode::None, ..Capture::default() }
    }

    /// Everything: hidden states, block outputs and all projections of `num_layers` layers.
    pub fn everything(num_layers: usize) -> Self {
        Capture {
            hidden_states: true,
            block_outputs: true,
            modules: ModuleSet::all(num_layers),
            logits: LogitsMode::All,
        }
    }

    /// Also keep these projections' outputs.
    pub fn with_modules(mut self, modules: ModuleSet) -> Self {
        self.modules = modules;
        self
    }

    /// Set which logits to compute.
    pub fn with_logits(mut self, logits: LogitsMode) -> Self {
        self.logits = logits;
        self
    }

    fn wants(&self, p: &HookPoint) -> bool {
        match p {
            HookPoint::Embed | HookPoint::ResidPost(_) | HookPoint::FinalNorm => self.hidden_states,
            HookPoint::AttnOut(_) | HookPoint::MlpOut(_) => self.block_outputs,
            HookPoint::Module(m) => self.modules.contains(m),
        }
    }
}

/// The result of a forward pass: logits (if asked for) and the captured hook points.
#[derive(Debug, Clone, Default)]
pub struct Activations {
    /// Logits as chosen by [`Capture::logits`]; `None` when not computed.
    pub logits: Option<Tensor>,
    points: BTreeMap<HookPoint, Tensor>,
    num_layers: usize,
}

impl Activations {
    /// Stores `x`, a `(b * t, width)` tensor of the decoder's flat rows, under `point` as `(b,
    /// t, width)` if the capture wants it, and passes `x` through.
    pub(crate) fn keep(
        &mut self,
        capture: &Capture,
        point: HookPoint,
        x: Tensor,
        (b, t): (usize, usize),
    ) -> Result<Tensor> {
        if let HookPoint::ResidPost(l) = point {
            self.num_layers = self.num_layers.max(l + 1);
        }
        if capture.wants(&point) {
            let width = x.elem_count() / (b * t).max(1);
            self.points.insert(point, x.reshape((b, t, width))?);
        }
        Ok(x)
    }

    /// The tensor at `point`, or an error naming the point and how to capture it.
    pub fn get(&self, point: HookPoint) -> Result<&Tensor> {
        self.points.get(&point).ok_or_else(|| {
            Error::invalid(
                "hook point",
                format!("`{point}` was not captured; add it to the `Capture` passed to the forward"),
            )
        })
    }

    /// The residual stream after layer `layer`; negative values count from the end (`-1` is
    /// the last layer, before the final norm).
    pub fn resid(&self, layer: isize) -> Result<&Tensor> {
        let l = if layer < 0 { self.num_layers as isize + layer } else { layer };
        if l < 0 || l as usize >= self.num_layers {
            return Err(Error::invalid("layer", format!("{layer} is out of range for {} layers", self.num_layers)));
        }
        self.get(HookPoint::ResidPost(l as usize))
    }

    /// Hidden states in Hugging Face's `output_hidden_states` order: `num_layers + 1` tensors,
    /// embeddings first, the last one after the final norm.
    pub fn hidden_states(&self) -> Result<Vec<Tensor>> {
        let n = self.num_layers;
        let mut out = vec![self.get(HookPoint::Embed)?.clone()];
        for l in 0..n.saturating_sub(1) {
            out.push(self.get(HookPoint::ResidPost(l))?.clone());
        }
        out.push(self.get(HookPoint::FinalNorm)?.clone());
        Ok(out)
    }

    /// The logits, or an error if the capture did not ask for them.
    pub fn logits(&self) -> Result<&Tensor> {
        self.logits
            .as_ref()
            .ok_or_else(|| Error::invalid("logits", "not computed; use a Capture with LogitsMode::All or Last"))
    }

    /// Captured points, in order.
    pub fn points(&self) -> impl Iterator<Item = (&HookPoint, &Tensor)> {
        self.points.iter()
    }
}
