//! Text generation with a KV cache: greedy or seeded temperature / top-p sampling, stopping at
//! an EOS token or a token budget.

use super::activations::{Capture, LogitsMode};
use super::chat::Message;
use super::decoder::{Batch, KvCache};
use super::Model;
use crate::error::{Error, Result};
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
        if prompt.is_empty() {
            return Err(Error::invalid("prompt", "no tokens; the prompt text is empty"));
        }
        let sampling = match opts.sampling {
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
        };
        let mut processor = LogitsProcessor::from_sampling(opts.seed, sampling);
        let capture = Capture::logits().with_logits(LogitsMode::Last);
        let mut cache = KvCache::new();
        let mut input = prompt.to_vec();
        let mut out = Vec::new();
        while out.len() < opts.max_new_tokens {
            let batch = Batch::single(&input, self.device())?;
            let logits = self.forward_cached(&batch, &capture, &mut cache)?.logits()?.squeeze(0)?;
            let next = processor.sample(&logits.to_dtype(candle_core::DType::F32)?)?;
            if self.eos_ids().contains(&next) {
                break;
            }
            out.push(next);
            input = vec![next];
        }
        Ok(out)
    }

    /// Renders `messages` with the chat template, generates, and decodes the reply.
    pub fn chat(&self, messages: &[Message], opts: &GenerateOptions) -> Result<String> {
        let prompt = self.tokenizer().encode_chat(messages, true)?;
        let ids = self.generate(&prompt, opts)?;
        self.tokenizer().decode(&ids)
    }
}
