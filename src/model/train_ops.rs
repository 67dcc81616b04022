//! Differentiable fused ops for training: the training decoder's RMSNorm and rotary embedding,
//! the SwiGLU activation (both decoders) and the loss's cross-entropy, and the SIMD kernels the
//! fused attention ([`super::fused_attention`]) shares with them. On the
//! CPU in f32 each is a single pass forward and one backward: written with differentiable tensor
//! ops the same maths takes 2-7 ops forward and about twice as many backward, each with its own
//! allocation and thread hand-off, which is where a small model's training step spends most of
//! its time (docs/performance.md). Candle's own fused kernels have no backward pass. Other dtypes
//! and devices use the composed ops, which are also the reference the tests hold the fused ones to.

use crate::error::Result;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

/// Rows per parallel task, so that the small tensors of a small model stay on one thread.
pub(super) const ROWS_PER_TASK: usize = 64;

/// `e^x` in f32 without a libm call, so that loops over it vectorise: Cephes' `expf` range
/// reduction (`x = n ln2 + r`, `|r| <= ln2 / 2`) and degree-6 polynomial, scaled by `2^n` through
/// the exponent bits. Within 2 ulp of `f32::exp` on normal results (the unit test checks the whole
/// range); 0 below -87.33 (`f32::exp` is subnormal below -87.34), infinity above 88.37
/// (`f32::exp` overflows at 88.72): neither matters for softmax, where `x <= 0`, or silu. NaN for
/// NaN.
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that `n * LN2_HI` is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer without a libm call.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(-87.33, 88.37); // keeps n in -126..=127, a normal power of two
    let biased = xc * LOG2E + ROUND;
    let n = biased - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_2e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // `biased`'s low mantissa bits hold the integer n (its bits are those of 1.5 * 2^23, plus n),
    // so 2^n takes integer ops only: `n as i32` is a saturating conversion that the compiler
    // does one lane at a time, which kept every loop over `exp` from vectorising.
    let two_to_n = f32::from_bits(biased.to_bits().wrapping_add(127) << 23);
    let scaled = y * two_to_n;
    if x < -87.33 {
        0.0
    } else if x > 88.37 {
        f32::INFINITY
    } else {
        scaled
    }
}

/// Defines a kernel function that runs compiled for the best vector unit this x86 CPU has
/// (AVX-512, or AVX2 + FMA), chosen at run time, so its loops use 16 or 8 lanes instead of the
/// baseline's 4; elsewhere it runs the plain build. The body is an `#[inline(always)]` function
/// called from each `#[target_feature]` copy, which is what makes the compiler build it with the
/// copy's features (a closure passed in was compiled once, without them, per a profile).
macro_rules! vectorised {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn kernel($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    kernel($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    kernel($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has the features the function is compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            kernel($($arg),*)
        }
    };
}
pub(super) use vectorised;

/// Whether the fused CPU kernels apply to these tensors.
pub(super) fn fused_here(tensors: &[&Tensor]) -> bool {
    tensors.iter().all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

pub(super) fn f32_data<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> candle_core::Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(data), Some((start, end))) => Ok(&data[start..end]),
        _ => candle_core::bail!("{op}: expects contiguous f32 tensors"),
    }
}

/// The contiguous f32 data of a tensor held by an op (cos / sin tables, norm weights).
pub(super) fn with_f32_data<T>(
    t: &Tensor,
    op: &str,
    f: impl FnOnce(&[f32]) -> candle_core::Result<T>,
) -> candle_core::Result<T> {
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(storage) = &*storage else {
        candle_core::bail!("{op}: expects tensors on the CPU");
    };
    f(f32_data(storage, layout, op)?)
}

/// `weight * (x / sqrt(mean(x^2) + eps))` over the last dimension, in f32 as Hugging Face does.
///
/// Called on a `(.., d)` input `x` and a `(d,)` weight; gradients reach both.
pub(crate) fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if fused_here(&[x, weight]) {
        return Ok(x.contiguous()?.apply_op2(&weight.contiguous()?, RmsNorm { eps: eps as f32 })?);
    }
    rms_norm_composed(x, weight, eps)
}

fn rms_norm_composed(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let var = x.sqr()?.mean_keepdim(D::Minus1)?;
    let x = x.broadcast_div(&(var + eps)?.sqrt()?)?;
    Ok(x.to_dtype(dtype)?.broadcast_mul(weight)?)
}

fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let mean_sq = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    1.0 / (mean_sq + eps).sqrt()
}

struct RmsNorm {
    eps: f32,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "train-rms-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w) = (f32_data(xs, xl, self.name())?, f32_data(ws, wl, self.name())?);
        let d = w.len();
        if xl.dims().last() != Some(&d) {
            candle_core::bail!("train-rms-norm: input {:?} and weight ({d}) disagree", xl.dims());
        }
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(ROWS_PER_TASK * d).zip(x.par_chunks(ROWS_PER_TASK * d)).for_each(|(y, x)| {
            for (y, x) in y.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                let r = inv_rms(x, self.eps);
                for i in 0..d {
                    y[i] = w[i] * (x[i] * r);
                }
            }
        });
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let d = w.elem_count();
        let rows = x.elem_count() / d;
        // One pass gives both gradients: rows of dx, then one row of dw.
        let both = x.apply_op3_no_bwd(w, &grad.contiguous()?, &RmsNormGrad { eps: self.eps })?;
        let dx = both.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dw = both.narrow(0, rows, 1)?.reshape(w.shape())?;
        Ok((Some(dx), Some(dw)))
    }
}

/// With `u = grad * w` and `r = 1 / rms(x)`: `dx = r u - x r^3 mean(u x)`, `dw = sum_rows(grad x r)`.
struct RmsNormGrad {
    eps: f32,
}

impl CustomOp3 for RmsNormGrad {
    fn name(&self) -> &'static str {
        "train-rms-norm-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w, g) =
            (f32_data(xs, xl, self.name())?, f32_data(ws, wl, self.name())?, f32_data(gs, gl, self.name())?);
        let d = w.len();
        let mut out = vec![0f32; x.len() + d];
        let (dx, dw) = out.split_at_mut(x.len());
        let chunk = ROWS_PER_TASK * d;
        // Partial weight gradients per task, summed in task order: the same bits on every run.
        let partials: Vec<Vec<f32>> = dx
            .par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .zip(g.par_chunks(chunk))
            .map(|((dx, x), g)| {
                let mut dw = vec![0f32; d];
                for ((dx, x), g) in dx.chunks_exact_mut(d).zip(x.chunks_exact(d)).zip(g.chunks_exact(d)) {
                    let r = inv_rms(x, self.eps);
                    let ux: f32 = (0..d).map(|i| g[i] * w[i] * x[i]).sum();
                    let c = r * r * r * ux / d as f32;
                    for i in 0..d {
                        dx[i] = r * (g[i] * w[i]) - x[i] * c;
                        dw[i] += g[i] * (x[i] * r);
                    }
                }
                dw
            })
            .collect();
        for p in &partials {
            dw.iter_mut().zip(p).for_each(|(a, b)| *a += b);
        }
        Ok((CpuStorage::F32(out), (x.len() / d + 1, d).into()))
    }
}

/// Rotary embedding of `x` `(b, heads, t, head_dim)` with Hugging Face's rotate-half layout:
/// `x * cos + rotate_half(x) * sin`, for `cos`, `sin` of shape `(t, head_dim / 2)`.
pub(crate) fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if fused_here(&[x, cos, sin]) {
        let op = Rope { cos: cos.contiguous()?, sin: sin.contiguous()?, inverse: false };
        return Ok(x.contiguous()?.apply_op1(op)?);
    }
    rope_composed(x, cos, sin)
}

fn rope_composed(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (cos, sin) = (Tensor::cat(&[cos, cos], D::Minus1)?, Tensor::cat(&[sin, sin], D::Minus1)?);
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?)?)
}

/// The cosines and sines of rotary angles: `(t, hd / 2)` each, or one position's `hd / 2`.
pub(super) type Angles<'a> = (&'a [f32], &'a [f32]);

/// `y = scale * R(x)` for one position's `hd` values, `R` the rotate-half rotation by the angles
/// whose cosines and sines are `cos`, `sin` (`hd / 2` each); `inverse` rotates back.
#[inline(always)]
pub(super) fn rotate(y: &mut [f32], x: &[f32], (cos, sin): Angles, inverse: bool, scale: f32) {
    let half = cos.len();
    let sign = if inverse { -1.0 } else { 1.0 };
    for i in 0..half {
        let (c, s) = (cos[i], sign * sin[i]);
        let (x1, x2) = (x[i], x[half + i]);
        y[i] = scale * (x1 * c - x2 * s);
        y[half + i] = scale * (x2 * c + x1 * s);
    }
}

/// A rotation by each position's angle; `inverse` rotates back, which is also its gradient (the
/// transpose of a rotation is its inverse).
struct Rope {
    cos: Tensor,
    sin: Tensor,
    inverse: bool,
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "train-rope"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_data(xs, xl, self.name())?;
        let (_, _, t, hd) = xl.shape().dims4()?;
        let half = hd / 2;
        with_f32_data(&self.cos, self.name(), |cos| {
            with_f32_data(&self.sin, self.name(), |sin| {
                if cos.len() != t * half || sin.len() != t * half {
                    candle_core::bail!("train-rope: cos/sin must be ({t}, {half}) for input {:?}", xl.dims());
                }
                let mut y = vec![0f32; x.len()];
                y.par_chunks_mut(t * hd).zip(x.par_chunks(t * hd)).for_each(|(y, x)| {
                    for (p, (y, x)) in y.chunks_exact_mut(hd).zip(x.chunks_exact(hd)).enumerate() {
                        let angles = (&cos[p * half..(p + 1) * half], &sin[p * half..(p + 1) * half]);
                        rotate(y, x, angles, self.inverse, 1.0);
                    }
                });
                Ok((CpuStorage::F32(y), xl.shape().clone()))
            })
        })
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let back = Rope { cos: self.cos.clone(), sin: self.sin.clone(), inverse: !self.inverse };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&back)?))
    }
}

/// The largest value of a row, in 16 lanes.
#[inline(always)]
pub(super) fn max_of(x: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = x.chunks_exact(16);
    let tail = chunks.remainder();
    for c in chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l = l.max(*v);
        }
    }
    tail.iter().chain(&lanes).copied().fold(f32::NEG_INFINITY, f32::max)
}

/// The sum of a row, in 16 lanes (pairwise-ish, and it vectorises where a running sum cannot).
#[inline(always)]
pub(super) fn sum_of(x: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let chunks = x.chunks_exact(16);
    let tail = chunks.remainder();
    for c in chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += v;
        }
    }
    lanes.iter().sum::<f32>() + tail.iter().sum::<f32>()
}

vectorised! {
    /// In-place softmax of each `n`-long row of `rows`, after adding the same-shaped additive
    /// `mask` if there is one.
    pub(super) fn softmax_rows(rows: &mut [f32], n: usize, mask: Option<&[f32]>) {
        for (i, row) in rows.chunks_exact_mut(n).enumerate() {
            if let Some(mask) = mask {
                row.iter_mut().zip(&mask[i * n..(i + 1) * n]).for_each(|(s, m)| *s += m);
            }
            let max = max_of(row);
            row.iter_mut().for_each(|s| *s = exp(*s - max));
            let inv = 1.0 / sum_of(row);
            row.iter_mut().for_each(|s| *s *= inv);
        }
    }
}

/// `sum(a * b)`, in 16 lanes.
#[inline(always)]
pub(super) fn dot_of(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for ((l, x), y) in lanes.iter_mut().zip(x).zip(y) {
            *l += x * y;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `silu(gate) * up`, the SwiGLU MLP's activation; gradients reach both.
pub(crate) fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if fused_here(&[gate, up]) && gate.shape() == up.shape() {
        return Ok(gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)?);
    }
    Ok((gate.silu()? * up)?)
}

vectorised! {
    /// `y = silu(gate) * up`.
    fn swiglu_into(y: &mut [f32], gate: &[f32], up: &[f32]) {
        for ((y, g), u) in y.iter_mut().zip(gate).zip(up) {
            *y = g / (1.0 + exp(-g)) * u;
        }
    }
}

vectorised! {
    /// The gradients of [`swiglu_into`] for the output gradient `d`.
    fn swiglu_grad_into(d_gate: &mut [f32], d_up: &mut [f32], gate: &[f32], up: &[f32], d: &[f32]) {
        for i in 0..d_gate.len() {
            let s = 1.0 / (1.0 + exp(-gate[i]));
            d_up[i] = d[i] * (gate[i] * s);
            d_gate[i] = d[i] * up[i] * (s * (1.0 + gate[i] * (1.0 - s)));
        }
    }
}

struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "train-swiglu"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (gate, up) = (f32_data(gs, gl, self.name())?, f32_data(us, ul, self.name())?);
        let mut y = vec![0f32; gate.len()];
        const CHUNK: usize = 1 << 14;
        y.par_chunks_mut(CHUNK)
            .zip(gate.par_chunks(CHUNK))
            .zip(up.par_chunks(CHUNK))
            .for_each(|((y, g), u)| swiglu_into(y, g, u));
        Ok((CpuStorage::F32(y), gl.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // One pass gives both gradients, stacked: [d gate; d up].
        let both = gate.apply_op3_no_bwd(up, &grad.contiguous()?, &SwiGluGrad)?;
        Ok((Some(both.get(0)?.reshape(gate.shape())?), Some(both.get(1)?.reshape(up.shape())?)))
    }
}

/// `d up = grad * silu(gate)`, `d gate = grad * up * s (1 + gate (1 - s))` with `s = sigmoid(gate)`.
struct SwiGluGrad;

impl CustomOp3 for SwiGluGrad {
    fn name(&self) -> &'static str {
        "train-swiglu-grad"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
        ds: &CpuStorage,
        dl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (gate, up, grad) =
            (f32_data(gs, gl, self.name())?, f32_data(us, ul, self.name())?, f32_data(ds, dl, self.name())?);
        let n = gate.len();
        let mut out = vec![0f32; 2 * n];
        let (d_gate, d_up) = out.split_at_mut(n);
        const CHUNK: usize = 1 << 14;
        d_gate
            .par_chunks_mut(CHUNK)
            .zip(d_up.par_chunks_mut(CHUNK))
            .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)).zip(grad.par_chunks(CHUNK)))
            .for_each(|((dg, du), ((g, u), d))| swiglu_grad_into(dg, du, g, u, d));
        Ok((CpuStorage::F32(out), (2, n).into()))
    }
}

/// Per-row negative log-likelihood `-log_softmax(logits)[target]` of `(n, vocab)` logits and `n`
/// u32 targets, as an `(n,)` tensor; the gradient reaches the logits.
pub(crate) fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if fused_here(&[logits]) && targets.dtype() == DType::U32 {
        return Ok(logits.contiguous()?.apply_op2(&targets.contiguous()?, CrossEntropy)?);
    }
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    Ok(logp.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?)
}

/// `(max, sum(exp(x - max)))` of one row; `buf` (the row's length) receives `exp(x - max)`.
#[inline(always)]
fn log_sum_exp_parts(row: &[f32], buf: &mut [f32]) -> (f32, f32) {
    let max = max_of(row);
    for (b, x) in buf.iter_mut().zip(row) {
        *b = exp(x - max);
    }
    (max, sum_of(buf))
}

vectorised! {
    /// `dx = g * softmax(row)`.
    fn scaled_softmax_into(dx: &mut [f32], row: &[f32], g: f32) {
        let (_, sum) = log_sum_exp_parts(row, dx);
        let scale = g / sum;
        dx.iter_mut().for_each(|d| *d *= scale);
    }
}

vectorised! {
    /// [`log_sum_exp_parts`] on its own (the cross-entropy's forward pass).
    fn log_sum_exp_parts_vectorised(row: &[f32], buf: &mut [f32]) -> (f32, f32) {
        log_sum_exp_parts(row, buf)
    }
}

fn u32_data<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> candle_core::Result<&'a [u32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::U32(data), Some((start, end))) => Ok(&data[start..end]),
        _ => candle_core::bail!("{op}: expects contiguous u32 targets"),
    }
}

/// Checks `(n, vocab)` logits against `n` targets below `vocab`.
fn rows_and_vocab(ll: &Layout, targets: &[u32], op: &str) -> candle_core::Result<(usize, usize)> {
    let (n, vocab) = ll.shape().dims2()?;
    if targets.len() != n {
        candle_core::bail!("{op}: {n} rows of logits but {} targets", targets.len());
    }
    if let Some(t) = targets.iter().find(|&&t| t as usize >= vocab) {
        candle_core::bail!("{op}: target {t} is outside the vocabulary of {vocab}");
    }
    Ok((n, vocab))
}

struct CrossEntropy;

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "train-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ts: &CpuStorage,
        tl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, targets) = (f32_data(xs, xl, self.name())?, u32_data(ts, tl, self.name())?);
        let (n, vocab) = rows_and_vocab(xl, targets, self.name())?;
        let nll: Vec<f32> = x
            .par_chunks(vocab)
            .zip(targets.par_iter())
            .map_init(
                || vec![0f32; vocab],
                |buf, (row, &t)| {
                    let (max, sum) = log_sum_exp_parts_vectorised(row, buf);
                    -((row[t as usize] - max) - sum.ln())
                },
            )
            .collect();
        Ok((CpuStorage::F32(nll), n.into()))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _nll: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(logits.apply_op3_no_bwd(targets, &grad.contiguous()?, &CrossEntropyGrad)?), None))
    }
}

/// `d logits = grad_row * (softmax(row) - onehot(target))`.
struct CrossEntropyGrad;

impl CustomOp3 for CrossEntropyGrad {
    fn name(&self) -> &'static str {
        "train-cross-entropy-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ts: &CpuStorage,
        tl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, targets, grad) =
            (f32_data(xs, xl, self.name())?, u32_data(ts, tl, self.name())?, f32_data(gs, gl, self.name())?);
        let (_, vocab) = rows_and_vocab(xl, targets, self.name())?;
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(vocab).zip(x.par_chunks(vocab)).zip(targets.par_iter().zip(grad.par_iter())).for_each(
            |((dx, row), (&t, &g))| {
                scaled_softmax_into(dx, row, g);
                dx[t as usize] -= g;
            },
        );
        Ok((CpuStorage::F32(dx), xl.shape().clone()))
    }
}

/// Inputs and comparisons for the fused ops' tests (here, in [`super::fused_attention`] and in [`super::decoder`]).
#[cfg(test)]
pub(super) mod test_inputs {
    use candle_core::{Device, Tensor};

    /// Seeded inputs, uniform in `[-half_width, half_width)`.
    pub fn uniform(shape: &[usize], seed: u64, half_width: f64) -> Tensor {
        let mut rng = crate::data::Rng::new(seed);
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| ((rng.unit() * 2.0 - 1.0) * half_width) as f32).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// The largest absolute elementwise difference.
    pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::test_inputs::{max_diff, uniform};
    use super::*;
    use candle_core::{Device, Var};

    /// Seeded inputs in [-2, 2).
    fn rand(shape: &[usize], seed: u64) -> Tensor {
        uniform(shape, seed, 2.0)
    }

    /// Forward outputs and the gradients of a random linear function of them, fused vs composed.
    fn compare(
        inputs: &[Tensor],
        fused: impl Fn(&[Tensor]) -> Result<Tensor>,
        composed: impl Fn(&[Tensor]) -> Result<Tensor>,
    ) -> (f32, Vec<f32>) {
        let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let (yf, yc) = (fused(&ts).unwrap(), composed(&ts).unwrap());
        let weights = rand(yf.dims(), 99);
        let gf = (&yf * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let gc = (&yc * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let grads = ts.iter().map(|t| max_diff(gf.get(t).unwrap(), gc.get(t).unwrap())).collect();
        (max_diff(&yf, &yc), grads)
    }

    #[test]
    fn fused_rms_norm_matches_the_composed_one_and_its_gradients() {
        // 130 rows: three parallel tasks, the last one partial.
        let (y, grads) = compare(
            &[rand(&[2, 65, 48], 1), rand(&[48], 2)],
            |t| rms_norm(&t[0], &t[1], 1e-6),
            |t| rms_norm_composed(&t[0], &t[1], 1e-6),
        );
        assert!(y < 1e-5, "forward differs by {y}");
        assert!(grads[0] < 1e-4 && grads[1] < 1e-3, "gradients differ by {grads:?}");
    }

    #[test]
    fn fused_rope_matches_the_composed_one_and_its_gradient() {
        let angles = rand(&[7, 4], 3);
        let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
        let (y, grads) =
            compare(&[rand(&[2, 3, 7, 8], 4)], |t| rope(&t[0], &cos, &sin), |t| rope_composed(&t[0], &cos, &sin));
        assert!(y < 1e-6, "forward differs by {y}");
        assert!(grads[0] < 1e-6, "gradient differs by {grads:?}");
    }

    #[test]
    fn non_f32_inputs_take_the_composed_path() {
        let x = rand(&[4, 8], 6).to_dtype(DType::BF16).unwrap();
        let w = Tensor::ones(8, DType::BF16, &Device::Cpu).unwrap();
        let y = rms_norm(&x, &w, 1e-6).unwrap();
        assert_eq!(y.dtype(), DType::BF16);
        let reference = rms_norm_composed(&x, &w, 1e-6).unwrap();
        assert_eq!(max_diff(&y.to_dtype(DType::F32).unwrap(), &reference.to_dtype(DType::F32).unwrap()), 0.0);
    }

    #[test]
    fn fused_swiglu_matches_the_composed_one_and_its_gradients() {
        let (y, grads) = compare(
            &[rand(&[3, 5, 40], 7), rand(&[3, 5, 40], 8)],
            |t| swiglu(&t[0], &t[1]),
            |t| Ok((t[0].silu()? * &t[1])?),
        );
        assert!(y < 1e-6, "forward differs by {y}");
        assert!(grads[0] < 1e-5 && grads[1] < 1e-5, "gradients differ by {grads:?}");
    }

    #[test]
    fn fast_exp_is_within_two_ulp_of_libm_over_the_whole_range() {
        let mut worst = 0u32;
        // Every 97th f32 bit pattern between -87.3 and 88.7 (about 22 million values).
        let (lo, hi) = (-87.33f32, 88.37f32);
        let mut bits = lo.to_bits();
        loop {
            let x = f32::from_bits(bits);
            if x >= hi {
                break;
            }
            let (got, want) = (exp(x), x.exp());
            worst = worst.max(got.to_bits().abs_diff(want.to_bits()));
            // Negative floats count down in bits towards -0, then up from +0.
            bits = if x < 0.0 { bits.saturating_sub(97).max(0x8000_0000) } else { bits + 97 };
            if bits == 0x8000_0000 {
                bits = 0;
            }
        }
        assert!(worst <= 2, "fast exp is {worst} ulp away from libm");
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::MIN), 0.0);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn fused_cross_entropy_matches_log_softmax_and_gather() {
        let targets = Tensor::new(&[3u32, 0, 9, 9, 5], &Device::Cpu).unwrap();
        let composed = |t: &[Tensor]| -> Result<Tensor> {
            let logp = candle_nn::ops::log_softmax(&t[0], D::Minus1)?;
            Ok(logp.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?)
        };
        let (y, grads) = compare(&[(rand(&[5, 10], 9) * 4.0).unwrap()], |t| cross_entropy(&t[0], &targets), composed);
        assert!(y < 1e-5, "forward differs by {y}");
        assert!(grads[0] < 1e-6, "gradient differs by {grads:?}");
    }

    #[test]
    fn cross_entropy_names_a_target_outside_the_vocabulary() {
        let logits = rand(&[2, 4], 10);
        let err = cross_entropy(&logits, &Tensor::new(&[1u32, 4], &Device::Cpu).unwrap()).unwrap_err().to_string();
        assert!(err.contains("target 4 is outside the vocabulary of 4"), "{err}");
    }
}
