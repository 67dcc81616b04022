//! Per-row cross-entropy over the vocabulary with a backward pass: the training loss.

use super::simd::{exp, f32_data, fused_here, max_of, sum_of, vectorised};
use crate::error::Result;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::simd::test_inputs::{compare, rand};
    use candle_core::Device;

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
