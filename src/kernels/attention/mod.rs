//! Causal grouped-query self-attention, one entry point for the decoder: [`attention`] picks
//! the fused CPU op for a fresh batch ([`rows`]), the fused op against a KV cache ([`fused`]),
//! or composed candle ops (GPU, other dtypes), and applies the rotary embedding on the way.

mod fused;
mod rows;

use super::{rope, Flavour};
use crate::error::Result;
use candle_core::{DType, Tensor, D};

/// What attention needs besides `q`, `k` and `v`.
pub(crate) struct AttentionInput<'a> {
    /// Rotary cosines and sines of the new positions, `(t, head_dim / 2)` each.
    pub angles: (&'a Tensor, &'a Tensor),
    /// Additive f32 mask `(1 or b, 1, t, total)` (0 = attend, `f32::MIN` = blocked), or none.
    pub mask: Option<&'a Tensor>,
    /// `(b, t)` of the new positions.
    pub seq: (usize, usize),
    /// `(heads, kv_heads, head_dim)`.
    pub heads: (usize, usize, usize),
    /// Inference or training kernels.
    pub flavour: Flavour,
}

/// `softmax(rope(q) rope(k)^T / sqrt(hd) + mask) v` for the projections' rows: `q` `(b * t,
/// heads * hd)`, `k` and `v` `(b * t, kv_heads * hd)`. With a `cache`, the new keys and values
/// are appended to it and the queries attend to all of them. Returns `(b * t, heads * hd)`, the
/// input of `o_proj`.
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    input: &AttentionInput,
    cache: Option<&mut Option<(Tensor, Tensor)>>,
) -> Result<Tensor> {
    let ((b, t), (heads, kv_heads, hd)) = (input.seq, input.heads);
    if cache.is_none() {
        // A fresh batch on the CPU in f32: rotary, scale and attention as one op on the rows.
        if let Some(y) = rows::self_attention_rows(q, k, v, input.angles, input.mask, input.seq, input.heads)? {
            return Ok(y);
        }
    }
    // The 1/sqrt(hd) scale goes on q, the small tensor, rather than on the scores.
    let q = (q.reshape((b, t, heads, hd))?.transpose(1, 2)?.contiguous()? * (hd as f64).powf(-0.5))?;
    let k = k.reshape((b, t, kv_heads, hd))?.transpose(1, 2)?.contiguous()?; // (b, kv, t, hd)
    let v = v.reshape((b, t, kv_heads, hd))?.transpose(1, 2)?.contiguous()?;
    let (cos, sin) = input.angles;
    let (q, k) = match input.flavour {
        Flavour::Inference => (candle_nn::rotary_emb::rope(&q, cos, sin)?, candle_nn::rotary_emb::rope(&k, cos, sin)?),
        Flavour::Training => (rope::rope(&q, cos, sin)?, rope::rope(&k, cos, sin)?),
    };
    let (k, v) = match cache {
        Some(slot) => {
            let kv = match slot.take() {
                Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                None => (k, v),
            };
            *slot = Some(kv.clone());
            kv
        }
        None => (k, v),
    };
    let to_rows = |y: Tensor| -> Result<Tensor> { Ok(y.transpose(1, 2)?.reshape((b * t, heads * hd))?) };
    // With a cache, one op on the CPU in f32 (both flavours); composed ops elsewhere.
    if let Some(y) = fused::attention(&q, &k, &v, input.mask)? {
        return to_rows(y);
    }
    let k = candle_transformers::utils::repeat_kv(k, heads / kv_heads)?; // (b, heads, total, hd)
    let v = candle_transformers::utils::repeat_kv(v, heads / kv_heads)?;
    let scores = q.matmul(&k.t()?)?; // (b, heads, t, total)
    let probs = match input.flavour {
        Flavour::Inference => {
            // Scores stay in the model's dtype; the kernel accumulates in f32.
            let scores = match input.mask {
                Some(mask) => scores.broadcast_add(&in_dtype(mask, scores.dtype())?)?,
                None => scores,
            };
            candle_nn::ops::softmax_last_dim(&scores)?
        }
        Flavour::Training => {
            // Scores and softmax in f32, as Hugging Face's eager attention does.
            let scores = scores.to_dtype(DType::F32)?;
            let scores = match input.mask {
                Some(mask) => scores.broadcast_add(mask)?,
                None => scores,
            };
            candle_nn::ops::softmax(&scores, D::Minus1)?.to_dtype(v.dtype())?
        }
    };
    to_rows(probs.matmul(&v)?)
}

/// A 0 / `f32::MIN` mask in `dtype`, blocked entries clamped to the dtype's lowest finite value
/// (a plain cast would turn them into -inf in bf16 and f16).
fn in_dtype(mask: &Tensor, dtype: DType) -> Result<Tensor> {
    let lowest = match dtype {
        DType::BF16 => -3.389_531_4e38,
        DType::F16 => -65_504.0,
        _ => return Ok(mask.to_dtype(dtype)?),
    };
    Ok(mask.clamp(lowest, 0f32)?.to_dtype(dtype)?)
}
