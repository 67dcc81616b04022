//! Strategies as types: every fine-tuning strategy the paper and its controls compare is a
//! [`Strategy`] that turns common settings (LR, steps, batch, seed, LoRA) into an [`MlLr`] plan,
//! so they all run through one trainer and differ only in what the enum says.
//!
//! | strategy | trains at the full LR | the rest | data |
//! |---|---|---|---|
//! | [`Strategy::Plain`] | everything | | benign |
//! | [`Strategy::MlLr`] | the robust set | `ratio` x | benign |
//! | [`Strategy::Swat`] | the robust set, then everything after the warm-up | | benign |
//! | [`Strategy::RandomSubset`] | a random set of equal parameter share | `ratio` x | benign |
//! | [`Strategy::FreezeRest`] | the robust set | frozen | benign |
//! | [`Strategy::LowLr`] | everything at `scale` x | | benign |
//! | [`Strategy::SafetyMix`] | everything | | benign + `share` refusal examples |

use super::plan::{MlLr, MlLrBuilder};
use crate::data::Record;
use crate::error::{Error, Result};
use crate::model::{Model, ModuleId, ModuleSet};
use crate::rng::Rng;
use serde::{Deserialize, Serialize};

/// A fine-tuning strategy with everything that sets it apart.
///
/// ```
/// use secure_tuning::model::ModuleSet;
/// use secure_tuning::tune::{MlLr, Strategy, StrategyKind};
/// let s = Strategy::MlLr { robust: ModuleSet::mlp(6), ratio: 0.1 };
/// assert_eq!(s.kind(), StrategyKind::MlLr);
/// let plan = s.plan(MlLr::builder().lr(2e-4).steps(100))?;
/// assert_eq!((plan.ratio, plan.robust.len()), (0.1, 18));
/// # Ok::<(), secure_tuning::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Strategy {
    /// Plain benign IFT: every parameter at the full LR.
    Plain,
    /// ML-LR: the robust set at the full LR, the rest at `ratio` times it.
    MlLr {
        /// The robust modules (Mods_Robust).
        robust: ModuleSet,
        /// The rest's LR share.
        ratio: f64,
    },
    /// SWAT: the robust set alone for a `warmup` share of the steps, then everything.
    Swat {
        /// The robust modules.
        robust: ModuleSet,
        /// Share of the steps before the rest joins.
        warmup: f64,
    },
    /// ML-LR on a random module set of the robust set's parameter share (a control).
    RandomSubset {
        /// The random set.
        set: ModuleSet,
        /// Which of the random sets it is.
        index: usize,
        /// The rest's LR share.
        ratio: f64,
    },
    /// The robust set at the full LR, everything else frozen.
    FreezeRest {
        /// The robust modules.
        robust: ModuleSet,
    },
    /// Every parameter at `scale` times the full LR (ML-LR's parameter-weighted LR budget).
    LowLr {
        /// The uniform LR share.
        scale: f64,
    },
    /// Plain IFT on the benign data with refusal examples mixed in (a data-side defence).
    SafetyMix {
        /// Share of refusal examples in the mixed data.
        share: f64,
    },
}

/// A strategy's name without its settings: what configs list and reports group by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StrategyKind {
    /// [`Strategy::Plain`].
    Plain,
    /// [`Strategy::MlLr`].
    MlLr,
    /// [`Strategy::Swat`].
    Swat,
    /// [`Strategy::RandomSubset`].
    RandomSubset,
    /// [`Strategy::FreezeRest`].
    FreezeRest,
    /// [`Strategy::LowLr`].
    LowLr,
    /// [`Strategy::SafetyMix`].
    SafetyMix,
}

impl StrategyKind {
    /// Every kind, in report order.
    pub const ALL: [StrategyKind; 7] = [
        StrategyKind::Plain,
        StrategyKind::MlLr,
        StrategyKind::Swat,
        StrategyKind::RandomSubset,
        StrategyKind::FreezeRest,
        StrategyKind::LowLr,
        StrategyKind::SafetyMix,
    ];

    /// The name used in configs, reports and the CLI (`ml-lr`).
    pub fn name(self) -> &'static str {
        match self {
            StrategyKind::Plain => "plain",
            StrategyKind::MlLr => "ml-lr",
            StrategyKind::Swat => "swat",
            StrategyKind::RandomSubset => "random-subset",
            StrategyKind::FreezeRest => "freeze-rest",
            StrategyKind::LowLr => "low-lr",
            StrategyKind::SafetyMix => "safety-mix",
        }
    }
}

impl std::fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for StrategyKind {
    type Err = Error;

    /// ```
    /// use secure_tuning::tune::StrategyKind;
    /// assert_eq!("swat".parse::<StrategyKind>()?, StrategyKind::Swat);
    /// assert!("sideways".parse::<StrategyKind>().unwrap_err().to_string().contains("plain, ml-lr"));
    /// # Ok::<(), secure_tuning::Error>(())
    /// ```
    fn from_str(s: &str) -> Result<Self> {
        StrategyKind::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| {
            let names: Vec<&str> = StrategyKind::ALL.iter().map(|k| k.name()).collect();
            Error::invalid("strategy", format!("unknown strategy `{s}`; choose from {}", names.join(", ")))
        })
    }
}

impl Strategy {
    /// Which strategy this is.
    pub fn kind(&self) -> StrategyKind {
        match self {
            Strategy::Plain => StrategyKind::Plain,
            Strategy::MlLr { .. } => StrategyKind::MlLr,
            Strategy::Swat { .. } => StrategyKind::Swat,
            Strategy::RandomSubset { .. } => StrategyKind::RandomSubset,
            Strategy::FreezeRest { .. } => StrategyKind::FreezeRest,
            Strategy::LowLr { .. } => StrategyKind::LowLr,
            Strategy::SafetyMix { .. } => StrategyKind::SafetyMix,
        }
    }

    /// The plan: `common` (LR, steps, batch, seed, LoRA, ...) with this strategy's module sets,
    /// ratio, SWAT warm-up or LR scale; the builder checks it.
    pub fn plan(&self, common: MlLrBuilder) -> Result<MlLr> {
        let everything = |b: MlLrBuilder| b.robust(ModuleSet::new()).ratio(1.0);
        match self {
            Strategy::Plain | Strategy::SafetyMix { .. } => everything(common).build(),
            Strategy::MlLr { robust, ratio } => common.robust(robust.clone()).ratio(*ratio).build(),
            Strategy::Swat { robust, warmup } => common.robust(robust.clone()).ratio(1.0).swat(*warmup).build(),
            Strategy::RandomSubset { set, ratio, .. } => common.robust(set.clone()).ratio(*ratio).build(),
            Strategy::FreezeRest { robust } => common.robust(robust.clone()).ratio(0.0).build(),
            Strategy::LowLr { scale } => {
                let lr = common.peek().train.lr * scale;
                everything(common).lr(lr).build()
            }
        }
    }

    /// The training data: `benign` itself, or for [`Strategy::SafetyMix`] `benign` followed by
    /// as many of `refusals` as make up `share` of the mix.
    ///
    /// ```
    /// use secure_tuning::{data::Record, tune::Strategy};
    /// let benign = vec![Record::new("a", "b"); 9];
    /// let refusals = vec![Record::new("bad", "no"); 5];
    /// assert_eq!(Strategy::SafetyMix { share: 0.1 }.data(&benign, &refusals).len(), 10);
    /// assert_eq!(Strategy::Plain.data(&benign, &refusals).len(), 9);
    /// ```
    pub fn data(&self, benign: &[Record], refusals: &[Record]) -> Vec<Record> {
        let mut data = benign.to_vec();
        if let Strategy::SafetyMix { share } = self {
            let n = ((benign.len() as f64) * share / (1.0 - share)).round() as usize;
            data.extend(refusals.iter().take(n).cloned());
        }
        data
    }

    /// A short description for charts and logs: `ML-LR x0.1 (12 robust modules)`.
    pub fn label(&self) -> String {
        match self {
            Strategy::Plain => "plain IFT".into(),
            Strategy::MlLr { robust, ratio } => format!("ML-LR x{ratio} ({} robust modules)", robust.len()),
            Strategy::Swat { robust, warmup } => {
                format!("SWAT, {:.0}% warm-up ({} robust modules)", 100.0 * warmup, robust.len())
            }
            Strategy::RandomSubset { set, index, ratio } => {
                format!("random set {index} x{ratio} ({} modules)", set.len())
            }
            Strategy::FreezeRest { robust } => format!("freeze-rest ({} robust modules)", robust.len()),
            Strategy::LowLr { scale } => format!("uniform LR x{scale:.3}"),
            Strategy::SafetyMix { share } => format!("safety mix {:.0}%", 100.0 * share),
        }
    }
}

/// A random module set holding about `share` of the module parameters (the random-subset
/// control), seeded.
///
/// ```
/// # let model = secure_tuning::Model::load_dir("tests/fixtures/llama3").unwrap();
/// let set = secure_tuning::tune::random_modules(&model, 0.5, 7);
/// assert!(!set.is_empty());
/// assert_eq!(set, secure_tuning::tune::random_modules(&model, 0.5, 7));
/// ```
pub fn random_modules(model: &Model, share: f64, seed: u64) -> ModuleSet {
    let all: Vec<ModuleId> = ModuleSet::all(model.config().num_layers).iter().copied().collect();
    let size = |m: &ModuleId| model.num_params_of(&ModuleSet::from_iter([*m]));
    let total: usize = all.iter().map(size).sum();
    let mut order = all.clone();
    Rng::new(seed).shuffle(&mut order);
    let target = share * total as f64;
    let mut set = ModuleSet::new();
    let mut have = 0.0;
    for m in order {
        let s = size(&m) as f64;
        // Add while it brings the share closer to the target.
        if (have + s - target).abs() < (have - target).abs() {
            set.insert(m);
            have += s;
        }
    }
    set
}
