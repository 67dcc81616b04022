//! Rotary position embedding (Hugging Face's rotate-half layout) with a backward pass.

use super::simd::{f32_data, fused_here, with_f32_data};
use crate::error::Result;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor, D};
use rayon::prelude::*;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::simd::test_inputs::{compare, rand};

    #[test]
    fn fused_rope_matches_the_composed_one_and_its_gradient() {
        let angles = rand(&[7, 4], 3);
        let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
        let (y, grads) =
            compare(&[rand(&[2, 3, 7, 8], 4)], |t| rope(&t[0], &cos, &sin), |t| rope_composed(&t[0], &cos, &sin));
        assert!(y < 1e-6, "forward differs by {y}");
        assert!(grads[0] < 1e-6, "gradient differs by {grads:?}");
    }
}
