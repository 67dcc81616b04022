//! Text generation with a KV cache: greedy or seeded temperature / top-p sampling, stopping at
//! an EOS token or a token budget.

use super::activations::{Capture, LogitsMode};
use super::chat::Message;
use super::decoder::{Batch, KvCache};
use super::Model;
use crate::error::{Error, Result};
use candle_core::DType;
use candle_transformers::generation::{LogitsProcessor, Sampling as CandleSampling};

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The most likely token (deterministic).
    Greedy,
    /// Sample from `softmax(logits / temperature)`, restricted to the smallest set of tokens whose
    /// probability reaches `top_p` (1.0 = no restriction).
    TopP {
        /// Softmax temperature (> 0).
        temperature: f64,
        /// Nucleus mass in (0, 1].
        top_p: f64,
    },
}

/// Options for [`Model::generate`].
///
/// ```
/// use secure_tuning::model::{GenerateOptions, Sampling};
/// let opts = GenerateOptions { max_new_tokens: 16, ..GenerateOptions::default() };
/// assert_eq!(opts.sampling, Sampling::Greedy);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// Token budget for the continuation.
    pub max_new_tokens: usize,
    /// Greedy or sampled.
    pub sampling: Sampling,
    /// Seed for sampling (ignored when greedy).
    pub seed: u64,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions { max_new_tokens: 64, sampling: Sampling::Greedy, seed: 0 }
    }
}

impl Sampling {
    /// candle's sampler for these settings, after checking them.
    fn to_candle(self) -> Result<CandleSampling> {
        Ok(match self {
            Sampling::Greedy => CandleSampling::ArgMax,
            Sampling::TopP { temperature, top_p } => {
                let valid = temperature > 0.0 && top_p > 0.0 && top_p <= 1.0; // false for NaN too
                if !valid {
                    return Err(Error::invalid(
                        "sampling",
                        format!("temperature {temperature} must be > 0 and top_p {top_p} in (0, 1]"),
                    ));
                }
                if top_p >= 1.0 {
                    CandleSampling::All { temperature }
                } else {
                    CandleSampling::TopP { p: top_p, temperature }
                }
            }
        })
    }
}

impl Model {
    /// Continues `prompt` (token ids) and returns the new ids, without the final EOS.
    ///
    /// ```
    /// # let model = secure_tuning::Model::load_dir("tests/fixtures/qwen2").unwrap();
    /// use secure_tuning::model::GenerateOptions;
    /// let ids = model.tokenizer().encode("The quick", false).unwrap();
    /// let out = model.generate(&ids, &GenerateOptions { max_new_tokens: 5, ..Default::default() }).unwrap();
    /// assert!(out.len() <= 5);
    /// ```
    pub fn generate(&self, prompt: &[u32], opts: &GenerateOptions) -> Result<Vec<u32>> {
        Ok(self.generate_batch(&[prompt.to_vec()], opts)?.remove(0))
    }

    /// Continues several prompts at once, one decoding step for all of them, and returns each
    /// one's new ids as [`Model::generate`] would for it alone (rows are left-padded; each row
    /// samples with its own generator seeded with `opts.seed`). On a CPU a batch of 16 short
    /// prompts takes a few times less than 16 calls, since a step of one token is mostly
    /// per-operation overhead.
    ///
    /// ```
    /// # let model = secure_tuning::Model::load_dir("tests/fixtures/qwen2").unwrap();
    /// use secure_tuning::model::GenerateOptions;
    /// let tok = model.tokenizer();
    /// let prompts = vec![tok.encode("The quick", false).unwrap(), tok.encode("Hello", false).unwrap()];
    /// let opts = GenerateOptions { max_new_tokens: 4, ..Default::default() };
    /// let out = model.generate_batch(&prompts, &opts).unwrap();
    /// assert_eq!(out[1], model.generate(&prompts[1], &opts).unwrap());
    /// ```
    pub fn generate_batch(&self, prompts: &[Vec<u32>], opts: &GenerateOptions) -> Result<Vec<Vec<u32>>> {
        crate::kernels::run_on_cpu_pool(self.device(), || self.generate_here(prompts, opts))
    }

    fn generate_here(&self, prompts: &[Vec<u32>], opts: &GenerateOptions) -> Result<Vec<Vec<u32>>> {
        if let Some(i) = prompts.iter().position(Vec::is_empty) {
            return Err(Error::invalid(format!("prompt {i}"), "no tokens; the prompt text is empty"));
        }
        let context = self.config().max_position_embeddings;
        if let Some((i, p)) = prompts.iter().enumerate().find(|(_, p)| p.len() >= context) {
            return Err(Error::invalid(
                format!("prompt {i}"),
                format!(
                    "{} tokens leave no room to answer in the model's context of {context} tokens \
                     (max_position_embeddings); shorten it",
                    p.len()
                ),
            ));
        }
        let sampling = opts.sampling.to_candle()?;
        let mut processors: Vec<LogitsProcessor> =
            prompts.iter().map(|_| LogitsProcessor::from_sampling(opts.seed, sampling.clone())).collect();
        let capture = Capture::logits().with_logits(LogitsMode::Last);
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let pad = self.eos_ids().first().copied().unwrap_or(0); // never attended to
        let mut cache = KvCache::left_padded(prompts.iter().map(|p| longest - p.len()).collect());
        let mut input: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| std::iter::repeat_n(pad, longest - p.len()).chain(p.iter().copied()).collect())
            .collect();
        let mut out = vec![Vec::new(); prompts.len()];
        let mut done = vec![false; prompts.len()];
        // Generation stops where the context ends, whatever the budget.
        for _ in 0..opts.max_new_tokens.min(context - longest) {
            if done.iter().all(|&d| d) {
                break;
            }
            let batch = Batch::from_sequences(&input, pad, self.device())?;
            let logits = self.forward_cached(&batch, &capture, &mut cache)?.logits()?.to_dtype(DType::F32)?;
            check_finite(&logits, "the next-token logits")?;
            for (i, processor) in processors.iter_mut().enumerate() {
                if done[i] {
                    input[i] = vec![pad];
                    continue;
                }
                let next = processor.sample(&logits.get(i)?)?;
                if self.eos_ids().contains(&next) {
                    done[i] = true;
                } else {
                    out[i].push(next);
                }
                input[i] = vec![next];
            }
        }
        Ok(out)
    }

    /// Renders `messages` with the chat template, generates, and decodes the reply.
    pub fn chat(&self, messages: &[Message], opts: &GenerateOptions) -> Result<String> {
        Ok(self.chat_batch(&[messages.to_vec()], opts)?.remove(0))
    }

    /// [`Model::chat`] for several conversations at once ([`Model::generate_batch`]).
    pub fn chat_batch(&self, conversations: &[Vec<Message>], opts: &GenerateOptions) -> Result<Vec<String>> {
        let prompts =
            conversations.iter().map(|m| self.tokenizer().encode_chat(m, true)).collect::<Result<Vec<_>>>()?;
        self.generate_batch(&prompts, opts)?.iter().map(|ids| self.tokenizer().decode(ids)).collect()
    }
}

/// An error naming `what` when `t` holds a NaN or an infinity: a broken checkpoint or config
/// (e.g. NaN weights) must not pass for an empty answer.
pub(crate) fn check_finite(t: &candle_core::Tensor, what: &str) -> Result<()> {
    let total = t.to_dtype(DType::F32)?.abs()?.sum_all()?.to_scalar::<f32>()?;
    if total.is_finite() {
        return Ok(());
    }
    Err(Error::invalid(
        "model output",
        format!(
            "{what} are not finite (NaN or infinite): the weights or config.json hold a value that breaks the \
             model; check the checkpoint and rms_norm_eps / rope_theta"
        ),
    ))
}
