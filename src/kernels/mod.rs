//! The compute kernels under the model: fused CPU ops with their own backward passes, the
//! attention that picks fused or composed ops itself, the fused AdamW step (CPU loop and CUDA
//! kernel), and where CPU work runs. The model calls the small facade below and never needs to
//! know which path ran; every fused op is held to its composed twin by a unit test.
//!
//! Why they exist: candle's own fused kernels (RMSNorm, rotary, softmax) have no backward pass,
//! and written with differentiable tensor ops the same maths takes 2-7 ops forward and about
//! twice as many backward, each an autograd node with its own allocation, zero-filled gradient
//! and thread hand-off; on the CPU in f32 each fused op here is one pass each way
//! (docs/performance.md). Other dtypes and devices take the composed ops.

mod adamw;
mod attention;
mod cpu;
mod cross_entropy;
mod matmul;
mod norm;
mod rope;
mod simd;
mod swiglu;

pub(crate) use adamw::AdamWStep;
pub(crate) use attention::{attention, AttentionInput};
pub use cpu::{configure_cpu_threads, run_on_cpu_pool};
pub(crate) use cross_entropy::cross_entropy;
pub(crate) use matmul::linear;
pub(crate) use swiglu::swiglu;

use crate::error::Result;
use candle_core::Tensor;

/// Which kernels a forward pass may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavour {
    /// Candle's fused inference kernels (RMSNorm, rotary embedding, softmax), which are faster
    /// but have no backward pass.
    Inference,
    /// Only ops with a backward pass, so that gradients reach the trainable parameters.
    Training,
}

/// `weight * (x / sqrt(mean(x^2) + eps))` over the last dimension, as Hugging Face computes it.
pub(crate) fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64, flavour: Flavour) -> Result<Tensor> {
    match flavour {
        Flavour::Inference => Ok(candle_nn::ops::rms_norm(&x.contiguous()?, weight, eps as f32)?),
        Flavour::Training => norm::rms_norm(x, weight, eps),
    }
}
