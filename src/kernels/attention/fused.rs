//! Scaled dot-product attention as one CPU op, forward and backward, for f32 tensors: per
//! (sequence, head) it computes `softmax(q k^T + mask) v` with two small GEMMs and a softmax in
//! a scratch buffer. The composed version (repeat the key/value heads for grouped-query
//! attention, a batched matmul, the mask's broadcast add, softmax, a second matmul) allocates the
//! full `(b, heads, t, total)` score tensor three times forward and more backward, and each op
//! is a hand-off to candle's thread pool; for the default model that is most of the attention's
//! time. The backward pass recomputes the probabilities from `q` and `k` (as FlashAttention
//! does) instead of keeping them, so training holds no score tensor between the passes.
//!
//! This file holds [`attention`], queries against a KV cache on rotated `(b, heads, t, head_dim)`
//! tensors, and the pieces both attention ops share; [`super::rows`] is the fresh-batch op.

use crate::error::Result;
use crate::kernels::simd::{dot_of, f32_data, fused_here, softmax_rows, vectorised, with_f32_data};
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

/// `softmax(q k^T + mask) v` for `q` `(b, heads, t, hd)` (already scaled), `k` and `v`
/// `(b, kv_heads, total, hd)` with `heads` a multiple of `kv_heads` (head `h` reads key/value
/// head `h / (heads / kv_heads)`), and an additive `mask` `(1 or b, 1, t, total)`. Returns
/// `(b, heads, t, hd)`, or `None` when the tensors are not CPU f32 or are empty (the caller then
/// composes).
pub(crate) fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Option<Tensor>> {
    let empty = q.elem_count() == 0 || k.elem_count() == 0;
    if empty || !(fused_here(&[q, k, v]) && mask.is_none_or(|m| fused_here(&[m]))) {
        return Ok(None);
    }
    let shape = Dims::of(q.dims(), k.dims(), v.dims(), mask.map(|m| m.dims()))?;
    let op = Attention { shape, mask: mask.map(|m| m.contiguous()).transpose()? };
    Ok(Some(q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op)?))
}

/// The sizes of one call, checked once.
#[derive(Debug, Clone, Copy)]
pub(super) struct Dims {
    pub(super) heads: usize,
    pub(super) kv_heads: usize,
    pub(super) t: usize,
    pub(super) total: usize,
    pub(super) hd: usize,
    /// Whether the mask has one `(t, total)` plane per sequence (else one for all).
    pub(super) mask_per_sequence: bool,
}

impl Dims {
    pub(super) fn of(q: &[usize], k: &[usize], v: &[usize], mask: Option<&[usize]>) -> Result<Dims> {
        let bad = |what: String| crate::Error::invalid("attention inputs", what);
        let ([b, heads, t, hd], [kb, kv_heads, total, khd]) = (
            <[usize; 4]>::try_from(q).map_err(|_| bad(format!("q is {q:?}, not (b, heads, t, head_dim)")))?,
            <[usize; 4]>::try_from(k).map_err(|_| bad(format!("k is {k:?}, not (b, kv_heads, total, head_dim)")))?,
        );
        if kb != b || khd != hd || v != k || kv_heads == 0 || heads % kv_heads != 0 {
            return Err(bad(format!("q {q:?}, k {k:?} and v {v:?} do not fit together")));
        }
        let mask_per_sequence = match mask {
            None => false,
            Some([mb, 1, mt, mtotal]) if (*mb == 1 || *mb == b) && *mt == t && *mtotal == total => *mb == b && b > 1,
            Some(m) => return Err(bad(format!("the mask is {m:?}, not (1 or {b}, 1, {t}, {total})"))),
        };
        Ok(Dims { heads, kv_heads, t, total, hd, mask_per_sequence })
    }

    pub(super) fn group(&self) -> usize {
        self.heads / self.kv_heads
    }

    /// The mask plane `(t, total)` of sequence `bi`.
    pub(super) fn mask_plane<'a>(&self, mask: &'a [f32], bi: usize) -> &'a [f32] {
        let plane = self.t * self.total;
        let at = if self.mask_per_sequence { bi * plane } else { 0 };
        &mask[at..at + plane]
    }
}

/// `dst (m x n) (+)= a (m x k) @ b (k x n)`, each operand a slice with its row and column
/// strides; bounds are checked before the unchecked GEMM runs.
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    a: &[f32],
    (a_rs, a_cs): (usize, usize),
    b: &[f32],
    (b_rs, b_cs): (usize, usize),
) {
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(m > 0 && n > 0 && k > 0, "empty GEMM");
    assert!(last(m, n, dst_rs, 1) < dst.len(), "GEMM output out of bounds");
    assert!(last(m, k, a_rs, a_cs) < a.len() && last(k, n, b_rs, b_cs) < b.len(), "GEMM input out of bounds");
    // SAFETY: every index the GEMM touches was checked against the slices above; `dst` is
    // borrowed mutably, so it cannot alias `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// Probabilities `(t, total)` of one head into `p`: `softmax(q k^T + mask)` row by row.
pub(super) fn probabilities(d: &Dims, q: &[f32], k: &[f32], mask: Option<&[f32]>, p: &mut [f32]) {
    let (t, total, hd) = (d.t, d.total, d.hd);
    gemm((t, total, hd), p, total, false, q, (hd, 1), k, (1, hd));
    softmax_rows(p, total, mask);
}

vectorised! {
    /// `ds = p * (dp - rowsum(p * dp))` in place of `dp`, per `n`-long row.
    fn softmax_grad_rows(dp: &mut [f32], p: &[f32], n: usize) {
        for (ds, p) in dp.chunks_exact_mut(n).zip(p.chunks_exact(n)) {
            let dot = dot_of(p, ds);
            ds.iter_mut().zip(p).for_each(|(g, p)| *g = p * (*g - dot));
        }
    }
}

/// One query head's share of the gradients, from its probabilities `p` `(t, total)`, its output
/// gradient `d_o` and the values `v` (each with its row stride), and `q` `(t, hd)` and `k` `(total,
/// hd)` as the scores saw them: `dv (+)= p^T d_o`, `dq = ds k`, `dk (+)= ds^T q`, with the
/// softmax's gradient `ds` computed in `dp`. `accumulate` adds into `dv` and `dk`, for the later
/// heads of a key/value group.
#[allow(clippy::too_many_arguments)]
pub(super) fn head_grads(
    d: &Dims,
    p: &[f32],
    dp: &mut [f32],
    (d_o, d_o_rs): (&[f32], usize),
    (v, v_rs): (&[f32], usize),
    (q, k): (&[f32], &[f32]),
    (dq, dk, dv): (&mut [f32], &mut [f32], &mut [f32]),
    accumulate: bool,
) {
    let (t, total, hd) = (d.t, d.total, d.hd);
    gemm((total, hd, t), dv, hd, accumulate, p, (1, total), d_o, (d_o_rs, 1));
    // dp = d_o v^T, then ds = p * (dp - rowsum(p * dp)) in place
    gemm((t, total, hd), dp, total, false, d_o, (d_o_rs, 1), v, (1, v_rs));
    softmax_grad_rows(dp, p, total);
    gemm((t, hd, total), dq, hd, false, dp, (total, 1), k, (hd, 1));
    gemm((total, hd, t), dk, hd, accumulate, dp, (1, total), q, (hd, 1));
}

/// `(dq, dk, dv)` shaped like `q`, `k` and `v` out of a gradient op's buffer `[dq; dk; dv]`.
pub(super) fn split_grads(
    all: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
) -> candle_core::Result<[Option<Tensor>; 3]> {
    let (nq, nk) = (q.elem_count(), k.elem_count());
    let dq = all.narrow(0, 0, nq)?.reshape(q.shape())?;
    let dk = all.narrow(0, nq, nk)?.reshape(k.shape())?;
    let dv = all.narrow(0, nq + nk, nk)?.reshape(v.shape())?;
    Ok([Some(dq), Some(dk), Some(dv)])
}

struct Attention {
    shape: Dims,
    mask: Option<Tensor>,
}

/// Runs `f` on the mask's data, if there is a mask.
pub(super) fn with_mask<R>(
    mask: &Option<Tensor>,
    f: impl FnOnce(Option<&[f32]>) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    match mask {
        None => f(None),
        Some(m) => with_f32_data(m, "fused-attention", |m| f(Some(m))),
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = self.shape;
        let (q, k, v) =
            (f32_data(qs, ql, self.name())?, f32_data(ks, kl, self.name())?, f32_data(vs, vl, self.name())?);
        let (head, kv_head) = (d.t * d.hd, d.total * d.hd);
        let mut out = vec![0f32; q.len()];
        with_mask(&self.mask, |mask| {
            out.par_chunks_mut(head).enumerate().for_each_init(
                || vec![0f32; d.t * d.total],
                |p, (bh, o)| {
                    let (bi, h) = (bh / d.heads, bh % d.heads);
                    let kv = (bi * d.kv_heads + h / d.group()) * kv_head;
                    let mask = mask.map(|m| d.mask_plane(m, bi));
                    probabilities(&d, &q[bh * head..(bh + 1) * head], &k[kv..kv + kv_head], mask, p);
                    gemm((d.t, d.hd, d.total), o, d.hd, false, p, (d.total, 1), &v[kv..kv + kv_head], (d.hd, 1));
                },
            );
            Ok(())
        })?;
        Ok((CpuStorage::F32(out), ql.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let op = AttentionGrad { shape: self.shape, mask: self.mask.clone(), q: q.clone() };
        let [dq, dk, dv] = split_grads(&grad.contiguous()?.apply_op3_no_bwd(k, v, &op)?, q, k, v)?;
        Ok((dq, dk, dv))
    }
}

/// The three gradients in one buffer `[dq; dk; dv]`, from `d out`, `k` and `v`. Work is
/// split by (sequence, key/value head) so the heads that share a key/value head add into its
/// gradients on one thread.
struct AttentionGrad {
    shape: Dims,
    mask: Option<Tensor>,
    q: Tensor,
}

impl CustomOp3 for AttentionGrad {
    fn name(&self) -> &'static str {
        "fused-attention-grad"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = self.shape;
        let (d_out, k, v) =
            (f32_data(gs, gl, self.name())?, f32_data(ks, kl, self.name())?, f32_data(vs, vl, self.name())?);
        let (head, kv_head, group) = (d.t * d.hd, d.total * d.hd, d.group());
        let mut all = vec![0f32; d_out.len() + 2 * k.len()];
        let (dq, dkv) = all.split_at_mut(d_out.len());
        let (dk, dv) = dkv.split_at_mut(k.len());
        with_f32_data(&self.q, self.name(), |q| {
            with_mask(&self.mask, |mask| {
                dq.par_chunks_mut(group * head)
                    .zip(dk.par_chunks_mut(kv_head).zip(dv.par_chunks_mut(kv_head)))
                    .enumerate()
                    .for_each_init(
                        || (vec![0f32; d.t * d.total], vec![0f32; d.t * d.total]),
                        |(p, dp), (bg, (dq, (dk, dv)))| {
                            let bi = bg / d.kv_heads;
                            let (k, v) = (&k[bg * kv_head..(bg + 1) * kv_head], &v[bg * kv_head..(bg + 1) * kv_head]);
                            let mask = mask.map(|m| d.mask_plane(m, bi));
                            for r in 0..group {
                                let bh = bg * group + r; // heads of a group are consecutive
                                let (q, d_o) = (&q[bh * head..(bh + 1) * head], &d_out[bh * head..(bh + 1) * head]);
                                let dq = &mut dq[r * head..(r + 1) * head];
                                probabilities(&d, q, k, mask, p);
                                let grads = (&mut *dq, &mut *dk, &mut *dv);
                                head_grads(&d, p, dp, (d_o, d.hd), (v, d.hd), (q, k), grads, r > 0);
                            }
                        },
                    );
                Ok(())
            })
        })?;
        let len = all.len();
        Ok((CpuStorage::F32(all), len.into()))
    }
}

/// Self-attention of a fresh batch (no KV cache) on the decoder's flat rows, rotary embedding
/// and `1/sqrt(head_dim)` scale included: `q` `(b * t, heads * hd)`, `k` and `v` `(b * t,
/// kv_heads * hd)` as the projections return them, `cos` and `sin` `(t, hd / 2)` for positions
/// `0..t`, an additive `mask` `(1 or b, 1, t, t)`. Returns `(b * t, heads * hd)`, the input of
/// `o_proj`. This is one node of the autograd graph where the 4-D route ([`attention`] after
/// reshapes, transposes, copies, the scale and two rotary ops) is about fifteen, and every node
/// costs the backward pass a zero-filled gradient and an add. `None` when the tensors are not
/// CPU f32 or are empty (the caller then takes the 4-D route).
/// Inputs and references shared by both attention ops' tests.
#[cfg(test)]
pub(super) mod test_helpers {
    use crate::kernels::simd::test_inputs::uniform;
    use candle_core::{Device, Tensor, D};

    /// Seeded inputs in [-1, 1).
    pub fn rand(shape: &[usize], seed: u64) -> Tensor {
        uniform(shape, seed, 1.0)
    }

    /// The decoder's composed attention: repeat key/value heads, matmul, mask, softmax, matmul.
    pub fn composed(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Tensor {
        let rep = q.dim(1).unwrap() / k.dim(1).unwrap();
        let k = candle_transformers::utils::repeat_kv(k.clone(), rep).unwrap();
        let v = candle_transformers::utils::repeat_kv(v.clone(), rep).unwrap();
        let scores = q.matmul(&k.t().unwrap()).unwrap();
        let scores = match mask {
            Some(m) => scores.broadcast_add(m).unwrap(),
            None => scores,
        };
        candle_nn::ops::softmax(&scores, D::Minus1).unwrap().matmul(&v).unwrap()
    }

    /// A causal mask with the last `pad` keys of sequence 1 blocked as padding, `(b, 1, t, t)`.
    pub fn mask(b: usize, t: usize, pad: usize) -> Tensor {
        let mut m = vec![0f32; b * t * t];
        for bi in 0..b {
            for i in 0..t {
                for j in 0..t {
                    if j > i || (bi == 1 && j >= t - pad) {
                        m[(bi * t + i) * t + j] = f32::MIN;
                    }
                }
            }
        }
        Tensor::from_vec(m, (b, 1, t, t), &Device::Cpu).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::test_helpers::{composed, mask, rand};
    use super::*;
    use crate::kernels::simd::test_inputs::max_diff;
    use candle_core::{DType, Device, Tensor, Var};

    #[test]
    fn fused_attention_matches_the_composed_one_and_its_gradients() {
        // Grouped-query (6 heads over 2), a per-sequence mask with padding (whole padded query
        // rows included), and without a mask.
        for mask in [Some(mask(2, 9, 3)), None] {
            let vars: Vec<Var> = [rand(&[2, 6, 9, 8], 1), rand(&[2, 2, 9, 8], 2), rand(&[2, 2, 9, 8], 3)]
                .iter()
                .map(|t| Var::from_tensor(t).unwrap())
                .collect();
            let [q, k, v] = [0, 1, 2].map(|i| vars[i].as_tensor().clone());
            let fused = attention(&q, &k, &v, mask.as_ref()).unwrap().expect("CPU f32 takes the fused op");
            let reference = composed(&q, &k, &v, mask.as_ref());
            assert!(max_diff(&fused, &reference) < 1e-5, "forward differs by {}", max_diff(&fused, &reference));
            let weights = rand(fused.dims(), 4);
            let gf = (&fused * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            let gc = (&reference * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, t) in [("q", &q), ("k", &k), ("v", &v)] {
                let diff = max_diff(gf.get(t).unwrap(), gc.get(t).unwrap());
                assert!(diff < 1e-5, "d{name} differs by {diff}");
            }
        }
    }

    #[test]
    fn a_shared_mask_and_a_kv_cache_longer_than_the_queries() {
        // One query against 7 cached positions, mask (1, 1, 1, 7) blocking the first two.
        let (q, k, v) = (rand(&[1, 4, 1, 16], 5), rand(&[1, 4, 7, 16], 6), rand(&[1, 4, 7, 16], 7));
        let m: Vec<f32> = (0..7).map(|j| if j < 2 { f32::MIN } else { 0.0 }).collect();
        let m = Tensor::from_vec(m, (1, 1, 1, 7), &Device::Cpu).unwrap();
        let fused = attention(&q, &k, &v, Some(&m)).unwrap().unwrap();
        assert!(max_diff(&fused, &composed(&q, &k, &v, Some(&m))) < 1e-5);
    }

    #[test]
    fn shapes_that_do_not_fit_are_named() {
        let (q, k) = (rand(&[1, 3, 4, 8], 8), rand(&[1, 2, 4, 8], 9));
        let err = attention(&q, &k, &k, None).unwrap_err().to_string();
        assert!(err.contains("do not fit together"), "{err}");
        let bad_mask = rand(&[1, 1, 4, 5], 10);
        let err = attention(&q, &q, &q, Some(&bad_mask)).unwrap_err().to_string();
        assert!(err.contains("the mask is [1, 1, 4, 5]"), "{err}");
    }

    #[test]
    fn other_dtypes_are_left_to_the_caller() {
        let q = rand(&[1, 2, 3, 4], 11).to_dtype(DType::BF16).unwrap();
        assert!(attention(&q, &q, &q, None).unwrap().is_none());
    }
}
