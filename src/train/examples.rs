//! Training examples: records tokenised with the model's chat template, the response-only
//! loss over a padded batch, and the seeded order in which examples are drawn.

use crate::data::Record;
use crate::error::{Error, Result};
use crate::model::{Batch, Capture, LogitsMode, Message, Model};
use crate::rng::Rng;
use candle_core::{DType, Tensor};

/// A tokenised training example: the loss covers positions `loss_start..` (the response and
/// the end-of-turn token), never the prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// Prompt and response token ids.
    pub ids: Vec<u32>,
    /// Index of the first response token.
    pub loss_start: usize,
}

/// Tokenises records with the model's chat template: the prompt is the user turn plus the
/// assistant header; the response is what the template writes for the assistant turn
/// (so it ends with the template's own end-of-turn token). Examples longer than `max_len`
/// tokens are cut at `max_len`.
pub fn encode_examples(model: &Model, records: &[Record], max_len: usize) -> Result<Vec<Example>> {
    let tok = model.tokenizer();
    records
        .iter()
        .map(|r| {
            let user = r.messages();
            let prompt = tok.encode_chat(&user, true)?;
            let mut full_msgs = user.clone();
            full_msgs.push(Message::assistant(r.output.clone()));
            let full = tok.encode_chat(&full_msgs, false)?;
            let mut ids = if full.starts_with(&prompt) && full.len() > prompt.len() {
                full
            } else {
                // The template's full render does not extend the prompt token-wise (rare
                // merges at the boundary): append the response and an EOS instead.
                let mut ids = prompt.clone();
                ids.extend(tok.encode(&r.output, false)?);
                ids.extend(model.eos_ids().first());
                ids
            };
            // Drop what the template writes after the end-of-turn token (e.g. a newline).
            if let Some(end) = ids[prompt.len()..].iter().position(|t| model.eos_ids().contains(t)) {
                ids.truncate(prompt.len() + end + 1);
            }
            ids.truncate(max_len);
            if ids.len() <= prompt.len() {
                return Err(Error::invalid(
                    "training record",
                    format!("{:?}: the prompt alone fills max_len {max_len}; raise max_len", r.instruction),
                ));
            }
            Ok(Example { ids, loss_start: prompt.len() })
        })
        .collect()
}

/// Mean cross-entropy over the response tokens of a right-padded batch, and their count; with
/// `grad`, through the trainable parameters (see [`Model::forward_train`]).
pub(crate) fn response_loss(model: &Model, batch: &[&Example], grad: bool) -> Result<(Tensor, usize)> {
    let seqs: Vec<Vec<u32>> = batch.iter().map(|e| e.ids.clone()).collect();
    let input = Batch::from_sequences(&seqs, 0, model.device())?;
    let t = input.input_ids.dim(1)?;
    // Position p predicts token p + 1; keep the positions whose target is a response token.
    let (mut rows, mut targets) = (Vec::new(), Vec::new());
    for (b, e) in batch.iter().enumerate() {
        for p in e.loss_start.saturating_sub(1)..e.ids.len() - 1 {
            rows.push((b * t + p) as u32);
            targets.push(e.ids[p + 1]);
        }
    }
    let n = targets.len();
    let capture = Capture::logits().with_logits(LogitsMode::Rows(rows));
    let acts = if grad { model.forward_train(&input, &capture)? } else { model.forward(&input, &capture)? };
    let logits = acts.logits()?.to_dtype(DType::F32)?; // (n, vocab)
    let targets = Tensor::new(targets.as_slice(), model.device())?;
    let nll = crate::kernels::cross_entropy(&logits, &targets)?; // (n,)
    Ok(((nll.sum_all()? / n as f64)?, n))
}

/// Which examples form micro-batch `k`: each epoch is a fresh seeded shuffle, so the order is a
/// pure function of (seed, k) and a resumed run sees exactly the batches it would have seen.
pub(crate) struct DataOrder {
    n: usize,
    batch_size: usize,
    seed: u64,
}

impl DataOrder {
    pub(crate) fn new(n: usize, batch_size: usize, seed: u64) -> Self {
        DataOrder { n, batch_size: batch_size.min(n), seed }
    }

    pub(crate) fn batch(&self, k: usize) -> Vec<usize> {
        let per_epoch = self.n / self.batch_size;
        let (epoch, i) = (k / per_epoch, k % per_epoch);
        let mut perm: Vec<usize> = (0..self.n).collect();
        Rng::new(self.seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64)).shuffle(&mut perm);
        perm[i * self.batch_size..(i + 1) * self.batch_size].to_vec()
    }
}
