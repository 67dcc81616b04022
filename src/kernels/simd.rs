//! What the fused CPU kernels share: the vectorised `exp` and row reductions, the macro that
//! compiles a kernel for the CPU's best vector unit, and access to a CPU tensor's f32 data.

use candle_core::{CpuStorage, DType, Layout, Tensor};

/// Rows per parallel task, so that the small tensors of a small model stay on one thread.
pub(crate) const ROWS_PER_TASK: usize = 64;

/// `e^x` in f32 without a libm call, so that loops over it vectorise: Cephes' `expf` range
/// reduction (`x = n ln2 + r`, `|r| <= ln2 / 2`) and degree-6 polynomial, scaled by `2^n` through
/// the exponent bits. Within 2 ulp of `f32::exp` on normal results (the unit test checks the whole
/// range); 0 below -87.33 (`f32::exp` is subnormal below -87.34), infinity above 88.37
/// (`f32::exp` overflows at 88.72): neither matters for softmax, where `x <= 0`, or silu. NaN for
/// NaN.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
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
pub(crate) use vectorised;
/// Whether the fused CPU kernels apply to these tensors.
pub(crate) fn fused_here(tensors: &[&Tensor]) -> bool {
    tensors.iter().all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

pub(crate) fn f32_data<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> candle_core::Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(data), Some((start, end))) => Ok(&data[start..end]),
        _ => candle_core::bail!("{op}: expects contiguous f32 tensors"),
    }
}

/// The contiguous f32 data of a tensor held by an op (cos / sin tables, norm weights).
pub(crate) fn with_f32_data<T>(
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

/// The largest value of a row, in 16 lanes.
#[inline(always)]
pub(crate) fn max_of(x: &[f32]) -> f32 {
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
pub(crate) fn sum_of(x: &[f32]) -> f32 {
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
    pub(crate) fn softmax_rows(rows: &mut [f32], n: usize, mask: Option<&[f32]>) {
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
pub(crate) fn dot_of(a: &[f32], b: &[f32]) -> f32 {
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

/// Inputs and comparisons for the fused ops' tests.
#[cfg(test)]
pub(crate) mod test_inputs {
    use crate::error::Result;
    use candle_core::{Device, Tensor, Var};

    /// Seeded inputs, uniform in `[-half_width, half_width)`.
    pub fn uniform(shape: &[usize], seed: u64, half_width: f64) -> Tensor {
        let mut rng = crate::rng::Rng::new(seed);
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| ((rng.unit() * 2.0 - 1.0) * half_width) as f32).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Seeded inputs in [-2, 2).
    pub fn rand(shape: &[usize], seed: u64) -> Tensor {
        uniform(shape, seed, 2.0)
    }

    /// The largest absolute elementwise difference.
    pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    /// Forward outputs and the gradients of a random linear function of them, fused vs composed:
    /// the largest difference of the outputs and of each input's gradient.
    pub fn compare(
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
