//! The hooked decoder: one implementation for Llama, Qwen2 and Mistral, read bottom-up
//! (norm, rotary, linear, attention, MLP, layer, decoder), with named hook points.
//!
//! Two flavours of the same code: the inference decoder uses candle's fused kernels (RMSNorm,
//! rotary embedding, softmax; attention scores in the model's dtype, accumulated in f32 inside
//! the kernels), while the training decoder uses ops that have a backward pass
//! ([`super::train_ops`]: an f32 RMSNorm and rotate-half rotary embeddings; candle's f32 softmax),
//! because candle's fused kernels have no gradient. On the CPU in f32 both run attention as one
//! op ([`super::fused_attention`]; for a fresh batch with the rotary embedding inside) and the
//! training ops are fused too, each one pass forward and one backward, as are a trained
//! projection and a frozen one with its LoRA adapters. Hidden states flow as `(b * t, d)` rows;
//! captures are `(b, t, d)`.
//! Every op is a node of candle's autograd graph, whose backward pass gives each node a zeroed
//! gradient and an add, so fewer nodes is most of a small model's training speed.
//! Parameter names are Hugging Face's, so `model.layers.3.mlp.down_proj.weight` in a checkpoint
//! is `layers[3].mlp.down_proj.weight` here.

use super::activations::{Activations, Capture, HookPoint, LogitsMode};
use super::config::{Config, RopeScaling};
use super::modules::{ModuleId, ModuleKind};
use super::weights::WeightSource;
use super::{fused_attention, train_ops};
use crate::error::Result;
use candle_core::{DType, Device, Tensor, D};
use rayon::prelude::*;

/// `y = x @ weight.t() + bias (+ scale * x @ A.t() @ B.t())` for inputs `(rows, in)`; the LoRA
/// term only when the module has adapters.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    adapter: Option<Adapter>,
}

/// `x @ weight.t()` for a 2-D contiguous `x`; a frozen (non-`Var`) weight gets no gradient.
fn project(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    if !weight.is_variable() {
        Ok(x.apply_op1_arc(std::sync::Arc::new(Box::new(FrozenMatmul { weight: weight.clone() })))?)
    } else if train_ops::fused_here(&[x, weight]) {
        Ok(x.apply_op2(weight, TrainedMatmul)?)
    } else {
        Ok(x.matmul(&weight.t()?)?)
    }
}

/// `x @ w.t()` for a trained `w` on the CPU in f32. Composed, the transpose is a node of its own:
/// its backward pass adds the `(in, out)` gradient of `x.t() @ grad`, transposed, into a zeroed
/// `(out, in)` one, element by element through strides (on qwen2.5-0.5b, 1.4 GB per step). Here
/// `w`'s gradient is `grad.t() @ x`, computed in `w`'s own layout.
struct TrainedMatmul;

impl candle_core::CustomOp2 for TrainedMatmul {
    fn name(&self) -> &'static str {
        "trained-matmul"
    }

    fn cpu_fwd(
        &self,
        x: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
        w: &candle_core::CpuStorage,
        w_layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        matmul_t(x, layout, w, w_layout)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.matmul(w)?), Some(grad.t()?.matmul(x)?)))
    }
}

/// `x @ weight.t()` for a frozen `weight`: the same GEMM as `matmul`, but its backward pass
/// returns only the input's gradient. Candle's own matmul always computes the weight's gradient
/// as well, a third of a training step's FLOPs wasted on every frozen module (all of them under
/// LoRA, the rest under freeze-rest).
struct FrozenMatmul {
    weight: Tensor,
}

/// `x @ w.t()` on one backend's storage; `x` is `(rows, k)`, `w` is `(n, k)`.
fn matmul_t<B: candle_core::backend::BackendStorage>(
    x: &B,
    layout: &candle_core::Layout,
    w: &B,
    w_layout: &candle_core::Layout,
) -> candle_core::Result<(B, candle_core::Shape)> {
    let (rows, k) = layout.shape().dims2()?;
    let (n, _) = w_layout.shape().dims2()?;
    Ok((x.matmul(w, (1, rows, n, k), layout, &w_layout.transpose(0, 1)?)?, (rows, n).into()))
}

impl candle_core::CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(
        &self,
        x: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (w, w_layout) = self.weight.storage_and_layout();
        let candle_core::Storage::Cpu(w) = &*w else {
            candle_core::bail!("frozen-matmul: the weight is not on the CPU");
        };
        matmul_t(x, layout, w, w_layout)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
        let (w, w_layout) = self.weight.storage_and_layout();
        let candle_core::Storage::Cuda(w) = &*w else {
            candle_core::bail!("frozen-matmul: the weight is not on the GPU");
        };
        matmul_t(x, layout, w, w_layout)
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.weight)?))
    }
}

/// `x @ weight.t() + scale * (x @ a.t()) @ b.t()` for a frozen `weight` and a LoRA adapter's `a`
/// `(r, in)` and `b` `(out, r)`, all CPU f32. Composed, this is five autograd nodes (the base
/// projection, two matmuls, the scale, the add), each with a pass over its output and, in the
/// backward pass, a zero-filled gradient and an add; here it is one, and the backward pass
/// computes the three gradients directly.
struct LoraMatmul {
    weight: Tensor,
    scale: f32,
}

impl candle_core::CustomOp3 for LoraMatmul {
    fn name(&self) -> &'static str {
        "lora-matmul"
    }

    fn cpu_fwd(
        &self,
        x: &candle_core::CpuStorage,
        xl: &candle_core::Layout,
        a: &candle_core::CpuStorage,
        al: &candle_core::Layout,
        b: &candle_core::CpuStorage,
        bl: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (w, wl) = self.weight.storage_and_layout();
        let candle_core::Storage::Cpu(w) = &*w else {
            candle_core::bail!("lora-matmul: the weight is not on the CPU");
        };
        let (y, shape) = matmul_t(x, xl, w, wl)?;
        let (low, low_shape) = matmul_t(x, xl, a, al)?;
        let (up, _) = matmul_t(&low, &candle_core::Layout::contiguous(low_shape), b, bl)?;
        let (candle_core::CpuStorage::F32(mut y), candle_core::CpuStorage::F32(up)) = (y, up) else {
            candle_core::bail!("lora-matmul: expects f32 tensors");
        };
        let scale = self.scale;
        y.par_chunks_mut(1 << 14).zip(up.par_chunks(1 << 14)).for_each(|(y, up)| {
            y.iter_mut().zip(up).for_each(|(y, u)| *y += scale * u);
        });
        Ok((candle_core::CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let low = x.matmul(&a.t()?)?; // (rows, r), recomputed: r is small
        let d_low = (grad.matmul(b)? * self.scale as f64)?;
        let db = (grad.t()?.matmul(&low)? * self.scale as f64)?;
        let da = d_low.t()?.matmul(x)?;
        let dx = (grad.matmul(&self.weight)? + d_low.matmul(a)?)?;
        Ok((Some(dx), Some(da), Some(db)))
    }
}

/// A LoRA adapter: `a` is `(r, in)`, `b` is `(out, r)`, both f32.
#[derive(Debug, Clone)]
struct Adapter {
    a: Tensor,
    b: Tensor,
    scale: f64,
}

impl Linear {
    fn load(w: &WeightSource, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let weight = w.get("weight", &[out_dim, in_dim])?;
        let bias = if bias { Some(w.get("bias", &[out_dim])?) } else { None };
        let adapter = match (w.lora_scale(), w.rows("lora_A.weight")) {
            (Some(scale), Some(rank)) => Some(Adapter {
                a: w.pp("lora_A").get("weight", &[rank, in_dim])?,
                b: w.pp("lora_B").get("weight", &[out_dim, rank])?,
                scale,
            }),
            _ => None,
        };
        Ok(Linear { weight, bias, adapter })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // One 2-D GEMM against the transposed view; no copy of the weight.
        let x = x.contiguous()?;
        let y = match &self.adapter {
            // A frozen base on the CPU in f32: base and low-rank path as one autograd node.
            Some(ad) if !self.weight.is_variable() && train_ops::fused_here(&[&x, &self.weight, &ad.a, &ad.b]) => {
                let op = LoraMatmul { weight: self.weight.clone(), scale: ad.scale as f32 };
                x.apply_op3(&ad.a, &ad.b, op)?
            }
            // The low-rank path runs in the adapters' f32 and joins the base output's dtype.
            Some(ad) => {
                let low = x.to_dtype(ad.a.dtype())?.matmul(&ad.a.t()?)?.matmul(&ad.b.t()?)?;
                (project(&x, &self.weight)? + (low * ad.scale)?.to_dtype(self.weight.dtype())?)?
            }
            None => project(&x, &self.weight)?,
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// RMSNorm computed in f32 as Hugging Face does: `w * (x / sqrt(mean(x^2) + eps))`.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn load(w: &WeightSource, dim: usize, eps: f64) -> Result<Self> {
        Ok(RmsNorm { weight: w.get("weight", &[dim])?, eps })
    }

    fn forward(&self, x: &Tensor, fused: bool) -> Result<Tensor> {
        if fused {
            return Ok(candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight, self.eps as f32)?);
        }
        train_ops::rms_norm(x, &self.weight, self.eps)
    }
}

/// Rotary embedding frequencies, with Hugging Face's `linear` and `llama3` scaling.
#[derive(Debug, Clone)]
struct Rotary {
    inv_freq: Vec<f32>,
}

impl Rotary {
    fn new(cfg: &Config) -> Self {
        let dim = cfg.head_dim;
        let base: Vec<f64> = (0..dim / 2).map(|i| 1.0 / cfg.rope_theta.powf((2 * i) as f64 / dim as f64)).collect();
        let inv_freq = match cfg.rope_scaling {
            RopeScaling::None => base,
            RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                let old = original_max_position_embeddings as f64;
                let (low_wavelen, high_wavelen) = (old / low_freq_factor, old / high_freq_factor);
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        };
        Rotary { inv_freq: inv_freq.into_iter().map(|f| f as f32).collect() }
    }

    /// `(cos, sin)` for positions `offset..offset + t`, each `(t, head_dim / 2)`.
    fn cos_sin(&self, offset: usize, t: usize, dtype: DType, dev: &Device) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut freqs = Vec::with_capacity(t * half);
        for p in offset..offset + t {
            freqs.extend(self.inv_freq.iter().map(|f| f * p as f32));
        }
        let freqs = Tensor::from_vec(freqs, (t, half), dev)?;
        Ok((freqs.cos()?.to_dtype(dtype)?, freqs.sin()?.to_dtype(dtype)?))
    }
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

/// Per-layer key/value cache for incremental decoding, of one sequence or of a left-padded batch.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// Padding positions at the start of each row, blocked as keys for every later query.
    left_pad: Vec<usize>,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty cache for a batch whose row `i` starts with `left_pad[i]` padding tokens. Rows
    /// are padded on the left so that every row's next token has the same position; rotary
    /// attention depends only on relative positions, so the shift leaves each row's result as if
    /// it ran alone.
    ///
    /// ```
    /// let cache = secure_tuning::model::KvCache::left_padded(vec![2, 0]);
    /// assert_eq!(cache.rows(), 2);
    /// ```
    pub fn left_padded(left_pad: Vec<usize>) -> Self {
        KvCache { layers: Vec::new(), left_pad }
    }

    /// Rows of the batch this cache is for (1 for [`KvCache::new`]).
    pub fn rows(&self) -> usize {
        self.left_pad.len().max(1)
    }

    /// Number of positions already cached.
    pub fn len(&self) -> usize {
        self.layers.first().and_then(|l| l.as_ref()).map(|(k, _)| k.dim(2).unwrap_or(0)).unwrap_or(0)
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Everything a layer's forward needs besides its input.
struct ForwardCtx<'a> {
    cos: &'a Tensor,
    sin: &'a Tensor,
    /// Additive masks, `(b, 1, t, total)`, one per distinct sliding window; `None` = no mask needed.
    masks: &'a [(Option<usize>, Option<Tensor>)],
    capture: &'a Capture,
    /// Use the fused (inference-only) kernels.
    fused: bool,
    /// The batch's `(b, t)`. Hidden states flow as `(b * t, width)` rows: a reshape is a node of
    /// the autograd graph, and its backward pass costs a zero-filled gradient and an add.
    seq: (usize, usize),
}

impl ForwardCtx<'_> {
    /// [`Activations::keep`] for this batch.
    fn keep(&self, acts: &mut Activations, point: HookPoint, x: Tensor) -> Result<Tensor> {
        acts.keep(self.capture, point, x, self.seq)
    }

    fn mask(&self, window: Option<usize>) -> Option<&Tensor> {
        self.masks.iter().find(|(w, _)| *w == window).and_then(|(_, m)| m.as_ref())
    }
}

/// Multi-head attention with grouped key/value heads.
#[derive(Debug, Clone)]
pub struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(w: &WeightSource, cfg: &Config) -> Result<Self> {
        let (d, hd) = (cfg.hidden_size, cfg.head_dim);
        Ok(Attention {
            q_proj: Linear::load(&w.pp("q_proj"), d, cfg.num_heads * hd, cfg.qkv_bias)?,
            k_proj: Linear::load(&w.pp("k_proj"), d, cfg.num_kv_heads * hd, cfg.qkv_bias)?,
            v_proj: Linear::load(&w.pp("v_proj"), d, cfg.num_kv_heads * hd, cfg.qkv_bias)?,
            o_proj: Linear::load(&w.pp("o_proj"), cfg.num_heads * hd, d, cfg.o_bias)?,
            num_heads: cfg.num_heads,
            num_kv_heads: cfg.num_kv_heads,
            head_dim: hd,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        layer: usize,
        window: Option<usize>,
        ctx: &ForwardCtx,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        acts: &mut Activations,
    ) -> Result<Tensor> {
        let (b, t) = ctx.seq;
        let hd = self.head_dim;
        let q = ctx.keep(acts, HookPoint::module(layer, ModuleKind::Q), self.q_proj.forward(x)?)?;
        let k = ctx.keep(acts, HookPoint::module(layer, ModuleKind::K), self.k_proj.forward(x)?)?;
        let v = ctx.keep(acts, HookPoint::module(layer, ModuleKind::V), self.v_proj.forward(x)?)?;
        if cache.is_none() {
            // A fresh batch on the CPU in f32: rotary, scale and attention as one op on the rows.
            let heads = (self.num_heads, self.num_kv_heads, hd);
            let (angles, mask) = ((ctx.cos, ctx.sin), ctx.mask(window));
            if let Some(y) = fused_attention::self_attention_rows(&q, &k, &v, angles, mask, ctx.seq, heads)? {
                return ctx.keep(acts, HookPoint::module(layer, ModuleKind::O), self.o_proj.forward(&y)?);
            }
        }
        // The 1/sqrt(hd) scale goes on q, the small tensor, rather than on the scores.
        let q = (q.reshape((b, t, self.num_heads, hd))?.transpose(1, 2)?.contiguous()? * (hd as f64).powf(-0.5))?;
        let k = k.reshape((b, t, self.num_kv_heads, hd))?.transpose(1, 2)?.contiguous()?; // (b, kv, t, hd)
        let v = v.reshape((b, t, self.num_kv_heads, hd))?.transpose(1, 2)?.contiguous()?;
        let (q, k) = if ctx.fused {
            (candle_nn::rotary_emb::rope(&q, ctx.cos, ctx.sin)?, candle_nn::rotary_emb::rope(&k, ctx.cos, ctx.sin)?)
        } else {
            (train_ops::rope(&q, ctx.cos, ctx.sin)?, train_ops::rope(&k, ctx.cos, ctx.sin)?)
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
        // With a cache, one op on the CPU in f32 (both decoders); composed ops elsewhere.
        if let Some(y) = fused_attention::attention(&q, &k, &v, ctx.mask(window))? {
            let y = y.transpose(1, 2)?.reshape((b * t, self.num_heads * hd))?;
            return ctx.keep(acts, HookPoint::module(layer, ModuleKind::O), self.o_proj.forward(&y)?);
        }
        let n_rep = self.num_heads / self.num_kv_heads;
        let k = candle_transformers::utils::repeat_kv(k, n_rep)?; // (b, heads, total, hd)
        let v = candle_transformers::utils::repeat_kv(v, n_rep)?;
        let scores = q.matmul(&k.t()?)?; // (b, heads, t, total)
        let probs = if ctx.fused {
            // Scores stay in the model's dtype; the kernel accumulates in f32.
            let scores = match ctx.mask(window) {
                Some(mask) => scores.broadcast_add(&in_dtype(mask, scores.dtype())?)?,
                None => scores,
            };
            candle_nn::ops::softmax_last_dim(&scores)?
        } else {
            // Scores and softmax in f32, as HF's eager attention does.
            let scores = scores.to_dtype(DType::F32)?;
            let scores = match ctx.mask(window) {
                Some(mask) => scores.broadcast_add(mask)?,
                None => scores,
            };
            candle_nn::ops::softmax(&scores, D::Minus1)?.to_dtype(v.dtype())?
        };
        let y = probs.matmul(&v)?.transpose(1, 2)?.reshape((b * t, self.num_heads * hd))?;
        ctx.keep(acts, HookPoint::module(layer, ModuleKind::O), self.o_proj.forward(&y)?)
    }
}

/// SwiGLU MLP: `down(silu(gate(x)) * up(x))`.
#[derive(Debug, Clone)]
pub struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    fn load(w: &WeightSource, cfg: &Config) -> Result<Self> {
        let (d, i, bias) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias);
        Ok(Mlp {
            gate_proj: Linear::load(&w.pp("gate_proj"), d, i, bias)?,
            up_proj: Linear::load(&w.pp("up_proj"), d, i, bias)?,
            down_proj: Linear::load(&w.pp("down_proj"), i, d, bias)?,
        })
    }

    fn forward(&self, x: &Tensor, layer: usize, ctx: &ForwardCtx, acts: &mut Activations) -> Result<Tensor> {
        let gate = ctx.keep(acts, HookPoint::module(layer, ModuleKind::Gate), self.gate_proj.forward(x)?)?;
        let up = ctx.keep(acts, HookPoint::module(layer, ModuleKind::Up), self.up_proj.forward(x)?)?;
        let down = self.down_proj.forward(&train_ops::swiglu(&gate, &up)?)?;
        ctx.keep(acts, HookPoint::module(layer, ModuleKind::Down), down)
    }
}

/// One pre-norm decoder layer.
#[derive(Debug, Clone)]
pub struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
    sliding_window: Option<usize>,
}

impl DecoderLayer {
    fn load(w: &WeightSource, cfg: &Config, layer: usize) -> Result<Self> {
        Ok(DecoderLayer {
            input_layernorm: RmsNorm::load(&w.pp("input_layernorm"), cfg.hidden_size, cfg.rms_norm_eps)?,
            self_attn: Attention::load(&w.pp("self_attn"), cfg)?,
            post_attention_layernorm: RmsNorm::load(
                &w.pp("post_attention_layernorm"),
                cfg.hidden_size,
                cfg.rms_norm_eps,
            )?,
            mlp: Mlp::load(&w.pp("mlp"), cfg)?,
            sliding_window: cfg.sliding_window[layer],
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        layer: usize,
        ctx: &ForwardCtx,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        acts: &mut Activations,
    ) -> Result<Tensor> {
        let attn = self.self_attn.forward(
            &self.input_layernorm.forward(x, ctx.fused)?,
            layer,
            self.sliding_window,
            ctx,
            cache,
            acts,
        )?;
        let attn = ctx.keep(acts, HookPoint::AttnOut(layer), attn)?;
        let x = (x + attn)?;
        let mlp = self.mlp.forward(&self.post_attention_layernorm.forward(&x, ctx.fused)?, layer, ctx, acts)?;
        let mlp = ctx.keep(acts, HookPoint::MlpOut(layer), mlp)?;
        Ok((x + mlp)?)
    }
}

/// The decoder stack: embeddings, layers, final norm and LM head.
#[derive(Debug, Clone)]
pub struct Decoder {
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Tensor,
    rotary: Rotary,
    cfg: Config,
    /// Inference decoders use fused kernels; training ones ([`Decoder::for_training`]) do not.
    fused: bool,
}

/// The input of a forward pass: right-padded token ids and each row's real length.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Token ids, `(b, t)`, u32.
    pub input_ids: Tensor,
    /// Real (unpadded) length of each row; all `t` when unpadded.
    pub lengths: Vec<usize>,
}

impl Batch {
    /// Right-pads `seqs` with `pad_id` into one batch.
    ///
    /// ```
    /// use secure_tuning::model::Batch;
    /// let b = Batch::from_sequences(&[vec![1, 2, 3], vec![4]], 0, &candle_core::Device::Cpu).unwrap();
    /// assert_eq!(b.input_ids.dims(), &[2, 3]);
    /// assert_eq!(b.lengths, vec![3, 1]);
    /// ```
    pub fn from_sequences(seqs: &[Vec<u32>], pad_id: u32, device: &Device) -> Result<Self> {
        let t = seqs.iter().map(Vec::len).max().unwrap_or(0);
        if seqs.is_empty() || t == 0 {
            return Err(crate::Error::invalid("batch", "no tokens to run; the input text is empty"));
        }
        let mut ids = Vec::with_capacity(seqs.len() * t);
        for s in seqs {
            ids.extend_from_slice(s);
            ids.extend(std::iter::repeat_n(pad_id, t - s.len()));
        }
        Ok(Batch {
            input_ids: Tensor::from_vec(ids, (seqs.len(), t), device)?,
            lengths: seqs.iter().map(Vec::len).collect(),
        })
    }

    /// A batch of one unpadded sequence.
    pub fn single(ids: &[u32], device: &Device) -> Result<Self> {
        Self::from_sequences(&[ids.to_vec()], 0, device)
    }

    fn is_padded(&self) -> Result<bool> {
        let t = self.input_ids.dim(1)?;
        Ok(self.lengths.iter().any(|&l| l != t))
    }
}

impl Decoder {
    /// Loads every parameter under the HF names, checking shapes against `cfg`.
    pub fn load(w: &WeightSource, cfg: &Config) -> Result<Self> {
        super::load::configure_cpu_threads();
        let m = w.pp("model");
        let embed_tokens = m.pp("embed_tokens").get("weight", &[cfg.vocab_size, cfg.hidden_size])?;
        let layers = (0..cfg.num_layers)
            .map(|l| DecoderLayer::load(&m.pp("layers").pp(&l.to_string()), cfg, l))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(&m.pp("norm"), cfg.hidden_size, cfg.rms_norm_eps)?;
        let lm_head = if cfg.tie_word_embeddings {
            embed_tokens.clone()
        } else {
            w.pp("lm_head").get("weight", &[cfg.vocab_size, cfg.hidden_size])?
        };
        Ok(Decoder { embed_tokens, layers, norm, lm_head, rotary: Rotary::new(cfg), cfg: cfg.clone(), fused: true })
    }

    /// The same decoder using only ops with a backward pass, so gradients flow.
    pub fn for_training(mut self) -> Self {
        self.fused = false;
        self
    }

    /// Runs the decoder on `batch`, keeping what `capture` asks for. With a `cache`, the batch
    /// continues the cached sequence (positions start at the cache length) and is appended.
    pub fn forward(&self, batch: &Batch, capture: &Capture, cache: Option<&mut KvCache>) -> Result<Activations> {
        super::load::run_on_cpu_pool(batch.input_ids.device(), || self.forward_here(batch, capture, cache))
    }

    fn forward_here(&self, batch: &Batch, capture: &Capture, mut cache: Option<&mut KvCache>) -> Result<Activations> {
        let (b, t) = batch.input_ids.dims2()?;
        let offset = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        if let Some(c) = cache.as_deref_mut() {
            c.layers.resize(self.layers.len(), None);
        }
        let dev = batch.input_ids.device();
        let dtype = self.embed_tokens.dtype();
        let (cos, sin) = self.rotary.cos_sin(offset, t, dtype, dev)?;
        let mut windows: Vec<Option<usize>> = self.layers.iter().map(|l| l.sliding_window).collect();
        windows.dedup();
        let left_pad = cache.as_ref().map_or(&[][..], |c| c.left_pad.as_slice());
        let masks =
            windows.into_iter().map(|w| Ok((w, self.mask(batch, offset, w, left_pad)?))).collect::<Result<Vec<_>>>()?;
        let ctx = ForwardCtx { cos: &cos, sin: &sin, masks: &masks, capture, fused: self.fused, seq: (b, t) };
        let mut acts = Activations::default();
        let x = self.embed_tokens.embedding(&batch.input_ids.flatten_all()?)?; // (b * t, d)
        let mut x = ctx.keep(&mut acts, HookPoint::Embed, x)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let slot = cache.as_deref_mut().map(|c| &mut c.layers[l]);
            x = layer.forward(&x, l, &ctx, slot, &mut acts)?;
            x = ctx.keep(&mut acts, HookPoint::ResidPost(l), x)?;
        }
        let x = ctx.keep(&mut acts, HookPoint::FinalNorm, self.norm.forward(&x, self.fused)?)?;
        acts.logits = match &capture.logits {
            LogitsMode::None => None,
            LogitsMode::All => Some(self.head(&x)?.reshape((b, t, self.cfg.vocab_size))?),
            LogitsMode::Last => {
                let rows: Vec<u32> =
                    batch.lengths.iter().enumerate().map(|(i, &len)| (i * t + len - 1) as u32).collect();
                let index = Tensor::new(rows.as_slice(), dev)?;
                Some(self.head(&x.index_select(&index, 0)?)?) // (b, vocab)
            }
            LogitsMode::Rows(rows) => {
                let index = Tensor::new(rows.as_slice(), dev)?;
                Some(self.head(&x.index_select(&index, 0)?)?) // (n, vocab)
            }
        };
        Ok(acts)
    }

    /// The LM head's logits `(rows, vocab)` of the hidden rows `x` `(rows, d)`.
    fn head(&self, x: &Tensor) -> Result<Tensor> {
        project(&x.contiguous()?, &self.lm_head)
    }

    /// Additive f32 mask (0 = attend, `f32::MIN` = blocked), or `None` when no position needs
    /// blocking (a single new token, unpadded, inside any window). Built on the device: `(1, 1,
    /// t, offset + t)` shared by every row when no row is padded, else `(b, 1, t, offset + t)`.
    /// `left_pad` (from a [`KvCache::left_padded`] cache) blocks each row's leading padding keys.
    fn mask(&self, batch: &Batch, offset: usize, window: Option<usize>, left_pad: &[usize]) -> Result<Option<Tensor>> {
        let (b, t) = batch.input_ids.dims2()?;
        let total = offset + t;
        let window_bites = window.is_some_and(|w| total > w);
        let padded = batch.is_padded()?;
        let left_padded = left_pad.iter().any(|&p| p > 0);
        if t == 1 && !padded && !window_bites && !left_padded {
            return Ok(None);
        }
        let dev = batch.input_ids.device();
        let query = Tensor::arange(offset as f32, total as f32, dev)?.reshape((1, 1, t, 1))?;
        let key = Tensor::arange(0f32, total as f32, dev)?.reshape((1, 1, 1, total))?;
        // Each condition as 0/1 in f32; a position is blocked when any holds.
        let mut blocked = key.broadcast_gt(&query)?.to_dtype(DType::F32)?; // the future
        if let Some(w) = window.filter(|_| window_bites) {
            let outside = (&key + w as f64)?.broadcast_le(&query)?.to_dtype(DType::F32)?; // q - k >= w
            blocked = (blocked + outside)?;
        }
        if padded {
            let ends: Vec<f32> = batch.lengths.iter().map(|&len| (offset + len) as f32).collect();
            let ends = Tensor::from_vec(ends, (b, 1, 1, 1), dev)?;
            blocked = blocked.broadcast_add(&key.broadcast_ge(&ends)?.to_dtype(DType::F32)?)?;
            // padding keys
        }
        if left_padded {
            let starts: Vec<f32> = left_pad.iter().map(|&p| p as f32).collect();
            let starts = Tensor::from_vec(starts, (b, 1, 1, 1), dev)?;
            blocked = blocked.broadcast_add(&key.broadcast_lt(&starts)?.to_dtype(DType::F32)?)?;
        }
        // Finite, as HF's `finfo.min`: a padding query outside every window would otherwise be
        // all -inf, softmax to NaN and leak NaN through V.
        Ok(Some((blocked.clamp(0f32, 1f32)? * f32::MIN as f64)?))
    }

    /// The configuration the decoder was built with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }
}

/// Names of the parameter tensors belonging to a module, given the config.
pub(crate) fn module_param_names(m: &ModuleId, cfg: &Config) -> Vec<String> {
    let has_bias = match m.kind {
        ModuleKind::Q | ModuleKind::K | ModuleKind::V => cfg.qkv_bias,
        ModuleKind::O => cfg.o_bias,
        _ => cfg.mlp_bias,
    };
    let mut names = vec![m.weight_name()];
    if has_bias {
        names.push(m.bias_name());
    }
    names
}

#[cfg(test)]
mod tests {
    use super::train_ops::test_inputs::{max_diff, uniform};
    use super::*;
    use candle_core::Var;

    #[test]
    fn fused_lora_projection_matches_the_composed_one_and_its_gradients() {
        let w = uniform(&[24, 16], 1, 0.5); // frozen: a plain tensor
        let vars: Vec<Var> = [uniform(&[10, 16], 2, 1.0), uniform(&[4, 16], 3, 0.5), uniform(&[24, 4], 4, 0.5)]
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let [x, a, b] = [0, 1, 2].map(|i| vars[i].as_tensor().clone());
        let linear =
            Linear { weight: w.clone(), bias: None, adapter: Some(Adapter { a: a.clone(), b: b.clone(), scale: 2.5 }) };
        let fused = linear.forward(&x).unwrap();
        let low = x.matmul(&a.t().unwrap()).unwrap().matmul(&b.t().unwrap()).unwrap();
        let reference = (x.matmul(&w.t().unwrap()).unwrap() + (low * 2.5).unwrap()).unwrap();
        assert!(max_diff(&fused, &reference) < 1e-5, "forward differs by {}", max_diff(&fused, &reference));
        let weights = uniform(fused.dims(), 5, 1.0);
        let gf = (&fused * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let gc = (&reference * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, t) in [("x", &x), ("A", &a), ("B", &b)] {
            let diff = max_diff(gf.get(t).unwrap(), gc.get(t).unwrap());
            assert!(diff < 1e-4, "d{name} differs by {diff}");
        }
        assert!(gf.get(&w).is_none(), "the frozen base gets no gradient");
    }

    #[test]
    fn trained_projection_matches_the_composed_one_and_its_gradients() {
        let [x, w] = [uniform(&[10, 16], 6, 1.0), uniform(&[24, 16], 7, 0.5)].map(|t| Var::from_tensor(&t).unwrap());
        let (x, w) = (x.as_tensor(), w.as_tensor());
        let fused = Linear { weight: w.clone(), bias: None, adapter: None }.forward(x).unwrap();
        let reference = x.matmul(&w.t().unwrap()).unwrap();
        assert!(max_diff(&fused, &reference) < 1e-5, "forward differs by {}", max_diff(&fused, &reference));
        let weights = uniform(fused.dims(), 8, 1.0);
        let gf = (&fused * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let gc = (&reference * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, t) in [("x", x), ("w", w)] {
            let (f, c) = (gf.get(t).unwrap(), gc.get(t).unwrap());
            assert_eq!(f.dims(), t.dims(), "d{name} has its tensor's shape");
            assert!(max_diff(f, c) < 1e-5, "d{name} differs by {}", max_diff(f, c));
        }
    }
}
