//! RMSNorm with a backward pass: one fused pass each way on the CPU in f32, composed ops elsewhere.

use super::simd::{f32_data, fused_here, ROWS_PER_TASK};
use crate::error::Result;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::simd::test_inputs::{compare, max_diff, rand};
    use candle_core::Device;

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
    fn non_f32_inputs_take_the_composed_path() {
        let x = rand(&[4, 8], 6).to_dtype(DType::BF16).unwrap();
        let w = Tensor::ones(8, DType::BF16, &Device::Cpu).unwrap();
        let y = rms_norm(&x, &w, 1e-6).unwrap();
        assert_eq!(y.dtype(), DType::BF16);
        let reference = rms_norm_composed(&x, &w, 1e-6).unwrap();
        assert_eq!(max_diff(&y.to_dtype(DType::F32).unwrap(), &reference.to_dtype(DType::F32).unwrap()), 0.0);
    }
}
