//! The SwiGLU activation `silu(gate) * up` with a backward pass.

use super::simd::{exp, f32_data, fused_here, vectorised};
use crate::error::Result;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::simd::test_inputs::{compare, rand};

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
}
