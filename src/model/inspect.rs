//! A quick look at what the model makes of a raw text: its tokens, the next-token logits and
//! the residual stream at the last token ([`Model::inspect`], the CLI's `forward`).

use super::activations::{Capture, LogitsMode};
use super::decoder::Batch;
use super::Model;
use crate::error::{Error, Result};
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

/// What [`Model::inspect`] read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inspection {
    /// The token ids of the text (special tokens as the tokenizer's post-processor adds them).
    pub token_ids: Vec<u32>,
    /// The logits of the token after the last one, `(vocab,)`.
    pub last_logits: Vec<f32>,
    /// Hugging Face's `output_hidden_states[i]` at the last token: embeddings first, the final
    /// norm's output last.
    pub hidden_states: Vec<Vec<f32>>,
    /// The five most likely next tokens: `(id, text, logit)`.
    pub top_next: Vec<(u32, String, f32)>,
}

impl Model {
    /// Runs raw `text` (no chat template) and reads the next-token logits and every hidden state
    /// at its last token.
    ///
    /// ```
    /// let model = secure_tuning::Model::load_dir("tests/fixtures/mistral")?;
    /// let seen = model.inspect("Hello fox")?;
    /// assert_eq!(seen.hidden_states.len(), model.config().num_layers + 1);
    /// assert_eq!(seen.last_logits.len(), model.config().vocab_size);
    /// # Ok::<(), secure_tuning::Error>(())
    /// ```
    pub fn inspect(&self, text: &str) -> Result<Inspection> {
        if text.is_empty() {
            return Err(Error::invalid("text", "the text is empty; pass at least one character"));
        }
        let ids = self.tokenizer().encode(text, true)?;
        let batch = Batch::single(&ids, self.device())?;
        let acts = self.forward(&batch, &Capture::residual().with_logits(LogitsMode::Last))?;
        let last = ids.len() - 1;
        let to_vec = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?) };
        super::generate::check_finite(acts.logits()?, "the next-token logits")?;
        let last_logits = to_vec(acts.logits()?)?;
        let hidden_states =
            acts.hidden_states()?.iter().map(|h| to_vec(&h.get(0)?.get(last)?)).collect::<Result<Vec<_>>>()?;
        let mut order: Vec<usize> = (0..last_logits.len()).collect();
        order.sort_by(|&a, &b| last_logits[b].total_cmp(&last_logits[a]));
        let top_next = order
            .into_iter()
            .take(5)
            .map(|i| Ok((i as u32, self.tokenizer().decode(&[i as u32])?, last_logits[i])))
            .collect::<Result<Vec<_>>>()?;
        Ok(Inspection { token_ids: ids, last_logits, hidden_states, top_next })
    }
}

impl std::fmt::Display for Inspection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} tokens: {:?}", self.token_ids.len(), self.token_ids)?;
        writeln!(f, "most likely next tokens:")?;
        for (id, text, logit) in &self.top_next {
            writeln!(f, "  {id:>7} {text:?} (logit {logit:.3})")?;
        }
        write!(f, "hidden state norm at the last token, per entry (embeddings first, final norm last):")?;
        for (i, h) in self.hidden_states.iter().enumerate() {
            write!(f, "\n  {i:>3} {:.3}", h.iter().map(|x| x * x).sum::<f32>().sqrt())?;
        }
        Ok(())
    }
}
