//! Module robustness (DESIGN.md section 6): how much changing one module group (a module kind
//! in one layer, or in a few adjacent layers for deep models) disturbs the model's safety,
//! per unit of relative weight change.
//!
//! Every mode changes one group of a copy of the model, reads a *damage* on held-out harmful
//! prompts, and divides it by the relative size of the change `||dW|| / ||W||`. The result is a
//! **sensitivity**: high = fragile, low = robust. Dividing by the change compares groups per unit
//! of change; a frozen probe's accuracy would saturate instead (it falls to chance as soon as any
//! MLP group is trained), which is why accuracy drops are never ranked here.
//!
//! | mode | change | damage |
//! |---|---|---|
//! | [`Mode::Perturb`] | relative Gaussian noise `eps * ||W|| * N / ||N||` | [`Measure`] |
//! | [`Mode::Update`] (default) | a few AdamW steps on benign IFT data, only this group trainable | [`Measure`] |
//! | [`Mode::Adversarial`] | gradient steps pushing harmful prompts across the frozen probe | probe accuracy drop reached, as a share of the target |
//!
//! The default measure, [`Measure::RefusalLogProb`], is the drop of the log-probability (nats per
//! token) the model gives its *own* refusals to the harmful prompts; [`Measure::FeatureDrift`]
//! (cosine drift of the harmful prompts' features at the proxy layer) is a cheap second opinion;
//! [`Measure::ProbeMargin`] (drop of the frozen probe's logit on harmful prompts) is the paper's
//! classifier proxy, kept for comparison: in our prototype it ranked opposite to the others.

use crate::data::Record;
use crate::display::{emit, escape_html, heatmap, Heatmap};
use crate::error::{Error, Result};
use crate::eval::RefusalDetector;
use crate::model::{GenerateOptions, Model, ModuleId, ModuleKind, ModuleSet};
use crate::probe::{cosine_drift, harmful_share, layer_features, prompt_ids, Probe, ProbeReport};
use crate::rng::Rng;
use crate::tune::{encode_examples, response_loss, train, Example, LrGroup, TrainConfig};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// How a group is changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Relative Gaussian noise on the group's weights.
    Perturb,
    /// Train only the group for a few steps on benign data (what fine-tuning does).
    Update,
    /// Gradient steps on the group that push harmful prompts across the frozen probe.
    Adversarial,
}

/// What damage is read after a change (for [`Mode::Perturb`] and [`Mode::Update`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Measure {
    /// Drop of the mean log-probability per token of the base model's own refusals.
    RefusalLogProb,
    /// Mean cosine distance of the harmful prompts' features from the base model's, at the proxy layer.
    FeatureDrift,
    /// Drop of the frozen proxy probe's mean logit on harmful prompts.
    ProbeMargin,
}

/// What a group's damage is divided by, so that groups of different sizes and learning speeds
/// can be ranked against each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Normalize {
    /// The relative weight change `||dW|| / ||W||`: safety damage per unit of change (the default).
    #[default]
    WeightChange,
    /// Update mode only: the gain in mean log-probability of benign responses, i.e. safety damage
    /// per unit of task progress. A group that learns the task cheaply in safety ranks robust; one
    /// that barely learns it ranks fragile, however little it damages.
    TaskGain,
}

/// `Display` and `FromStr` from one table of names, so the CLI's spelling, the serde spelling
/// and the error's list of choices cannot drift apart.
macro_rules! named_choices {
    ($ty:ident, $what:literal, { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(match self { $($ty::$variant => $name),+ })
            }
        }

        impl std::str::FromStr for $ty {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                match s {
                    $($name => Ok($ty::$variant),)+
                    _ => Err(Error::invalid($what, format!("`{s}`; use one of: {}", [$($name),+].join(", ")))),
                }
            }
        }
    };
}

named_choices!(Mode, "robustness mode", { Perturb => "perturb", Update => "update", Adversarial => "adversarial" });
named_choices!(Measure, "robustness measure", {
    RefusalLogProb => "refusal-log-prob",
    FeatureDrift => "feature-drift",
    ProbeMargin => "probe-margin",
});
named_choices!(Normalize, "robustness normalisation", { WeightChange => "weight-change", TaskGain => "task-gain" });

/// Settings of [`Robustness::measure`]. The defaults are ours (the paper's are not public):
/// strong enough that the most fragile groups of the default model lose well over a nat of
/// refusal log-probability, which is what makes rankings stable across seeds.
///
/// ```
/// use secure_tuning::robustness::{Mode, RobustnessConfig};
/// let cfg = RobustnessConfig { mode: Mode::Perturb, seeds: vec![0, 1, 2], ..Default::default() };
/// assert_eq!(cfg.kinds.len(), 7);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RobustnessConfig {
    /// How groups are changed.
    pub mode: Mode,
    /// What is read after the change (Perturb and Update).
    pub measure: Measure,
    /// What the damage is divided by.
    #[serde(default)]
    pub normalize: Normalize,
    /// One measurement per seed (noise, data order); scores are the mean.
    pub seeds: Vec<u64>,
    /// Module kinds to score (rows of the matrix).
    pub kinds: Vec<ModuleKind>,
    /// Adjacent layers per group; `None` = 1 up to 16 layers, else enough for 16 columns.
    pub layers_per_group: Option<usize>,
    /// Perturb: relative noise norm.
    pub epsilon: f64,
    /// Update / Adversarial: optimizer steps.
    pub steps: usize,
    /// Update / Adversarial: AdamW learning rate (constant).
    pub lr: f64,
    /// Update: benign examples per step.
    pub batch_size: usize,
    /// Harmful prompts read (evenly spaced over the probe data's harmful prompts).
    pub harmful_limit: usize,
    /// Tokens of the base model's refusal kept as the reference.
    pub reference_tokens: usize,
    /// Adversarial: the probe-accuracy drop (on harmful prompts) to reach.
    pub target_drop: f64,
    /// Seconds between progress lines; `None` = silent.
    pub log_every_secs: Option<f64>,
}

impl Default for RobustnessConfig {
    fn default() -> Self {
        RobustnessConfig {
            mode: Mode::Update,
            measure: Measure::RefusalLogProb,
            normalize: Normalize::WeightChange,
            seeds: vec![0],
            kinds: ModuleKind::ALL.to_vec(),
            layers_per_group: None,
            epsilon: 1.0,
            steps: 16,
            lr: 5e-3,
            batch_size: 16,
            harmful_limit: 48,
            reference_tokens: 12,
            target_drop: 0.5,
            log_every_secs: Some(5.0),
        }
    }
}

/// One group's measurement with one seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawScore {
    /// The seed.
    pub seed: u64,
    /// Row (module kind).
    pub kind: ModuleKind,
    /// Column (layer group index).
    pub group: usize,
    /// The damage read after the change.
    pub damage: f64,
    /// `||dW|| / ||W||` over the group's parameters.
    pub rel_change: f64,
    /// Update mode: gain in mean log-probability per token of held-out benign responses (0 otherwise).
    #[serde(default)]
    pub task_gain: f64,
    /// `damage / rel_change`, or `damage / task_gain` with [`Normalize::TaskGain`].
    pub sensitivity: f64,
}

/// The [module kind x layer group] sensitivity matrix (high = fragile, low = robust).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Robustness {
    /// The model's one-line description.
    pub model: String,
    /// Number of decoder layers of the model.
    pub num_layers: usize,
    /// Rows.
    pub kinds: Vec<ModuleKind>,
    /// Columns: layer ranges `[start, end)`.
    pub layer_groups: Vec<(usize, usize)>,
    /// Mean sensitivity over seeds, `[kind][group]`.
    pub scores: Vec<Vec<f64>>,
    /// Every measurement.
    pub raw: Vec<RawScore>,
    /// The settings used.
    pub config: RobustnessConfig,
    /// `hidden_states` index of the proxy probe.
    pub proxy_layer: usize,
    /// Wall seconds of the measurement.
    pub seconds: f64,
}

impl Robustness {
    /// Measures every (kind, layer group) of `model` as `config` says. The harmful prompts and
    /// the frozen proxy probe come from `probe` ([`ProbeReport::proxy`]); `benign` is the IFT
    /// data the Update mode trains on.
    ///
    /// ```no_run
    /// use secure_tuning::{Model, data::{load_records, split}, probe::*, robustness::*};
    /// let model = Model::load("default")?;
    /// let probe = probe_all(&model, &ProbeData::default_twins()?)?;
    /// let benign = split(&load_records("data/ift_general.jsonl".as_ref())?, "train");
    /// let rob = Robustness::measure(&model, &probe, &benign, &RobustnessConfig::default())?;
    /// std::fs::write("heatmap.svg", rob.heatmap())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn measure(model: &Model, probe: &ProbeReport, benign: &[Record], config: &RobustnessConfig) -> Result<Self> {
        let start = Instant::now();
        let bench = Bench::new(model, probe, benign, config)?;
        let layer_groups = layer_groups(model.config().num_layers, config.layers_per_group);
        let cells: Vec<(usize, usize)> =
            (0..config.kinds.len()).flat_map(|k| (0..layer_groups.len()).map(move |g| (k, g))).collect();
        let total = cells.len() * config.seeds.len();
        let mut raw = Vec::with_capacity(total);
        let mut last_log = Instant::now();
        for &seed in &config.seeds {
            for &(k, g) in &cells {
                let kind = config.kinds[k];
                let set = group_set(kind, layer_groups[g]);
                let Change { damage, rel_change, task_gain } = bench.change_and_read(&set, seed)?;
                let sensitivity = match config.normalize {
                    Normalize::WeightChange => damage / rel_change,
                    // A group that does not learn at all is as fragile as it gets for ML-LR.
                    Normalize::TaskGain => damage.max(0.0) / task_gain.max(TASK_GAIN_FLOOR),
                };
                raw.push(RawScore { seed, kind, group: g, damage, rel_change, task_gain, sensitivity });
                if let Some(every) = config.log_every_secs {
                    if last_log.elapsed().as_secs_f64() >= every || raw.len() == total {
                        last_log = Instant::now();
                        println!(
                            "robustness {}/{} ({} {}) damage {damage:.3} rel change {rel_change:.4} \
                             task gain {task_gain:.3} {:.0}s",
                            raw.len(),
                            total,
                            kind,
                            group_label(layer_groups[g]),
                            start.elapsed().as_secs_f64()
                        );
                    }
                }
            }
        }
        let mut scores = vec![vec![0.0; layer_groups.len()]; config.kinds.len()];
        for r in &raw {
            let k = config.kinds.iter().position(|&x| x == r.kind).unwrap_or(0);
            scores[k][r.group] += r.sensitivity / config.seeds.len() as f64;
        }
        Ok(Robustness {
            model: model.to_string(),
            num_layers: model.config().num_layers,
            kinds: config.kinds.clone(),
            layer_groups,
            scores,
            raw,
            config: config.clone(),
            proxy_layer: bench.probe.layer,
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// The sensitivity of `kind` in the group that holds `layer`.
    pub fn score(&self, kind: ModuleKind, layer: usize) -> Option<f64> {
        let k = self.kinds.iter().position(|&x| x == kind)?;
        let g = self.layer_groups.iter().position(|&(a, b)| (a..b).contains(&layer))?;
        Some(self.scores[k][g])
    }

    /// The groups as module sets with their mean sensitivity, most robust first.
    pub fn ranking(&self) -> Vec<(ModuleSet, f64)> {
        let mut out: Vec<(ModuleSet, f64)> = Vec::new();
        for (k, &kind) in self.kinds.iter().enumerate() {
            for (g, &range) in self.layer_groups.iter().enumerate() {
                out.push((group_set(kind, range), self.scores[k][g]));
            }
        }
        out.sort_by(|a, b| a.1.total_cmp(&b.1));
        out
    }

    /// The per-seed score vectors (cells in row-major order).
    pub fn per_seed(&self) -> Vec<(u64, Vec<f64>)> {
        let cols = self.layer_groups.len();
        self.config
            .seeds
            .iter()
            .map(|&seed| {
                let mut v = vec![f64::NAN; self.kinds.len() * cols];
                for r in self.raw.iter().filter(|r| r.seed == seed) {
                    let k = self.kinds.iter().position(|&x| x == r.kind).unwrap_or(0);
                    v[k * cols + r.group] = r.sensitivity;
                }
                (seed, v)
            })
            .collect()
    }

    /// Mean pairwise Spearman rank correlation of the groups' scores between seeds; `None` with
    /// one seed. Near 1 = a stable ranking; near 0 = noise (strengthen the change).
    pub fn seed_agreement(&self) -> Option<f64> {
        let seeds = self.per_seed();
        let mut sum = 0.0;
        let mut n = 0;
        for i in 0..seeds.len() {
            for j in i + 1..seeds.len() {
                sum += spearman(&seeds[i].1, &seeds[j].1);
                n += 1;
            }
        }
        (n > 0).then(|| sum / n as f64)
    }

    /// Spearman rank correlation of this matrix with another of the same shape (e.g. another
    /// seed or mode).
    pub fn agreement_with(&self, other: &Robustness) -> f64 {
        spearman(&self.scores.concat(), &other.scores.concat())
    }

    /// The heatmap (kinds x layer groups) as SVG; every cell has its value in a tooltip.
    pub fn heatmap(&self) -> String {
        heatmap(&Heatmap {
            title: format!("Module sensitivity ({} mode, {}); low = robust", self.config.mode, self.damage_name()),
            rows: self.kinds.iter().map(|k| k.short().to_string()).collect(),
            cols: self.layer_groups.iter().map(|&g| group_label(g)).collect(),
            row_title: "module".into(),
            col_title: "layer".into(),
            values: self.scores.clone(),
            value_name: "sensitivity".into(),
        })
    }

    fn damage_name(&self) -> String {
        match self.config.mode {
            Mode::Adversarial => "probe crossing".to_string(),
            _ if self.config.normalize == Normalize::TaskGain => format!("{} per task gain", self.config.measure),
            _ => self.config.measure.to_string(),
        }
    }

    /// Heatmap plus a table, as one HTML block.
    pub fn html(&self) -> String {
        let head: String = self.layer_groups.iter().map(|&g| format!("<th>{}</th>", group_label(g))).collect();
        let rows: String = self
            .kinds
            .iter()
            .zip(&self.scores)
            .map(|(k, row)| {
                let cells: String = row.iter().map(|v| format!("<td>{v:.3}</td>")).collect();
                format!("<tr><th>{}</th>{cells}</tr>", k.short())
            })
            .collect();
        let stability =
            self.seed_agreement().map_or(String::new(), |s| format!(" &middot; seed agreement (Spearman) {s:.2}"));
        format!(
            "<div>{}<p>{} &middot; {} mode, {} &middot; {} seed(s), {:.0}s{stability}</p>\
             <table><tr><th>module</th>{head}</tr>{rows}</table></div>",
            self.heatmap(),
            escape_html(&self.model),
            self.config.mode,
            escape_html(&self.damage_name()),
            self.config.seeds.len(),
            self.seconds
        )
    }

    /// Inline display in evcxr: heatmap + table, with a text summary.
    pub fn evcxr_display(&self) {
        emit(&self.html(), &self.to_string())
    }
}

impl std::fmt::Display for Robustness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "sensitivity ({} mode, {}; low = robust)", self.config.mode, self.damage_name())?;
        write!(f, "{:>6}", "")?;
        for &g in &self.layer_groups {
            write!(f, " {:>8}", group_label(g))?;
        }
        for (k, row) in self.kinds.iter().zip(&self.scores) {
            write!(f, "\n{:>6}", k.short())?;
            for v in row {
                write!(f, " {v:>8.3}")?;
            }
        }
        if let Some(s) = self.seed_agreement() {
            write!(f, "\nseed agreement (Spearman): {s:.2}")?;
        }
        Ok(())
    }
}

/// Layer ranges `[start, end)` of the matrix columns.
pub fn layer_groups(num_layers: usize, per_group: Option<usize>) -> Vec<(usize, usize)> {
    let per = per_group.unwrap_or(if num_layers <= 16 { 1 } else { num_layers.div_ceil(16) }).max(1);
    (0..num_layers).step_by(per).map(|a| (a, (a + per).min(num_layers))).collect()
}

fn group_label((a, b): (usize, usize)) -> String {
    if b == a + 1 {
        a.to_string()
    } else {
        format!("{a}-{}", b - 1)
    }
}

/// The modules of `kind` in layers `[start, end)`.
pub fn group_set(kind: ModuleKind, (a, b): (usize, usize)) -> ModuleSet {
    (a..b).map(|l| ModuleId::new(l, kind)).collect()
}

/// Spearman rank correlation (average ranks for ties; NaNs dropped pairwise).
///
/// ```
/// use secure_tuning::robustness::spearman;
/// assert!((spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]) - 1.0).abs() < 1e-12);
/// assert!((spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
/// ```
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    let (a, b): (Vec<f64>, Vec<f64>) =
        a.iter().zip(b).filter(|(x, y)| x.is_finite() && y.is_finite()).map(|(x, y)| (*x, *y)).unzip();
    let (ra, rb) = (ranks(&a), ranks(&b));
    let n = ra.len() as f64;
    if n < 2.0 {
        return f64::NAN;
    }
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        for &k in &idx[i..=j] {
            r[k] = (i + j) as f64 / 2.0;
        }
        i = j + 1;
    }
    r
}

/// What every measurement needs, computed once from the base model: the harmful prompts, the
/// base model's own refusals to them, its features at the proxy layer and the benign examples.
pub(crate) struct Bench<'a> {
    base: &'a Model,
    config: RobustnessConfig,
    pub(crate) probe: Probe,
    harmful: Vec<String>,
    refusals: Vec<Example>,
    base_logprob: f64,
    base_features: Tensor,
    base_logit: f64,
    base_probe_acc: f64,
    benign: Vec<Example>,
    /// Held-out benign examples whose log-probability gain is the task progress.
    benign_heldout: Vec<Example>,
    base_benign_logprob: f64,
}

/// What one change of a group did.
pub(crate) struct Change {
    pub(crate) damage: f64,
    pub(crate) rel_change: f64,
    pub(crate) task_gain: f64,
}

/// Task gains below this (nats per token) count as no progress: the division stays finite and
/// such groups rank most fragile under [`Normalize::TaskGain`].
const TASK_GAIN_FLOOR: f64 = 1e-3;

/// Benign examples held out of the update mode's training for reading its task progress.
const HELDOUT_BENIGN: usize = 64;

impl<'a> Bench<'a> {
    pub(crate) fn new(
        base: &'a Model,
        probe: &ProbeReport,
        benign: &[Record],
        config: &RobustnessConfig,
    ) -> Result<Self> {
        validate(config, benign)?;
        let all = probe.data.harmful();
        let n = config.harmful_limit.min(all.len()).max(1);
        let harmful: Vec<String> = (0..n).map(|i| all[i * all.len() / n].clone()).collect();
        let proxy = probe.proxy().clone();
        let base_features = layer_features(base, &harmful, proxy.layer, 32)?;
        let logits = proxy.logits(&base_features)?;
        let base_probe_acc = harmful_share(&logits);
        let base_logit = mean(&logits);
        let refusals = if config.mode != Mode::Adversarial && config.measure == Measure::RefusalLogProb {
            own_refusals(base, &harmful, config.reference_tokens)?
        } else {
            vec![]
        };
        let base_logprob = if refusals.is_empty() { 0.0 } else { mean_logprob(base, &refusals)? };
        let mut benign = if config.mode == Mode::Update { encode_examples(base, benign, 256)? } else { vec![] };
        // The last examples are held out for the task-progress reading (they are never trained on).
        let benign_heldout = if config.normalize == Normalize::TaskGain && benign.len() > 2 * HELDOUT_BENIGN {
            benign.split_off(benign.len() - HELDOUT_BENIGN)
        } else {
            vec![]
        };
        if config.normalize == Normalize::TaskGain && benign_heldout.is_empty() {
            return Err(Error::invalid(
                "benign data",
                format!(
                    "task-gain normalisation holds out {HELDOUT_BENIGN} benign examples and trains on the rest; \
                     give more than {} (got {})",
                    2 * HELDOUT_BENIGN,
                    benign.len()
                ),
            ));
        }
        let base_benign_logprob = if benign_heldout.is_empty() { 0.0 } else { mean_logprob(base, &benign_heldout)? };
        Ok(Bench {
            base,
            config: config.clone(),
            probe: proxy,
            harmful,
            refusals,
            base_logprob,
            base_features,
            base_logit,
            base_probe_acc,
            benign,
            benign_heldout,
            base_benign_logprob,
        })
    }

    /// Changes `set` on a copy of the base model with `seed` and reads what the change did.
    pub(crate) fn change_and_read(&self, set: &ModuleSet, seed: u64) -> Result<Change> {
        let names = self.base.param_names(set);
        if names.is_empty() {
            return Err(Error::invalid("module group", format!("{set:?} has no parameters in this model")));
        }
        match self.config.mode {
            Mode::Perturb => {
                let mut model = self.base.clone();
                let mut rng = Rng::new(seed ^ hash(&names));
                let mut new = Vec::new();
                for name in &names {
                    let w = &self.base.weights()[name];
                    let noise: Vec<f32> = (0..w.elem_count()).map(|_| rng.normal() as f32).collect();
                    let noise = Tensor::from_vec(noise, w.dims(), &Device::Cpu)?.to_device(w.device())?;
                    let scale = self.config.epsilon * norm(w)? / norm(&noise)?.max(1e-12);
                    new.push((name.clone(), (w.to_dtype(DType::F32)? + (noise * scale)?)?));
                }
                model.set_weights(new)?;
                let rel_change = rel_change(self.base, &model, &names)?;
                Ok(Change { damage: self.read(&model)?, rel_change, task_gain: 0.0 })
            }
            Mode::Update => {
                let mut model = self.base.clone();
                let cfg = TrainConfig {
                    lr: self.config.lr,
                    max_steps: Some(self.config.steps),
                    batch_size: self.config.batch_size,
                    warmup_ratio: 0.0,
                    min_lr_ratio: 1.0,
                    seed,
                    groups: vec![LrGroup::new("group", names.clone(), 1.0)],
                    log_every_secs: None,
                    ..TrainConfig::default()
                };
                train(&mut model, &self.benign, &cfg)?;
                let rel_change = rel_change(self.base, &model, &names)?;
                let task_gain = if self.benign_heldout.is_empty() {
                    0.0
                } else {
                    mean_logprob(&model, &self.benign_heldout)? - self.base_benign_logprob
                };
                Ok(Change { damage: self.read(&model)?, rel_change, task_gain })
            }
            Mode::Adversarial => self.adversarial(&names),
        }
    }

    /// The damage of `model` relative to the base, by the configured measure.
    pub(crate) fn read(&self, model: &Model) -> Result<f64> {
        Ok(match self.config.measure {
            Measure::RefusalLogProb => self.base_logprob - mean_logprob(model, &self.refusals)?,
            Measure::FeatureDrift => {
                cosine_drift(&self.base_features, &layer_features(model, &self.harmful, self.probe.layer, 32)?)?
            }
            Measure::ProbeMargin => self.base_logit - mean(&self.probe.logits_of(model, &self.harmful)?),
        })
    }

    /// Gradient steps on `names` that lower the probe's logit on harmful prompts, until the
    /// probe's accuracy on them has dropped by `target_drop` (or the steps run out).
    fn adversarial(&self, names: &[String]) -> Result<Change> {
        crate::kernels::run_on_cpu_pool(self.base.device(), || self.adversarial_here(names))
    }

    fn adversarial_here(&self, names: &[String]) -> Result<Change> {
        let mut model = self.base.clone();
        let vars = model.make_trainable(names)?;
        let mut opt = crate::tune::AdamW::new(&vars, crate::tune::AdamWParams::default())?;
        let ids: Vec<Vec<u32>> = self.harmful.iter().map(|p| prompt_ids(&model, p)).collect::<Result<_>>()?;
        let batch = crate::model::Batch::from_sequences(&ids, 0, model.device())?;
        let d = self.probe.weight.len();
        let dev = model.device().clone();
        let w_eff: Vec<f32> = self.probe.weight.iter().zip(&self.probe.scale).map(|(w, s)| w / s).collect();
        let w_eff = Tensor::from_vec(w_eff, (d, 1), &dev)?;
        let mean_t = Tensor::from_slice(&self.probe.mean, (1, d), &dev)?;
        let t = batch.input_ids.dim(1)?;
        let last: Vec<u32> = batch.lengths.iter().enumerate().map(|(r, &len)| (r * t + len - 1) as u32).collect();
        let last = Tensor::new(last.as_slice(), &dev)?;
        let mut drop = 0.0;
        for _ in 0..self.config.steps {
            let acts = model.forward_train(&batch, &crate::model::Capture::residual())?;
            let h = acts.hidden_states()?.swap_remove(self.probe.layer).to_dtype(DType::F32)?;
            let (b, t, dm) = h.dims3()?;
            let feats = h.reshape((b * t, dm))?.index_select(&last, 0)?;
            let logits = (feats.broadcast_sub(&mean_t)?.matmul(&w_eff)? + self.probe.bias as f64)?;
            // softplus(logit): pushes every harmful prompt towards the harmless side.
            let loss = (logits.relu()? + (logits.abs()?.neg()?.exp()? + 1.0)?.log()?)?.mean_all()?;
            let grads = loss.backward()?;
            let mut g = std::collections::BTreeMap::new();
            for (name, var) in &vars {
                if let Some(gv) = grads.get(var.as_tensor()) {
                    g.insert(name.clone(), gv.clone());
                }
            }
            opt.step(&g, |_| self.config.lr)?;
            let z = self.probe.logits_of(&model, &self.harmful)?;
            let acc = harmful_share(&z);
            drop = (self.base_probe_acc - acc).max(0.0);
            if drop >= self.config.target_drop {
                break;
            }
        }
        let rel_change = rel_change(self.base, &model, names)?;
        Ok(Change { damage: (drop / self.config.target_drop).min(1.0), rel_change, task_gain: 0.0 })
    }
}

fn validate(config: &RobustnessConfig, benign: &[Record]) -> Result<()> {
    if config.seeds.is_empty() {
        return Err(Error::invalid("robustness seeds", "give at least one seed"));
    }
    if config.kinds.is_empty() {
        return Err(Error::invalid("robustness kinds", "give at least one module kind"));
    }
    if config.mode == Mode::Update && benign.is_empty() {
        return Err(Error::invalid("benign data", "the update mode trains on benign IFT data; none was given"));
    }
    if config.mode != Mode::Perturb && (config.steps == 0 || config.lr.is_nan() || config.lr <= 0.0) {
        return Err(Error::invalid("robustness steps", "need steps >= 1 and a positive lr"));
    }
    if config.normalize == Normalize::TaskGain && config.mode != Mode::Update {
        return Err(Error::invalid(
            "robustness normalisation",
            format!("task-gain needs the update mode (only it trains on the task), not {}", config.mode),
        ));
    }
    if config.mode == Mode::Perturb && (config.epsilon.is_nan() || config.epsilon <= 0.0) {
        return Err(Error::invalid("robustness epsilon", "the relative noise must be positive"));
    }
    if config.mode == Mode::Adversarial && (!(0.0..=1.0).contains(&config.target_drop) || config.target_drop == 0.0) {
        return Err(Error::invalid("robustness target drop", "must be in (0, 1]"));
    }
    Ok(())
}

/// The base model's greedy answers to `prompts`, kept where they are refusals, as
/// teacher-forcing examples.
fn own_refusals(model: &Model, prompts: &[String], tokens: usize) -> Result<Vec<Example>> {
    let detector = RefusalDetector::default();
    let opts = GenerateOptions { max_new_tokens: tokens, ..GenerateOptions::default() };
    let mut out = Vec::new();
    for p in prompts {
        let prompt = prompt_ids(model, p)?;
        let answer = model.generate(&prompt, &opts)?;
        if !answer.is_empty() && detector.is_refusal(&model.tokenizer().decode(&answer)?) {
            let mut ids = prompt.clone();
            ids.extend(answer);
            out.push(Example { ids, loss_start: prompt.len() });
        }
    }
    if out.len() < 4 {
        return Err(Error::invalid(
            "refusal proxy",
            format!(
                "the model refuses only {} of {} harmful prompts; the refusal-log-prob measure needs a model that \
                 refuses (use Measure::FeatureDrift or Mode::Adversarial, or align the model first)",
                out.len(),
                prompts.len()
            ),
        ));
    }
    Ok(out)
}

/// Mean log-probability per token of the examples' responses.
fn mean_logprob(model: &Model, examples: &[Example]) -> Result<f64> {
    let mut total = 0.0;
    let mut tokens = 0;
    for chunk in examples.chunks(32) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let (loss, n) = response_loss(model, &refs, false)?;
        total += loss.to_dtype(DType::F32)?.to_scalar::<f32>()? as f64 * n as f64;
        tokens += n;
    }
    Ok(-total / tokens.max(1) as f64)
}

fn norm(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F32)?.sqr()?.sum_all()?.to_scalar::<f32>()?.sqrt() as f64)
}

/// `||W' - W|| / ||W||` over the named parameters taken together.
pub(crate) fn rel_change(base: &Model, changed: &Model, names: &[String]) -> Result<f64> {
    let (mut diff, mut orig) = (0.0, 0.0);
    for n in names {
        let (a, b) = (&base.weights()[n], &changed.weights()[n]);
        diff += norm(&(b.to_dtype(DType::F32)? - a.to_dtype(DType::F32)?)?)?.powi(2);
        orig += norm(a)?.powi(2);
    }
    Ok((diff / orig.max(1e-30)).sqrt().max(1e-12))
}

fn mean(v: &[f32]) -> f64 {
    v.iter().map(|&x| x as f64).sum::<f64>() / v.len().max(1) as f64
}

fn hash(names: &[String]) -> u64 {
    // FNV-1a: a stable per-group stream, so one seed gives every group its own noise.
    names.iter().flat_map(|n| n.bytes()).fold(0xcbf29ce484222325, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt::{Debug, Display};
    use std::str::FromStr;

    fn round_trips<T>(choice: T)
    where
        T: Display + FromStr + Serialize + PartialEq + Debug,
        T::Err: Debug,
    {
        let name = choice.to_string();
        assert_eq!(name.parse::<T>().unwrap(), choice);
        assert_eq!(serde_json::to_string(&choice).unwrap(), format!("\"{name}\""), "CLI and JSON spell it alike");
    }

    #[test]
    fn choice_names_round_trip_match_the_json_spelling_and_are_listed_in_errors() {
        [Mode::Perturb, Mode::Update, Mode::Adversarial].into_iter().for_each(round_trips);
        [Measure::RefusalLogProb, Measure::FeatureDrift, Measure::ProbeMargin].into_iter().for_each(round_trips);
        [Normalize::WeightChange, Normalize::TaskGain].into_iter().for_each(round_trips);
        let err = "sideways".parse::<Mode>().unwrap_err().to_string();
        assert!(err.contains("`sideways`") && err.contains("perturb, update, adversarial"), "{err}");
    }
}
