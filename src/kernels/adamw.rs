//! One AdamW step for one parameter as a single in-place op over its f32 state rows
//! `[master weight; m; v]` (shape `(3, n)`): the gradient is read once and the state written
//! once, where the same update written with tensor ops takes about sixteen passes and as many
//! kernel launches. CPU: a parallel loop here; CUDA: `adamw.cu` beside this file.

use candle_core::{CpuStorage, InplaceOp2, Layout, Result};

/// The scalars of one step; `c1`, `c2` are the bias corrections, `decay` = `1 - lr * wd`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdamWStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub c1: f32,
    pub c2: f32,
    pub decay: f32,
}

impl AdamWStep {
    /// The update of one element: new `(w, m, v)`.
    #[inline(always)]
    fn apply(&self, w: f32, m: f32, v: f32, g: f32) -> (f32, f32, f32) {
        let m = self.beta1 * m + (1.0 - self.beta1) * g;
        let v = self.beta2 * v + (1.0 - self.beta2) * g * g;
        let step = (self.lr / self.c1) * m / ((v / self.c2).sqrt() + self.eps);
        (w * self.decay - step, m, v)
    }

    fn cpu_update<G: Copy + Send + Sync>(&self, state: &mut [f32], grad: &[G], to_f32: impl Fn(G) -> f32 + Sync) {
        use rayon::prelude::*;
        let n = grad.len();
        let (w, rest) = state.split_at_mut(n);
        let (m, v) = rest.split_at_mut(n);
        const CHUNK: usize = 1 << 14;
        w.par_chunks_mut(CHUNK)
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .zip(grad.par_chunks(CHUNK))
            .for_each(|(((w, m), v), g)| {
                for i in 0..g.len() {
                    (w[i], m[i], v[i]) = self.apply(w[i], m[i], v[i], to_f32(g[i]));
                }
            });
    }
}

fn contiguous<'a, T>(data: &'a [T], layout: &Layout, what: &str) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("fused AdamW: the {what} must be contiguous"),
    }
}

impl InplaceOp2 for AdamWStep {
    fn name(&self) -> &'static str {
        "fused-adamw"
    }

    fn cpu_fwd(&self, state: &mut CpuStorage, sl: &Layout, grad: &CpuStorage, gl: &Layout) -> Result<()> {
        let CpuStorage::F32(state) = state else {
            candle_core::bail!("fused AdamW: the state must be f32");
        };
        let (start, end) =
            sl.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("state not contiguous".into()))?;
        let state = &mut state[start..end];
        if state.len() != 3 * gl.shape().elem_count() {
            candle_core::bail!("fused AdamW: the state must hold 3 rows of the gradient's size");
        }
        match grad {
            CpuStorage::F32(g) => self.cpu_update(state, contiguous(g, gl, "gradient")?, |x| x),
            CpuStorage::BF16(g) => self.cpu_update(state, contiguous(g, gl, "gradient")?, |x| x.to_f32()),
            CpuStorage::F16(g) => self.cpu_update(state, contiguous(g, gl, "gradient")?, |x| x.to_f32()),
            _ => candle_core::bail!("fused AdamW: the gradient must be f32, bf16 or f16"),
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        state: &mut candle_core::CudaStorage,
        sl: &Layout,
        grad: &candle_core::CudaStorage,
        gl: &Layout,
    ) -> Result<()> {
        use candle_core::cuda_backend::CudaStorageSlice as S;
        let n = gl.shape().elem_count();
        if sl.contiguous_offsets() != Some((0, 3 * n)) || gl.contiguous_offsets().is_none() {
            candle_core::bail!("fused AdamW: state and gradient must be whole contiguous tensors");
        }
        let dev = state.device.clone();
        let S::F32(state) = &mut state.slice else {
            candle_core::bail!("fused AdamW: the state must be f32");
        };
        let (a, b) = gl.contiguous_offsets().expect("checked above");
        match &grad.slice {
            S::F32(g) => self.launch(&dev, "adamw_f32", state, &g.slice(a..b), n),
            S::BF16(g) => self.launch(&dev, "adamw_bf16", state, &g.slice(a..b), n),
            S::F16(g) => self.launch(&dev, "adamw_f16", state, &g.slice(a..b), n),
            _ => candle_core::bail!("fused AdamW: unsupported gradient dtype"),
        }
    }
}

#[cfg(feature = "cuda")]
impl AdamWStep {
    fn launch<G: candle_core::cuda_backend::cudarc::driver::DeviceRepr>(
        &self,
        dev: &candle_core::cuda_backend::CudaDevice,
        kernel: &str,
        state: &mut candle_core::cuda_backend::cudarc::driver::CudaSlice<f32>,
        grad: &candle_core::cuda_backend::cudarc::driver::CudaView<'_, G>,
        n: usize,
    ) -> Result<()> {
        use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
        use candle_core::cuda_backend::WrapErr;
        const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/adamw.ptx"));
        let func = dev.get_or_load_custom_func(kernel, "secure_tuning_adamw", PTX)?;
        let cfg = LaunchConfig {
            grid_dim: (n.div_ceil(256).min(65_535) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let n32 = n as u32;
        let mut b = func.builder();
        b.arg(state);
        b.arg(grad);
        b.arg(&n32);
        for x in [&self.lr, &self.beta1, &self.beta2, &self.eps, &self.c1, &self.c2, &self.decay] {
            b.arg(x);
        }
        // SAFETY: the kernel reads n gradient elements and writes the 3n state elements, the
        // sizes the caller checked.
        unsafe { b.launch(cfg) }.w()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor};

    /// Seeded samples from a normal distribution, so a failure reproduces (candle's CPU `randn`
    /// cannot be seeded).
    fn normal(n: usize, std: f64, seed: u64) -> Tensor {
        let mut rng = crate::rng::Rng::new(seed);
        let values: Vec<f32> = (0..n).map(|_| (rng.normal() * std) as f32).collect();
        Tensor::from_vec(values, n, &Device::Cpu).unwrap()
    }

    /// The fused step against AdamW written out with tensor ops, f32 and bf16 gradients. The
    /// two evaluate the same formula with the same f32 coefficients in a different order, so they
    /// agree to f32 rounding relative to each value's size (a tiny `v` makes a step large).
    #[test]
    fn fused_step_matches_the_formula() {
        let n = 40_000; // more than one parallel chunk
        let w = normal(n, 1.0, 1);
        let m = normal(n, 0.1, 2);
        let v = normal(n, 0.1, 3).sqr().unwrap();
        let g = normal(n, 1.0, 4);
        let op = AdamWStep { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, c1: 0.19, c2: 0.002, decay: 0.999 };
        for dtype in [DType::F32, DType::BF16] {
            let g = g.to_dtype(dtype).unwrap();
            let state = Tensor::stack(&[&w, &m, &v], 0).unwrap();
            state.inplace_op2(&g, &op).unwrap();
            let g = g.to_dtype(DType::F32).unwrap();
            // The coefficients as the step computes them, in f32 (1 - 0.999 is 0.00099999 there).
            let f = |x: f32| x as f64;
            let m2 = ((&m * f(op.beta1)).unwrap() + (&g * f(1.0 - op.beta1)).unwrap()).unwrap();
            let v2 = ((&v * f(op.beta2)).unwrap() + (g.sqr().unwrap() * f(1.0 - op.beta2)).unwrap()).unwrap();
            let denom = ((&v2 / f(op.c2)).unwrap().sqrt().unwrap() + f(op.eps)).unwrap();
            let step = ((&m2 * f(op.lr / op.c1)).unwrap() / denom).unwrap();
            let w2 = ((&w * f(op.decay)).unwrap() - step).unwrap();
            for (row, expected) in [(0, &w2), (1, &m2), (2, &v2)] {
                let got = state.get(row).unwrap();
                let scale = (expected.abs().unwrap() + 1.0).unwrap();
                let rel = ((got - expected).unwrap().abs().unwrap() / scale).unwrap();
                let worst = rel.max_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(worst < 2e-6, "{dtype:?} row {row}: relative difference {worst}");
            }
        }
    }
}
