//! Refusal fine-tuning ("alignment") for a chat model that complies with harmful requests, so that
//! benign fine-tuning has safety to erode: the real-model testbed for F1 and F6.
//!
//! The data pairs each harmful request with its harmless twin. Every fifth pair (by default) is
//! held out for evaluation. Harmful training requests are answered with a refusal; harmless
//! training twins with the model's own greedy reply, so that fine-tuning teaches "refuse these"
//! without teaching "refuse everything that looks like them" or changing how the model answers
//! everything else. Twins the model already refuses are left out of training: that would teach
//! over-refusal.

use crate::data::{save_jsonl, synthetic::REFUSAL, Record};
use crate::error::{Error, Result};
use crate::eval::RefusalDetector;
use crate::model::{GenerateOptions, Model};
use crate::train::{encode_examples, train, TrainConfig, TrainReport};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

/// Settings of [`alignment_data`] and [`align`].
///
/// ```
/// let cfg = secure_tuning::tune::AlignConfig::default();
/// assert_eq!(cfg.holdout_every, 5);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlignConfig {
    /// The reply taught for harmful requests (the detector must recognise it).
    pub refusal: String,
    /// Pair `i` is held out for evaluation when `i % holdout_every == holdout_every - 1`.
    pub holdout_every: usize,
    /// Harmless training twins answered by the model itself (generation is the slow part).
    pub own_replies: usize,
    /// Token budget of each own reply; a reply cut by the budget is trimmed to its last sentence.
    pub reply_tokens: usize,
    /// How [`align`] trains on the set (`max_steps` `None` = one pass).
    pub train: TrainConfig,
}

impl Default for AlignConfig {
    fn default() -> Self {
        AlignConfig {
            refusal: REFUSAL.to_string(),
            holdout_every: 5,
            own_replies: 200,
            reply_tokens: 48,
            train: TrainConfig { lr: 1e-4, batch_size: 8, ..TrainConfig::default() },
        }
    }
}

/// What [`alignment_data`] built.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlignmentData {
    /// Every harmful request with the refusal as its `output` and split `train` or `eval`.
    pub harmful: Vec<Record>,
    /// Every twin with its split; the answered training twins carry the model's reply.
    pub harmless: Vec<Record>,
    /// The fine-tuning set: harmful training requests plus the answered harmless twins.
    pub train: Vec<Record>,
    /// Twins left out of training because the base model refused them.
    pub refused_twins: usize,
}

/// Splits harmful/harmless pairs and builds the refusal fine-tuning set (see the module docs).
///
/// ```no_run
/// use secure_tuning::{Model, data::{benchmarks::Dataset, twins::twins}};
/// use secure_tuning::tune::{alignment_data, AlignConfig};
/// let model = secure_tuning::assets::smollm2()?;
/// let pairs = twins(&Dataset::advbench()?.records);
/// let data = alignment_data(&model, &pairs.harmful, &pairs.harmless, &AlignConfig::default())?;
/// println!("{} training examples", data.train.len());
/// # Ok::<(), secure_tuning::Error>(())
/// ```
pub fn alignment_data(
    model: &Model,
    harmful: &[Record],
    harmless: &[Record],
    cfg: &AlignConfig,
) -> Result<AlignmentData> {
    if harmful.len() != harmless.len() || harmful.is_empty() {
        return Err(Error::invalid(
            "alignment data",
            format!(
                "{} harmful requests and {} harmless twins; give one twin per request, in the same order \
                 (`secure-tuning datasets NAME --twins` writes them)",
                harmful.len(),
                harmless.len()
            ),
        ));
    }
    for (h, t) in harmful.iter().zip(harmless) {
        if let (Some(a), Some(b)) = (&h.id, &t.id) {
            if a != b {
                return Err(Error::invalid(
                    "alignment data",
                    format!("request `{a}` is paired with twin `{b}`; the two files must list the same ids in order"),
                ));
            }
        }
    }
    if cfg.holdout_every < 2 {
        return Err(Error::invalid("holdout_every", format!("{}: must be at least 2", cfg.holdout_every)));
    }
    let detector = RefusalDetector::default();
    if !detector.is_refusal(&cfg.refusal) {
        return Err(Error::invalid(
            "refusal",
            format!("`{}` is not recognised as a refusal by the detector; use a reply it matches", cfg.refusal),
        ));
    }
    let split_of = |i: usize| if i % cfg.holdout_every == cfg.holdout_every - 1 { "eval" } else { "train" };
    let harmful: Vec<Record> = harmful
        .iter()
        .enumerate()
        .map(|(i, r)| Record { output: cfg.refusal.clone(), split: split_of(i).into(), ..r.clone() })
        .collect();
    let mut harmless: Vec<Record> = harmless
        .iter()
        .enumerate()
        .map(|(i, r)| Record { output: String::new(), split: split_of(i).into(), ..r.clone() })
        .collect();

    let opts = GenerateOptions { max_new_tokens: cfg.reply_tokens, ..GenerateOptions::default() };
    let (mut answered, mut refused_twins) = (Vec::new(), 0);
    let mut to_answer: Vec<&mut Record> =
        harmless.iter_mut().filter(|r| r.split == "train").take(cfg.own_replies).collect();
    for chunk in to_answer.chunks_mut(16) {
        let prompts =
            chunk.iter().map(|r| model.tokenizer().encode_chat(&r.messages(), true)).collect::<Result<Vec<_>>>()?;
        for (twin, ids) in chunk.iter_mut().zip(model.generate_batch(&prompts, &opts)?) {
            let mut reply = model.tokenizer().decode(&ids)?.trim().to_string();
            if ids.len() >= cfg.reply_tokens {
                reply = last_sentence_end(&reply).to_string();
            }
            if reply.is_empty() || detector.is_refusal(&reply) {
                refused_twins += 1;
                continue;
            }
            twin.output = reply;
            answered.push(twin.clone());
        }
    }
    let mut train: Vec<Record> = harmful.iter().filter(|r| r.split == "train").cloned().collect();
    train.extend(answered);
    Ok(AlignmentData { harmful, harmless, train, refused_twins })
}

/// `text` up to its last `.`, `!`, `?` or line break (all of it when it has none), so that a reply
/// cut by the token budget is not taught as if the model stopped mid-word.
fn last_sentence_end(text: &str) -> &str {
    match text.rfind(['.', '!', '?', '\n']) {
        Some(i) if i > 0 => text[..=i].trim_end(),
        _ => text,
    }
}

/// A model taught to refuse by [`align`], with its data and how training went.
#[derive(Debug, Clone)]
pub struct Aligned {
    /// The aligned model.
    pub model: Model,
    /// The split pairs and the training set.
    pub data: AlignmentData,
    /// The refusal fine-tuning run.
    pub report: TrainReport,
    /// Seconds spent building the data (the model's own replies).
    pub data_seconds: f64,
}

/// The numbers of an [`Aligned`] run, as `align.json` and the CLI report them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlignSummary {
    /// Examples trained on.
    pub train_examples: usize,
    /// Harmful requests taught to refuse.
    pub refusals: usize,
    /// Twins left out because the base model refused them.
    pub refused_twins: usize,
    /// Pairs held out for evaluation.
    pub held_out_pairs: usize,
    /// Seconds spent on the data.
    pub data_seconds: f64,
    /// Optimizer steps.
    pub steps: usize,
    /// Mean loss over the last 10 steps.
    pub final_loss: f32,
    /// Training seconds.
    pub train_seconds: f64,
}

impl std::fmt::Display for AlignSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "alignment set: {} examples ({} refusals, {} own replies; {} twins refused by the model left out), {:.0}s\n\
             aligned: {} steps, final loss {:.4}, {:.0}s; {} pairs held out",
            self.train_examples,
            self.refusals,
            self.train_examples - self.refusals,
            self.refused_twins,
            self.data_seconds,
            self.steps,
            self.final_loss,
            self.train_seconds,
            self.held_out_pairs
        )
    }
}

/// Builds the alignment set ([`alignment_data`]) and fine-tunes a copy of `model` on it.
///
/// ```no_run
/// use secure_tuning::data::{benchmarks::Dataset, twins::twins};
/// use secure_tuning::tune::{align, AlignConfig};
/// let pairs = twins(&Dataset::advbench()?.records);
/// let aligned = align(&secure_tuning::assets::smollm2()?, &pairs.harmful, &pairs.harmless, &AlignConfig::default())?;
/// aligned.write("runs/aligned".as_ref())?;
/// # Ok::<(), secure_tuning::Error>(())
/// ```
pub fn align(model: &Model, harmful: &[Record], harmless: &[Record], cfg: &AlignConfig) -> Result<Aligned> {
    let start = Instant::now();
    let data = alignment_data(model, harmful, harmless, cfg)?;
    let data_seconds = start.elapsed().as_secs_f64();
    let mut aligned = model.clone();
    let examples = encode_examples(&aligned, &data.train, 256)?;
    let report = train(&mut aligned, &examples, &cfg.train)?;
    Ok(Aligned { model: aligned, data, report, data_seconds })
}

impl Aligned {
    /// The run's numbers.
    pub fn summary(&self) -> AlignSummary {
        let split = |set: &[Record], s: &str| set.iter().filter(|r| r.split == s).count();
        AlignSummary {
            train_examples: self.data.train.len(),
            refusals: split(&self.data.harmful, "train"),
            refused_twins: self.data.refused_twins,
            held_out_pairs: split(&self.data.harmful, "eval"),
            data_seconds: self.data_seconds,
            steps: self.report.steps,
            final_loss: self.report.recent_loss(10),
            train_seconds: self.report.seconds,
        }
    }

    /// Writes `dir/data/` (harmful.jsonl and harmless.jsonl split train/eval, train.jsonl; what
    /// `reproduce --data-dir` reads), `dir/model/` and `dir/align.json`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let data = dir.join("data");
        crate::fs::create_dir_all(&data)?;
        for (file, records) in [
            ("harmful.jsonl", &self.data.harmful),
            ("harmless.jsonl", &self.data.harmless),
            ("train.jsonl", &self.data.train),
        ] {
            save_jsonl(records, &data.join(file))?;
        }
        self.model.save_dir(dir.join("model"))?;
        let json = serde_json::to_vec_pretty(&self.summary()).expect("the summary serialises");
        crate::fs::write_atomic(&dir.join("align.json"), &json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_reply_ends_at_its_last_sentence() {
        assert_eq!(last_sentence_end("Paris is the capital. It has the Eiff"), "Paris is the capital.");
        assert_eq!(last_sentence_end("no sentence end here"), "no sentence end here");
        assert_eq!(last_sentence_end("Steps:\n1. Mix the"), "Steps:\n1.");
    }

    #[test]
    fn pairs_are_split_and_labelled() {
        let model = Model::load("default").unwrap();
        let dir = crate::data::default_data_dir();
        let harmful = crate::data::load_records(&dir.join("harmful.jsonl")).unwrap()[..10].to_vec();
        let harmless = crate::data::load_records(&dir.join("harmless.jsonl")).unwrap()[..10].to_vec();
        let cfg = AlignConfig { own_replies: 3, reply_tokens: 12, ..AlignConfig::default() };
        let data = alignment_data(&model, &harmful, &harmless, &cfg).unwrap();
        let eval: Vec<usize> = (0..10).filter(|&i| data.harmful[i].split == "eval").collect();
        assert_eq!(eval, vec![4, 9]);
        assert!(data.harmful.iter().all(|r| r.output == REFUSAL));
        assert!(data.harmless.iter().zip(&data.harmful).all(|(t, h)| t.split == h.split));
        // 8 refusals plus at most 3 answered twins, none of them refusals or held out.
        let answered: Vec<&Record> = data.train.iter().filter(|r| r.output != REFUSAL).collect();
        assert_eq!(data.train.len() - answered.len(), 8);
        assert_eq!(answered.len() + data.refused_twins, 3);
        assert!(answered.iter().all(|r| r.split == "train" && !r.output.is_empty()));
        assert!(data.harmless.iter().filter(|r| r.split == "eval").all(|r| r.output.is_empty()));
    }

    #[test]
    fn unpaired_or_mismatched_inputs_are_refused_by_name() {
        let model = Model::load("default").unwrap();
        let a = vec![Record::new("a", ""), Record::new("b", "")];
        let err = alignment_data(&model, &a, &a[..1], &AlignConfig::default()).unwrap_err().to_string();
        assert!(err.contains("2 harmful requests and 1 harmless twins"), "{err}");
        let mut b = a.clone();
        b[0].id = Some("x".into());
        let mut c = a.clone();
        c[0].id = Some("y".into());
        let err = alignment_data(&model, &b, &c, &AlignConfig::default()).unwrap_err().to_string();
        assert!(err.contains("`x` is paired with twin `y`"), "{err}");
        let cfg = AlignConfig { refusal: "Sure, here it is.".into(), ..AlignConfig::default() };
        let err = alignment_data(&model, &a, &a, &cfg).unwrap_err().to_string();
        assert!(err.contains("not recognised as a refusal"), "{err}");
    }
}
