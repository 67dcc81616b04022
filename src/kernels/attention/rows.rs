//! Self-attention of a fresh batch (training and probe extraction) as one CPU op on the
//! decoder's flat rows, with the rotary embedding and the scale inside: see [`self_attention_rows`].

use super::fused::{gemm, head_grads, probabilities, split_grads, with_mask, Dims};
use crate::error::Result;
use crate::kernels::rope::{rotate, Angles};
use crate::kernels::simd::{f32_data, fused_here, with_f32_data, ROWS_PER_TASK};
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

pub(crate) fn self_attention_rows(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    (cos, sin): (&Tensor, &Tensor),
    mask: Option<&Tensor>,
    (b, t): (usize, usize),
    (heads, kv_heads, hd): (usize, usize, usize),
) -> Result<Option<Tensor>> {
    let empty = q.elem_count() == 0 || k.elem_count() == 0;
    if empty || !(fused_here(&[q, k, v, cos, sin]) && mask.is_none_or(|m| fused_here(&[m]))) {
        return Ok(None);
    }
    let bad = |what: String| crate::Error::invalid("attention inputs", what);
    if q.dims() != [b * t, heads * hd] || k.dims() != [b * t, kv_heads * hd] || v.dims() != k.dims() {
        return Err(bad(format!(
            "q {:?}, k {:?} and v {:?} are not ({b} x {t} rows, {heads} / {kv_heads} heads of {hd})",
            q.dims(),
            k.dims(),
            v.dims()
        )));
    }
    if cos.dims() != [t, hd / 2] || sin.dims() != cos.dims() {
        return Err(bad(format!("cos {:?} and sin {:?} are not ({t}, {})", cos.dims(), sin.dims(), hd / 2)));
    }
    let shape = Dims::of(&[b, heads, t, hd], &[b, kv_heads, t, hd], &[b, kv_heads, t, hd], mask.map(|m| m.dims()))?;
    let op = RowsAttention {
        shape,
        mask: mask.map(|m| m.contiguous()).transpose()?,
        cos: cos.contiguous()?,
        sin: sin.contiguous()?,
    };
    Ok(Some(q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op)?))
}

/// The rotated (and scaled) head `col` of one sequence's rows into `dst` `(t, hd)`: `rows` starts
/// at the sequence's first row, `width` values per row.
fn rotated_head(dst: &mut [f32], rows: &[f32], width: usize, col: usize, hd: usize, (cos, sin): Angles, scale: f32) {
    let half = hd / 2;
    for (p, y) in dst.chunks_exact_mut(hd).enumerate() {
        let x = &rows[p * width + col * hd..p * width + (col + 1) * hd];
        rotate(y, x, (&cos[p * half..(p + 1) * half], &sin[p * half..(p + 1) * half]), false, scale);
    }
}

/// Heads `(b, n, t, hd)` into rows `(b * t, n * hd)`, rotating each back by its position's angle
/// and scaling when `unrotate` is given.
fn heads_to_rows(heads: &[f32], (n, t, hd): (usize, usize, usize), unrotate: Option<(Angles, f32)>, rows: &mut [f32]) {
    let half = hd / 2;
    rows.par_chunks_mut(ROWS_PER_TASK * n * hd).enumerate().for_each(|(c, chunk)| {
        for (i, row) in chunk.chunks_exact_mut(n * hd).enumerate() {
            let r = c * ROWS_PER_TASK + i;
            let (bi, p) = (r / t, r % t);
            for (h, y) in row.chunks_exact_mut(hd).enumerate() {
                let x = &heads[((bi * n + h) * t + p) * hd..][..hd];
                match unrotate {
                    Some(((cos, sin), scale)) => {
                        let angles = (&cos[p * half..(p + 1) * half], &sin[p * half..(p + 1) * half]);
                        rotate(y, x, angles, true, scale);
                    }
                    None => y.copy_from_slice(x),
                }
            }
        }
    });
}

struct RowsAttention {
    shape: Dims,
    mask: Option<Tensor>,
    cos: Tensor,
    sin: Tensor,
}

impl RowsAttention {
    fn scale(&self) -> f32 {
        (self.shape.hd as f64).powf(-0.5) as f32
    }

    /// Runs `f` on the cos / sin tables and the mask.
    fn with_tables<R>(
        &self,
        f: impl FnOnce(Angles, Option<&[f32]>) -> candle_core::Result<R>,
    ) -> candle_core::Result<R> {
        with_f32_data(&self.cos, "fused-attention", |cos| {
            with_f32_data(&self.sin, "fused-attention", |sin| with_mask(&self.mask, |mask| f((cos, sin), mask)))
        })
    }
}

impl CustomOp3 for RowsAttention {
    fn name(&self) -> &'static str {
        "fused-self-attention"
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
        let (t, hd, group) = (d.t, d.hd, d.group());
        let (q_width, kv_width) = (d.heads * hd, d.kv_heads * hd);
        let scale = self.scale();
        // Per (sequence, key/value head): its rotated keys once, then each query head of the
        // group into `(b, heads, t, hd)`, turned into rows at the end.
        let mut out_heads = vec![0f32; q.len()];
        self.with_tables(|angles, mask| {
            out_heads.par_chunks_mut(group * t * hd).enumerate().for_each_init(
                || (vec![0f32; t * t], vec![0f32; t * hd], vec![0f32; t * hd]),
                |(p, qr, kr), (bg, out)| {
                    let (bi, g) = (bg / d.kv_heads, bg % d.kv_heads);
                    let (q_rows, kv_rows) = (&q[bi * t * q_width..], bi * t * kv_width);
                    rotated_head(kr, &k[kv_rows..], kv_width, g, hd, angles, 1.0);
                    let v = &v[kv_rows + g * hd..];
                    let mask = mask.map(|m| d.mask_plane(m, bi));
                    for (r, o) in out.chunks_exact_mut(t * hd).enumerate() {
                        rotated_head(qr, q_rows, q_width, g * group + r, hd, angles, scale);
                        probabilities(&d, qr, kr, mask, p);
                        gemm((t, hd, t), o, hd, false, p, (t, 1), v, (kv_width, 1));
                    }
                },
            );
            Ok(())
        })?;
        let mut out = vec![0f32; q.len()];
        heads_to_rows(&out_heads, (d.heads, t, hd), None, &mut out);
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
        let op = RowsAttentionGrad { fwd: self, q: q.clone() };
        let [dq, dk, dv] = split_grads(&grad.contiguous()?.apply_op3_no_bwd(k, v, &op)?, q, k, v)?;
        Ok((dq, dk, dv))
    }
}

/// The gradients of [`RowsAttention`] in one buffer `[dq; dk; dv]` of rows, from `d out`, `k`
/// and `v`. Split by (sequence, key/value head) as [`AttentionGrad`]; the probabilities are
/// recomputed from `q` and `k`.
struct RowsAttentionGrad<'a> {
    fwd: &'a RowsAttention,
    q: Tensor,
}

impl CustomOp3 for RowsAttentionGrad<'_> {
    fn name(&self) -> &'static str {
        "fused-self-attention-grad"
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
        let d = self.fwd.shape;
        let (d_out, k, v) =
            (f32_data(gs, gl, self.name())?, f32_data(ks, kl, self.name())?, f32_data(vs, vl, self.name())?);
        let (t, hd, group) = (d.t, d.hd, d.group());
        let (q_width, kv_width) = (d.heads * hd, d.kv_heads * hd);
        let scale = self.fwd.scale();
        // Gradients with respect to the rotated, scaled q and the rotated k, per head.
        let (mut dq_heads, mut dk_heads, mut dv_heads) =
            (vec![0f32; d_out.len()], vec![0f32; k.len()], vec![0f32; k.len()]);
        let mut all = vec![0f32; d_out.len() + 2 * k.len()];
        with_f32_data(&self.q, self.name(), |q| {
            self.fwd.with_tables(|angles, mask| {
                dq_heads
                    .par_chunks_mut(group * t * hd)
                    .zip(dk_heads.par_chunks_mut(t * hd).zip(dv_heads.par_chunks_mut(t * hd)))
                    .enumerate()
                    .for_each_init(
                        || (vec![0f32; t * t], vec![0f32; t * t], vec![0f32; t * hd], vec![0f32; t * hd]),
                        |(p, dp, qr, kr), (bg, (dq, (dk, dv)))| {
                            let (bi, g) = (bg / d.kv_heads, bg % d.kv_heads);
                            let (q_rows, kv_rows) = (&q[bi * t * q_width..], bi * t * kv_width);
                            rotated_head(kr, &k[kv_rows..], kv_width, g, hd, angles, 1.0);
                            let v = &v[kv_rows + g * hd..];
                            let mask = mask.map(|m| d.mask_plane(m, bi));
                            for (r, dq) in dq.chunks_exact_mut(t * hd).enumerate() {
                                let h = g * group + r;
                                let d_o = &d_out[bi * t * q_width + h * hd..];
                                rotated_head(qr, q_rows, q_width, h, hd, angles, scale);
                                probabilities(&d, qr, kr, mask, p);
                                // Gradients of the rotated, scaled qr and the rotated kr.
                                let grads = (&mut *dq, &mut *dk, &mut *dv);
                                head_grads(&d, p, dp, (d_o, q_width), (v, kv_width), (qr, kr), grads, r > 0);
                            }
                        },
                    );
                // Back through the rotation (its transpose is its inverse) and q's scale.
                let (dq, rest) = all.split_at_mut(d_out.len());
                let (dk, dv) = rest.split_at_mut(k.len());
                heads_to_rows(&dq_heads, (d.heads, t, hd), Some((angles, scale)), dq);
                heads_to_rows(&dk_heads, (d.kv_heads, t, hd), Some((angles, 1.0)), dk);
                heads_to_rows(&dv_heads, (d.kv_heads, t, hd), None, dv);
                Ok(())
            })
        })?;
        let len = all.len();
        Ok((CpuStorage::F32(all), len.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::fused::test_helpers::{composed, mask, rand};
    use super::*;
    use crate::kernels::simd::test_inputs::max_diff;
    use candle_core::{Device, Var};

    /// The 4-D route on flat rows: heads out of the rows, candle's composed rotary embedding, the
    /// scale on q, the composed attention, back to rows.
    fn composed_rows(q: &Tensor, k: &Tensor, v: &Tensor, angles: (&Tensor, &Tensor), mask: Option<&Tensor>) -> Tensor {
        let (b, t, hd) = (2, 9, 8);
        let heads = |x: &Tensor| {
            let n = x.dim(1).unwrap() / hd;
            x.reshape((b, t, n, hd)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap()
        };
        let rope = |x: &Tensor| candle_nn::rotary_emb::rope_slow(x, angles.0, angles.1).unwrap();
        let q = (rope(&heads(q)) * (hd as f64).powf(-0.5)).unwrap();
        let y = composed(&q, &rope(&heads(k)), &heads(v), mask);
        y.transpose(1, 2).unwrap().reshape((b * t, q.dim(1).unwrap() * hd)).unwrap()
    }

    #[test]
    fn self_attention_on_rows_matches_the_four_d_route_and_its_gradients() {
        let (b, t, hd) = (2, 9, 8);
        let positions = Tensor::arange(0f32, t as f32, &Device::Cpu).unwrap().reshape((t, 1)).unwrap();
        let freqs: Vec<f32> = (0..hd / 2).map(|i| 10_000f32.powf(-2.0 * i as f32 / hd as f32)).collect();
        let angles = positions.broadcast_mul(&Tensor::new(freqs.as_slice(), &Device::Cpu).unwrap()).unwrap();
        let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
        for mask in [Some(mask(b, t, 3)), None] {
            let vars: Vec<Var> = [rand(&[b * t, 6 * hd], 21), rand(&[b * t, 2 * hd], 22), rand(&[b * t, 2 * hd], 23)]
                .iter()
                .map(|t| Var::from_tensor(t).unwrap())
                .collect();
            let [q, k, v] = [0, 1, 2].map(|i| vars[i].as_tensor().clone());
            let fused = self_attention_rows(&q, &k, &v, (&cos, &sin), mask.as_ref(), (b, t), (6, 2, hd))
                .unwrap()
                .expect("CPU f32 takes the fused op");
            let reference = composed_rows(&q, &k, &v, (&cos, &sin), mask.as_ref());
            assert!(max_diff(&fused, &reference) < 1e-5, "forward differs by {}", max_diff(&fused, &reference));
            let weights = rand(fused.dims(), 24);
            let gf = (&fused * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            let gc = (&reference * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, t) in [("q", &q), ("k", &k), ("v", &v)] {
                let diff = max_diff(gf.get(t).unwrap(), gc.get(t).unwrap());
                assert!(diff < 1e-5, "d{name} differs by {diff}");
            }
        }
        let err = self_attention_rows(&cos, &cos, &cos, (&cos, &sin), None, (b, t), (6, 2, hd)).unwrap_err();
        assert!(err.to_string().contains("are not (2 x 9 rows, 6 / 2 heads of 8)"), "{err}");
    }
}
