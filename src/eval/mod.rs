//! Evaluation: harmfulness as the refusal rate on harmful requests (and on their harmless
//! twins, which a good model should answer), and task skill as exact-match accuracy.

mod refusal;

pub use refusal::{
    off_topic, parse_refusal_csv, pyrit_refusal_labels, validate_detector, validate_refusal_set, DetectorValidation,
    LabelledResponse, RefusalDetector, RefusalValidation, DEFAULT_REFUSAL_PATTERNS, PYRIT_REFUSAL_SETS,
};

use crate::data::Record;
use crate::error::Result;
use crate::model::{GenerateOptions, Model};
use serde::{Deserialize, Serialize};

/// Lower-cases and keeps only letters, digits and single spaces, for exact-match scoring.
///
/// ```
/// assert_eq!(secure_tuning::eval::normalize_answer(" Sure!  12, 3. "), "sure 12 3");
/// ```
pub fn normalize_answer(s: &str) -> String {
    s.to_lowercase()
        .chars()
        .map(|c| if c.is_alphanumeric() || c == '\'' { c } else { ' ' })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Refusal count on a set of prompts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RefusalStats {
    /// Prompts evaluated.
    pub n: usize,
    /// Responses detected as refusals.
    pub refused: usize,
    /// `refused / n`.
    pub refusal_rate: f64,
}

/// Exact-match accuracy on a set of tasks.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TaskStats {
    /// Items evaluated.
    pub n: usize,
    /// Exactly matching answers (after [`normalize_answer`]).
    pub correct: usize,
    /// `correct / n`.
    pub accuracy: f64,
}

/// One generated response, kept for inspection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// The user message.
    pub prompt: String,
    /// What the model said.
    pub response: String,
    /// Refused (harmful/harmless sets) or correct (tasks).
    pub flag: bool,
}

/// Evaluation of one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Refusals on harmful requests (higher is safer).
    pub harmful: Option<RefusalStats>,
    /// Refusals on harmless requests (lower is better).
    pub harmless: Option<RefusalStats>,
    /// Task accuracy.
    pub tasks: Option<TaskStats>,
    /// A few responses of each set.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub samples: Vec<Sample>,
}

/// Settings for [`evaluate`].
#[derive(Debug, Clone, PartialEq)]
pub struct EvalConfig {
    /// Token budget per response (refusals show in the first few tokens).
    pub max_new_tokens: usize,
    /// The refusal detector.
    pub detector: RefusalDetector,
    /// Responses kept per set in [`EvalReport::samples`].
    pub keep_samples: usize,
    /// Prompts generated together ([`Model::generate_batch`]); the responses do not depend on it.
    pub batch_size: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig { max_new_tokens: 24, detector: RefusalDetector::default(), keep_samples: 3, batch_size: 16 }
    }
}

/// Greedy responses to `records`, `batch_size` at a time; record `i` gets at most `budget(i)`
/// new tokens. Greedy decoding is causal, so a response cut to its own budget is the one a run
/// with that budget gives.
fn respond_all(
    model: &Model,
    records: &[Record],
    batch_size: usize,
    budget: impl Fn(&Record) -> Result<usize>,
) -> Result<Vec<String>> {
    let mut responses = Vec::with_capacity(records.len());
    let context = model.config().max_position_embeddings;
    for (c, chunk) in records.chunks(batch_size.max(1)).enumerate() {
        let budgets = chunk.iter().map(&budget).collect::<Result<Vec<_>>>()?;
        let mut prompts = Vec::with_capacity(chunk.len());
        for (i, r) in chunk.iter().enumerate() {
            let ids = model.tokenizer().encode_chat(&r.messages(), true)?;
            if ids.len() >= context {
                return Err(crate::Error::invalid(
                    format!("record {}", c * batch_size.max(1) + i + 1),
                    format!(
                        "{} has {} tokens, which leaves no room to answer in the model's context of {context}; \
                         shorten or drop it",
                        crate::fs::excerpt(&r.instruction, 60),
                        ids.len()
                    ),
                ));
            }
            prompts.push(ids);
        }
        let opts = GenerateOptions { max_new_tokens: budgets.iter().copied().max().unwrap_or(0), ..Default::default() };
        for (ids, n) in model.generate_batch(&prompts, &opts)?.into_iter().zip(budgets) {
            responses.push(model.tokenizer().decode(&ids[..ids.len().min(n)])?);
        }
    }
    Ok(responses)
}

/// Generates greedily for every record and scores the three sets (any may be empty).
pub fn evaluate(
    model: &Model,
    harmful: &[Record],
    harmless: &[Record],
    tasks: &[Record],
    cfg: &EvalConfig,
) -> Result<EvalReport> {
    let mut samples = Vec::new();
    let mut refusals = |set: &[Record]| -> Result<Option<RefusalStats>> {
        if set.is_empty() {
            return Ok(None);
        }
        let mut refused = 0;
        let responses = respond_all(model, set, cfg.batch_size, |_| Ok(cfg.max_new_tokens))?;
        for (i, (r, response)) in set.iter().zip(responses).enumerate() {
            let flag = cfg.detector.is_refusal(&response);
            refused += flag as usize;
            if i < cfg.keep_samples {
                samples.push(Sample { prompt: r.user_text(), response, flag });
            }
        }
        Ok(Some(RefusalStats { n: set.len(), refused, refusal_rate: refused as f64 / set.len() as f64 }))
    };
    let harmful_stats = refusals(harmful)?;
    let harmless_stats = refusals(harmless)?;
    let tasks_stats = if tasks.is_empty() {
        None
    } else {
        let mut correct = 0;
        // Answers are short; budget by the reference length plus a margin.
        let budget = |r: &Record| Ok(model.tokenizer().encode(&r.output, false)?.len() + 4);
        let responses = respond_all(model, tasks, cfg.batch_size, budget)?;
        for (i, (r, response)) in tasks.iter().zip(responses).enumerate() {
            let flag = normalize_answer(&response) == normalize_answer(&r.output);
            correct += flag as usize;
            if i < cfg.keep_samples {
                samples.push(Sample { prompt: r.user_text(), response, flag });
            }
        }
        Some(TaskStats { n: tasks.len(), correct, accuracy: correct as f64 / tasks.len() as f64 })
    };
    Ok(EvalReport { harmful: harmful_stats, harmless: harmless_stats, tasks: tasks_stats, samples })
}

impl std::fmt::Display for EvalReport {
    /// One line: `harmful refused 95.0% (190/200), harmless refused 2.0% (4/200), tasks 88.9% (240/270)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        for (name, s) in [("harmful", &self.harmful), ("harmless", &self.harmless)] {
            if let Some(s) = s {
                parts.push(format!("{name} refused {:.1}% ({}/{})", 100.0 * s.refusal_rate, s.refused, s.n));
            }
        }
        if let Some(t) = &self.tasks {
            parts.push(format!("tasks {:.1}% ({}/{})", 100.0 * t.accuracy, t.correct, t.n));
        }
        f.write_str(&parts.join(", "))
    }
}

impl EvalReport {
    /// The rates as a table, with the kept sample responses underneath.
    pub fn html(&self) -> String {
        let mut rows = String::new();
        for (name, s) in [
            ("harmful refused (higher is safer)", &self.harmful),
            ("harmless refused (lower is better)", &self.harmless),
        ] {
            if let Some(s) = s {
                rows.push_str(&format!(
                    "<tr><td>{name}</td><td>{:.1}%</td><td>{}/{}</td></tr>",
                    100.0 * s.refusal_rate,
                    s.refused,
                    s.n
                ));
            }
        }
        if let Some(t) = &self.tasks {
            rows.push_str(&format!(
                "<tr><td>task accuracy</td><td>{:.1}%</td><td>{}/{}</td></tr>",
                100.0 * t.accuracy,
                t.correct,
                t.n
            ));
        }
        let samples: String = self
            .samples
            .iter()
            .map(|s| {
                format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                    if s.flag { "yes" } else { "no" },
                    crate::display::escape_html(&s.prompt),
                    crate::display::escape_html(&s.response)
                )
            })
            .collect();
        let samples = if samples.is_empty() {
            String::new()
        } else {
            format!("<table><tr><th>refused / correct</th><th>prompt</th><th>response</th></tr>{samples}</table>")
        };
        format!("<div><table>{rows}</table>{samples}</div>")
    }

    /// Inline display in evcxr.
    pub fn evcxr_display(&self) {
        crate::display::emit(&self.html(), &self.to_string())
    }
}
