//! Projections `y = x @ W^T (+ b) (+ LoRA)` with backward passes that compute only what
//! training needs: a frozen weight gets no gradient, a trained one gets it in its own layout,
//! and a frozen base with LoRA adapters is one autograd node.

use super::simd::fused_here;
use crate::error::Result;
use candle_core::Tensor;
use rayon::prelude::*;

/// `y = x @ weight.t() + bias (+ scale * x @ a.t() @ b.t())` for `x` `(rows, in)`, `weight`
/// `(out, in)`, and a LoRA adapter `(a, b, scale)` with `a` `(r, in)` and `b` `(out, r)` in f32.
/// Gradients reach `x` and whichever of `weight`, `bias`, `a`, `b` are trainable `Var`s.
pub(crate) fn linear(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    lora: Option<(&Tensor, &Tensor, f64)>,
) -> Result<Tensor> {
    // One 2-D GEMM against the transposed view; no copy of the weight.
    let x = x.contiguous()?;
    let y = match lora {
        // A frozen base on the CPU in f32: base and low-rank path as one autograd node.
        Some((a, b, scale)) if !weight.is_variable() && fused_here(&[&x, weight, a, b]) => {
            x.apply_op3(a, b, LoraMatmul { weight: weight.clone(), scale: scale as f32 })?
        }
        // The low-rank path runs in the adapters' f32 and joins the base output's dtype.
        Some((a, b, scale)) => {
            let low = x.to_dtype(a.dtype())?.matmul(&a.t()?)?.matmul(&b.t()?)?;
            (project(&x, weight)? + (low * scale)?.to_dtype(weight.dtype())?)?
        }
        None => project(&x, weight)?,
    };
    Ok(match bias {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

/// `x @ weight.t()` for a 2-D contiguous `x`; a frozen (non-`Var`) weight gets no gradient.
fn project(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    if !weight.is_variable() {
        Ok(x.apply_op1_arc(std::sync::Arc::new(Box::new(FrozenMatmul { weight: weight.clone() })))?)
    } else if fused_here(&[x, weight]) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::simd::test_inputs::{max_diff, uniform};
    use candle_core::Var;

    #[test]
    fn fused_lora_projection_matches_the_composed_one_and_its_gradients() {
        let w = uniform(&[24, 16], 1, 0.5); // frozen: a plain tensor
        let vars: Vec<Var> = [uniform(&[10, 16], 2, 1.0), uniform(&[4, 16], 3, 0.5), uniform(&[24, 4], 4, 0.5)]
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let [x, a, b] = [0, 1, 2].map(|i| vars[i].as_tensor().clone());
        let fused = linear(&x, &w, None, Some((&a, &b, 2.5))).unwrap();
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
        let fused = linear(x, w, None, None).unwrap();
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
