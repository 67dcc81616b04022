//! The hooked decoder: one implementation for Llama, Qwen2 and Mistral, read bottom-up
//! (linear, norm, rotary, attention, MLP, layer, decoder), with a named hook point wherever an
//! activation is worth reading ([`HookPoint`]). Parameter names are Hugging Face's, so
//! `model.layers.3.mlp.down_proj.weight` in a checkpoint is `layers[3].mlp.down_proj.weight` here.
//!
//! Two flavours of the same code: the inference decoder may use candle's fused kernels, which
//! have no backward pass, and the training decoder ([`Decoder::for_training`]) uses only ops
//! with one; [`crate::kernels`] picks the fastest op of each kind for the flavour, device and
//! dtype. Hidden states flow as `(b * t, d)` rows (a reshape is a node of the autograd graph);
//! captures are `(b, t, d)`.

use super::activations::{Activations, Capture, HookPoint, LogitsMode};
use super::config::{Config, RopeScaling};
use super::modules::{ModuleId, ModuleKind};
use super::weights::WeightSource;
use crate::error::Result;
use crate::kernels::{self, AttentionInput, Flavour};
use candle_core::{DType, Device, Tensor};

/// `y = x @ weight.t() + bias (+ scale * x @ A.t() @ B.t())` for inputs `(rows, in)`; the LoRA
/// term only when the module has adapters.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    adapter: Option<Adapter>,
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
        let lora = self.adapter.as_ref().map(|ad| (&ad.a, &ad.b, ad.scale));
        kernels::linear(x, &self.weight, self.bias.as_ref(), lora)
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

    fn forward(&self, x: &Tensor, flavour: Flavour) -> Result<Tensor> {
        kernels::rms_norm(x, &self.weight, self.eps, flavour)
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
    /// Inference or training kernels.
    flavour: Flavour,
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
        let q = ctx.keep(acts, HookPoint::module(layer, ModuleKind::Q), self.q_proj.forward(x)?)?;
        let k = ctx.keep(acts, HookPoint::module(layer, ModuleKind::K), self.k_proj.forward(x)?)?;
        let v = ctx.keep(acts, HookPoint::module(layer, ModuleKind::V), self.v_proj.forward(x)?)?;
        let input = AttentionInput {
            angles: (ctx.cos, ctx.sin),
            mask: ctx.mask(window),
            seq: ctx.seq,
            heads: (self.num_heads, self.num_kv_heads, self.head_dim),
            flavour: ctx.flavour,
        };
        let y = kernels::attention(&q, &k, &v, &input, cache)?; // (b * t, heads * hd)
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
        let down = self.down_proj.forward(&kernels::swiglu(&gate, &up)?)?;
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
            &self.input_layernorm.forward(x, ctx.flavour)?,
            layer,
            self.sliding_window,
            ctx,
            cache,
            acts,
        )?;
        let attn = ctx.keep(acts, HookPoint::AttnOut(layer), attn)?;
        let x = (x + attn)?;
        let mlp = self.mlp.forward(&self.post_attention_layernorm.forward(&x, ctx.flavour)?, layer, ctx, acts)?;
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
    /// Inference kernels, or training ones ([`Decoder::for_training`]).
    flavour: Flavour,
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
        Ok(Decoder {
            embed_tokens,
            layers,
            norm,
            lm_head,
            rotary: Rotary::new(cfg),
            cfg: cfg.clone(),
            flavour: Flavour::Inference,
        })
    }

    /// The same decoder using only ops with a backward pass, so gradients flow.
    pub fn for_training(mut self) -> Self {
        self.flavour = Flavour::Training;
        self
    }

    /// Runs the decoder on `batch`, keeping what `capture` asks for. With a `cache`, the batch
    /// continues the cached sequence (positions start at the cache length) and is appended.
    pub fn forward(&self, batch: &Batch, capture: &Capture, cache: Option<&mut KvCache>) -> Result<Activations> {
        let total = cache.as_ref().map_or(0, |c| c.len()) + batch.input_ids.dim(1)?;
        if total > self.cfg.max_position_embeddings {
            return Err(crate::Error::invalid(
                "input",
                format!(
                    "{total} tokens are more than the model's context of {} (max_position_embeddings in \
                     config.json); shorten the text",
                    self.cfg.max_position_embeddings
                ),
            ));
        }
        kernels::run_on_cpu_pool(batch.input_ids.device(), || self.forward_here(batch, capture, cache))
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
        let ctx = ForwardCtx { cos: &cos, sin: &sin, masks: &masks, capture, flavour: self.flavour, seq: (b, t) };
        let mut acts = Activations::default();
        let x = self.embed_tokens.embedding(&batch.input_ids.flatten_all()?)?; // (b * t, d)
        let mut x = ctx.keep(&mut acts, HookPoint::Embed, x)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let slot = cache.as_deref_mut().map(|c| &mut c.layers[l]);
            x = layer.forward(&x, l, &ctx, slot, &mut acts)?;
            x = ctx.keep(&mut acts, HookPoint::ResidPost(l), x)?;
        }
        let x = ctx.keep(&mut acts, HookPoint::FinalNorm, self.norm.forward(&x, self.flavour)?)?;
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
        kernels::linear(x, &self.lm_head, None, None)
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

/// Every parameter tensor of a model of `cfg`'s shapes: `(Hugging Face name, shape)`.
pub(crate) fn param_shapes(cfg: &Config) -> Vec<(String, Vec<usize>)> {
    let (d, i, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
    let (q, kv) = (cfg.num_heads * hd, cfg.num_kv_heads * hd);
    let mut shapes =
        vec![("model.embed_tokens.weight".to_string(), vec![cfg.vocab_size, d]), ("model.norm.weight".into(), vec![d])];
    if !cfg.tie_word_embeddings {
        shapes.push(("lm_head.weight".into(), vec![cfg.vocab_size, d]));
    }
    for l in 0..cfg.num_layers {
        let p = format!("model.layers.{l}");
        shapes.push((format!("{p}.input_layernorm.weight"), vec![d]));
        shapes.push((format!("{p}.post_attention_layernorm.weight"), vec![d]));
        for (kind, (rows, cols)) in
            ModuleKind::ALL.into_iter().zip([(q, d), (kv, d), (kv, d), (d, q), (i, d), (i, d), (d, i)])
        {
            for name in module_param_names(&ModuleId::new(l, kind), cfg) {
                let shape = if name.ends_with(".bias") { vec![rows] } else { vec![rows, cols] };
                shapes.push((name, shape));
            }
        }
    }
    shapes
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
