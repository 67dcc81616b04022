//! Parity of an imported model with candle-transformers' `quantized_llama` on the same GGUF.

use super::{open, Meta};
use crate::error::{Error, Result};
use crate::model::Model;
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Agreement of an imported model with candle-transformers' `quantized_llama` on one prompt;
/// made by [`compare_with_candle`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GgufParity {
    /// The prompt's token count.
    pub tokens: usize,
    /// Whether the reference ran on the dequantized (f32) weights instead of the quantized ones.
    pub dequantized: bool,
    /// Largest absolute difference of the last-token logits.
    pub max_abs_diff: f32,
    /// Largest absolute reference logit (the scale of `max_abs_diff`).
    pub max_abs_logit: f32,
    /// Root-mean-square difference of the last-token logits.
    pub rms_diff: f32,
    /// Both pick the same most likely next token.
    pub top1_agrees: bool,
    /// Tokens common to both top-5 lists.
    pub top5_overlap: usize,
}

impl std::fmt::Display for GgufParity {
    /// `12 tokens, quantized reference: max |diff| 3.12e-2 (logits up to 21.3), rms 6.10e-3, top-1 same, top-5 overlap 5/5`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} tokens, {} reference: max |diff| {:.2e} (logits up to {:.1}), rms {:.2e}, top-1 {}, top-5 overlap {}/5",
            self.tokens,
            if self.dequantized { "dequantized" } else { "quantized" },
            self.max_abs_diff,
            self.max_abs_logit,
            self.rms_diff,
            if self.top1_agrees { "same" } else { "differs" },
            self.top5_overlap
        )
    }
}

/// Runs `model` and candle-transformers' `quantized_llama` (llama architecture only) from the
/// GGUF `file` on each text (encoded with the model's tokenizer), comparing last-token logits.
/// With `dequantized`, the reference runs on the f32 dequantization of the same weights (an
/// in-memory GGUF copy; needs about three times the f32 model size in memory), which isolates
/// the decoders from the quantized matmuls.
///
/// ```no_run
/// use secure_tuning::model::gguf::compare_with_candle;
/// let file = std::path::Path::new("SmolLM2-135M-Instruct.Q4_1.gguf");
/// let model = secure_tuning::Model::load_gguf(file)?;
/// for p in compare_with_candle(&model, file, &["The quick brown fox"], true)? {
///     assert!(p.max_abs_diff < 1e-3, "{p}");
/// }
/// # Ok::<(), secure_tuning::Error>(())
/// ```
pub fn compare_with_candle(model: &Model, file: &Path, texts: &[&str], dequantized: bool) -> Result<Vec<GgufParity>> {
    use candle_transformers::models::quantized_llama::ModelWeights;
    let (content, mut reader) = open(file)?;
    let meta = Meta { md: &content.metadata, path: file };
    if meta.str("general.architecture")? != Some("llama") {
        return Err(Error::invalid(
            "parity reference",
            format!("`{}`: candle's quantized_llama runs llama-architecture GGUF files only", file.display()),
        ));
    }
    if let Some(bias) = content.tensor_infos.keys().find(|k| k.ends_with(".bias")) {
        return Err(Error::invalid(
            "parity reference",
            format!("`{}` has bias tensors (`{bias}`), which candle's quantized_llama ignores", file.display()),
        ));
    }
    let mut reference = if dequantized {
        let bytes = dequantized_copy(&content, &mut reader, file)?;
        let mut cursor = std::io::Cursor::new(bytes);
        let copy = Content::read(&mut cursor)?;
        ModelWeights::from_gguf(copy, &mut cursor, &Device::Cpu)?
    } else {
        ModelWeights::from_gguf(content, &mut reader, &Device::Cpu)?
    };
    let mut out = Vec::new();
    for text in texts {
        let ids = model.tokenizer().encode(text, true)?;
        if ids.is_empty() {
            return Err(Error::invalid("parity text", format!("{text:?} encodes to no tokens")));
        }
        let ours = model.forward(
            &crate::model::Batch::single(&ids, model.device())?,
            &crate::model::Capture::logits().with_logits(crate::model::LogitsMode::Last),
        )?;
        let ours: Vec<f32> = ours.logits()?.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1()?;
        reference.clear_kv_cache();
        let input = Tensor::new(ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
        let theirs: Vec<f32> = reference.forward(&input, 0)?.flatten_all()?.to_vec1()?;
        if ours.len() != theirs.len() {
            return Err(Error::invalid(
                "parity",
                format!("the model has {} logits, the reference {}", ours.len(), theirs.len()),
            ));
        }
        let diffs: Vec<f32> = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).collect();
        let top = |v: &[f32]| {
            let mut idx: Vec<usize> = (0..v.len()).collect();
            idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]));
            idx.truncate(5);
            idx
        };
        let (a, b) = (top(&ours), top(&theirs));
        out.push(GgufParity {
            tokens: ids.len(),
            dequantized,
            max_abs_diff: diffs.iter().cloned().fold(0.0, f32::max),
            max_abs_logit: theirs.iter().map(|x| x.abs()).fold(0.0, f32::max),
            rms_diff: (diffs.iter().map(|d| d * d).sum::<f32>() / diffs.len() as f32).sqrt(),
            top1_agrees: a[0] == b[0],
            top5_overlap: a.iter().filter(|i| b.contains(i)).count(),
        });
    }
    Ok(out)
}

/// The GGUF with every tensor stored as f32 (its dequantization), serialised in memory.
fn dequantized_copy<R: std::io::Read + std::io::Seek>(
    content: &Content,
    reader: &mut R,
    file: &Path,
) -> Result<Vec<u8>> {
    use candle_core::quantized::{GgmlDType, QTensor};
    let mut tensors = Vec::new();
    for name in content.tensor_infos.keys() {
        let q =
            content.tensor(reader, name, &Device::Cpu).map_err(|e| Error::malformed(file, format!("{name}: {e}")))?;
        tensors.push((name.clone(), QTensor::quantize(&q.dequantize(&Device::Cpu)?, GgmlDType::F32)?));
    }
    let metadata: Vec<(&str, &Value)> = content.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut cursor = std::io::Cursor::new(Vec::new());
    candle_core::quantized::gguf_file::write(&mut cursor, &metadata, &tensor_refs)?;
    Ok(cursor.into_inner())
}
