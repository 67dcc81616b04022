//! Module robustness: how much changing one module group (a module kind
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
//! classifier proxy, kept for comparison: on a small model it ranked opposite to the other two.

mod analysis;
mod bench;
mod display;

pub use analysis::Analysis;

use crate::error::{Error, Result};
use crate::model::{ModuleId, ModuleKind, ModuleSet};
use crate::stats::spearman;
use serde::{Deserialize, Serialize};

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

/// Settings of [`Analysis::robustness`]. The defaults are ours (the paper's are not public):
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
    /// Checks that this matrix is whole and was measured on a model of `model`'s depth (a
    /// matrix read from a file may be neither).
    pub fn check_fits(&self, model: &crate::Model) -> Result<()> {
        let layers = model.config().num_layers;
        let bad = |why: String| Err(Error::invalid("robustness matrix", why));
        if self.num_layers != layers {
            return bad(format!(
                "it was measured on a {}-layer model and this model has {layers} layers; measure it on this model",
                self.num_layers
            ));
        }
        if self.scores.len() != self.kinds.len() || self.scores.iter().any(|row| row.len() != self.layer_groups.len()) {
            return bad(format!(
                "its scores are not a {} x {} matrix (one row per kind, one column per layer group)",
                self.kinds.len(),
                self.layer_groups.len()
            ));
        }
        if let Some((a, b)) = self.layer_groups.iter().find(|(a, b)| a >= b || *b > layers) {
            return bad(format!("layer group {a}..{b} is not a range of this model's {layers} layers"));
        }
        if self.scores.iter().flatten().any(|v| !v.is_finite()) {
            return bad("some scores are not finite numbers".into());
        }
        Ok(())
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
}

/// Layer ranges `[start, end)` of the matrix columns.
pub fn layer_groups(num_layers: usize, per_group: Option<usize>) -> Vec<(usize, usize)> {
    let per = per_group.unwrap_or(if num_layers <= 16 { 1 } else { num_layers.div_ceil(16) }).max(1);
    (0..num_layers).step_by(per).map(|a| (a, (a + per).min(num_layers))).collect()
}

pub(crate) fn group_label((a, b): (usize, usize)) -> String {
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
