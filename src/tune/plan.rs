//! ML-LR (Modular Layer-wise Learning Rate): the normal learning rate on the robust module set,
//! a reduced one (`ratio` x) on everything else. SWAT and every baseline are settings of the
//! same plan ([`super::Strategy`] builds them), so all strategies run through one trainer:
//!
//! | strategy | robust set | ratio | rest starts |
//! |---|---|---|---|
//! | plain IFT | any | 1.0 | step 0 |
//! | ML-LR | Mods_Robust | 0.1 (default) | step 0 |
//! | freeze-rest | Mods_Robust | 0.0 | never |
//! | SWAT | Mods_Robust | 1.0 | after the warm-up share |
//! | random subset | random set of equal parameter share | 0.1 | step 0 |
//!
//! Parameters outside every q/k/v/o/gate/up/down module (embeddings, norms, LM head) belong to
//! the rest.

use super::curve::{CurvePoint, Watch};
use crate::data::Record;
use crate::error::{Error, Result};
use crate::model::{LoraConfig, Model, ModuleSet};
use crate::train::{encode_examples, train_observed, LrGroup, Observer, TrainConfig, TrainReport};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// A fine-tuning plan with per-group learning rates. Build with [`MlLr::builder`].
///
/// ```
/// use secure_tuning::model::ModuleSet;
/// use secure_tuning::tune::MlLr;
/// let plan = MlLr::builder().robust(ModuleSet::mlp(6)).lr(2e-4).ratio(0.1).steps(100).build()?;
/// assert_eq!(plan.ratio, 0.1);
/// assert!(MlLr::builder().robust(ModuleSet::new()).ratio(0.0).build().is_err());
/// # Ok::<(), secure_tuning::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MlLr {
    /// The modules trained at the full learning rate.
    pub robust: ModuleSet,
    /// The rest's LR as a share of the full LR.
    pub ratio: f64,
    /// Extra LR factor per layer (for modules of that layer, robust or not).
    pub layer_factors: BTreeMap<usize, f64>,
    /// SWAT: the share of steps during which only the robust set trains.
    pub swat_warmup: Option<f64>,
    /// LR share of the parameters outside every module (embeddings, norms, LM head); `None` =
    /// the rest's `ratio`.
    #[serde(default)]
    pub non_module_ratio: Option<f64>,
    /// Train LoRA adapters instead of the weights: the base stays frozen, each adapter trains at
    /// its module's scale, and the adapters are merged into the tuned model. `None` = full
    /// fine-tuning.
    #[serde(default)]
    pub lora: Option<LoraConfig>,
    /// Longest tokenised example.
    pub max_len: usize,
    /// Everything else: LR, schedule, batch, clipping, seed, checkpoints, budgets.
    pub train: TrainConfig,
}

/// Builder of [`MlLr`].
#[derive(Debug, Clone)]
pub struct MlLrBuilder {
    plan: MlLr,
}

impl MlLr {
    /// Starts a plan: no robust modules, ratio 0.1, the trainer's defaults otherwise.
    pub fn builder() -> MlLrBuilder {
        MlLrBuilder {
            plan: MlLr {
                robust: ModuleSet::new(),
                ratio: 0.1,
                layer_factors: BTreeMap::new(),
                swat_warmup: None,
                non_module_ratio: None,
                lora: None,
                max_len: 256,
                train: TrainConfig::default(),
            },
        }
    }

    /// The LR groups this plan gives `model`'s parameters (checks the modules exist).
    pub fn groups(&self, model: &Model, total_steps: usize) -> Result<Vec<LrGroup>> {
        let layers = model.config().num_layers;
        if let Some(m) = self.robust.iter().find(|m| m.layer >= layers) {
            return Err(Error::invalid(
                "robust module set",
                format!("`{}` is not in this model: it has {layers} layers", m.label()),
            ));
        }
        let rest_start = self.swat_warmup.map_or(0, |w| (w * total_steps as f64).round() as usize);
        let mut groups: BTreeMap<(bool, u64), LrGroup> = BTreeMap::new();
        let mut assigned: std::collections::BTreeSet<String> = Default::default();
        for m in ModuleSet::all(layers).iter() {
            let robust = self.robust.contains(m);
            let factor = self.layer_factors.get(&m.layer).copied().unwrap_or(1.0);
            let scale = if robust { factor } else { self.ratio * factor };
            let names = model.trainable_names(&ModuleSet::from_iter([*m]));
            assigned.extend(names.iter().cloned());
            let key = (robust, factor.to_bits());
            let name = match (robust, self.layer_factors.is_empty()) {
                (true, true) => "robust".to_string(),
                (false, true) => "rest".to_string(),
                (r, false) => format!("{} x{factor}", if r { "robust" } else { "rest" }),
            };
            let start = if robust { 0 } else { rest_start };
            groups
                .entry(key)
                .or_insert_with(|| LrGroup::new(name, vec![], scale).starting_at(start))
                .params
                .extend(names);
        }
        // With LoRA everything outside the adapters stays frozen.
        let other: Vec<String> = match model.lora() {
            Some(_) => vec![],
            None => model.weights().keys().filter(|n| !assigned.contains(*n)).cloned().collect(),
        };
        let mut out: Vec<LrGroup> = groups.into_values().filter(|g| !g.params.is_empty()).collect();
        if !other.is_empty() {
            out.push(
                LrGroup::new("non-module", other, self.non_module_ratio.unwrap_or(self.ratio)).starting_at(rest_start),
            );
        }
        Ok(out)
    }

    /// The trainer settings for `model` (adapters already added when the plan has LoRA) with
    /// `n_examples` examples, groups filled in.
    pub(crate) fn train_config(&self, model: &Model, n_examples: usize) -> Result<TrainConfig> {
        let total = self.train.total_steps(n_examples);
        Ok(TrainConfig { groups: self.groups(model, total)?, ..self.train.clone() })
    }

    /// Fine-tunes a copy of `model` on `data` (records with `output`s) and returns it with the
    /// training report.
    ///
    /// ```no_run
    /// use secure_tuning::{Model, data::Record, model::ModuleSet, tune::MlLr};
    /// let model = Model::load("default")?;
    /// let data = vec![Record::new("What is double 4?", "Double 4 is 8.")];
    /// let plan = MlLr::builder().robust(ModuleSet::mlp(6)).steps(5).build()?;
    /// let tuned = plan.fit(&model, &data)?;
    /// println!("{}", tuned.report.recent_loss(5));
    /// # Ok::<(), secure_tuning::Error>(())
    /// ```
    pub fn fit(&self, model: &Model, data: &[Record]) -> Result<Tuned> {
        self.fit_with(model, data, None)
    }

    /// [`MlLr::fit`], measuring safety and task skill on `watch`'s sets before step 1 and every
    /// `watch.every` steps: the tuned model comes back with its trajectory in `curve`.
    pub fn fit_watched(&self, model: &Model, data: &[Record], watch: &Watch) -> Result<Tuned> {
        let mut curve = Vec::new();
        let mut tuned = self.fit_observed(model, data, watch.every, |m, r| {
            let point = CurvePoint::measure(m, r, watch)?;
            crate::progress::note("curve", &point.to_string());
            curve.push(point);
            Ok(())
        })?;
        tuned.curve = curve;
        Ok(tuned)
    }

    /// [`MlLr::fit`], calling `observe(model, report)` before step 1, every `every` steps and
    /// after the last, for any measurement along training ([`MlLr::fit_watched`] is the common one).
    pub fn fit_observed(
        &self,
        model: &Model,
        data: &[Record],
        every: usize,
        mut observe: impl FnMut(&Model, &TrainReport) -> Result<()>,
    ) -> Result<Tuned> {
        self.fit_with(model, data, Some(Observer { every, observe: &mut observe }))
    }

    fn fit_with(&self, model: &Model, data: &[Record], observer: Option<Observer>) -> Result<Tuned> {
        let mut tuned = model.clone();
        if let Some(lora) = &self.lora {
            tuned.add_lora(lora)?;
        }
        let examples = encode_examples(&tuned, data, self.max_len)?;
        let cfg = self.train_config(&tuned, examples.len())?;
        let report = train_observed(&mut tuned, &examples, &cfg, observer)?;
        tuned.freeze_all()?;
        // With LoRA, the copy before merging keeps the adapters for `save_adapters`; it shares
        // every tensor with the merged model's source, so it costs no memory.
        let adapted = tuned.lora().is_some().then(|| tuned.clone());
        if tuned.lora().is_some() {
            tuned.merge_lora()?;
        }
        Ok(Tuned { model: tuned, report, curve: Vec::new(), adapted })
    }

    /// Which strategy this plan amounts to: plain (everything at the full rate), freeze-rest
    /// (ratio 0), SWAT (a warm-up) or ML-LR.
    ///
    /// ```
    /// use secure_tuning::tune::{MlLr, StrategyKind};
    /// assert_eq!(MlLr::builder().ratio(1.0).build()?.kind(), StrategyKind::Plain);
    /// # Ok::<(), secure_tuning::Error>(())
    /// ```
    pub fn kind(&self) -> super::StrategyKind {
        use super::StrategyKind;
        match (self.swat_warmup, self.ratio) {
            (Some(_), _) => StrategyKind::Swat,
            (None, 0.0) => StrategyKind::FreezeRest,
            (None, r) if r == 1.0 && self.layer_factors.is_empty() => StrategyKind::Plain,
            _ => StrategyKind::MlLr,
        }
    }

    /// The parameter-weighted mean LR scale of this plan on `model`: the uniform LR scale that
    /// spends the same LR budget (the low-LR control).
    pub fn mean_scale(&self, model: &Model) -> Result<f64> {
        let groups = self.groups(model, 1)?;
        let (mut num, mut den) = (0.0, 0.0);
        for g in &groups {
            let n = g.num_params(model) as f64;
            num += g.lr_scale * n;
            den += n;
        }
        Ok(num / den.max(1.0))
    }
}

impl MlLrBuilder {
    /// Trains LoRA adapters of rank `rank` (update scaled by `alpha / rank`) on all seven
    /// projection kinds instead of the weights; see [`MlLrBuilder::lora_config`] for other targets.
    ///
    /// ```
    /// use secure_tuning::tune::MlLr;
    /// let plan = MlLr::builder().lora(16, 32.0).build().unwrap();
    /// assert_eq!(plan.lora.unwrap().rank, 16);
    /// ```
    pub fn lora(mut self, rank: usize, alpha: f64) -> Self {
        self.plan.lora = Some(LoraConfig::new(rank, alpha));
        self
    }

    /// Trains LoRA adapters as `cfg` says (rank, alpha, target kinds, seed).
    pub fn lora_config(mut self, cfg: LoraConfig) -> Self {
        self.plan.lora = Some(cfg);
        self
    }

    /// The robust set (e.g. a [`crate::search::ModsRobust`]'s `modules`).
    pub fn robust(mut self, set: impl Into<ModuleSet>) -> Self {
        self.plan.robust = set.into();
        self
    }
    /// The full learning rate.
    pub fn lr(mut self, lr: f64) -> Self {
        self.plan.train.lr = lr;
        self
    }
    /// The rest's LR share: 0.1 default, 1.0 = plain IFT, 0.0 = freeze the rest.
    pub fn ratio(mut self, ratio: f64) -> Self {
        self.plan.ratio = ratio;
        self
    }
    /// An extra LR factor for every module of `layer`.
    pub fn layer_factor(mut self, layer: usize, factor: f64) -> Self {
        self.plan.layer_factors.insert(layer, factor);
        self
    }
    /// SWAT: train only the robust set for this share of the steps, then everything.
    pub fn swat(mut self, warmup_share: f64) -> Self {
        self.plan.swat_warmup = Some(warmup_share);
        self
    }
    /// The LR share of embeddings, norms and the LM head (default: the rest's ratio).
    pub fn non_module_ratio(mut self, ratio: f64) -> Self {
        self.plan.non_module_ratio = Some(ratio);
        self
    }
    /// Passes over the data (when no step count is set).
    pub fn epochs(mut self, epochs: f64) -> Self {
        self.plan.train.epochs = epochs;
        self
    }
    /// Optimizer steps (overrides epochs).
    pub fn steps(mut self, steps: usize) -> Self {
        self.plan.train.max_steps = Some(steps);
        self
    }
    /// Examples per micro-batch.
    pub fn batch_size(mut self, n: usize) -> Self {
        self.plan.train.batch_size = n;
        self
    }
    /// Micro-batches per step.
    pub fn grad_accum(mut self, n: usize) -> Self {
        self.plan.train.grad_accum = n;
        self
    }
    /// Warm-up share and final LR share of the cosine schedule.
    pub fn schedule(mut self, warmup_ratio: f64, min_lr_ratio: f64) -> Self {
        self.plan.train.warmup_ratio = warmup_ratio;
        self.plan.train.min_lr_ratio = min_lr_ratio;
        self
    }
    /// AdamW decoupled weight decay.
    pub fn weight_decay(mut self, wd: f64) -> Self {
        self.plan.train.weight_decay = wd;
        self
    }
    /// Global gradient-norm clip over all groups; `None` = off.
    pub fn clip_norm(mut self, clip: Option<f64>) -> Self {
        self.plan.train.clip_norm = clip;
        self
    }
    /// Seed of the data order.
    pub fn seed(mut self, seed: u64) -> Self {
        self.plan.train.seed = seed;
        self
    }
    /// Longest tokenised example.
    pub fn max_len(mut self, n: usize) -> Self {
        self.plan.max_len = n;
        self
    }
    /// Checkpoint folder (resumes from it when it holds a checkpoint of the same plan).
    pub fn checkpoint_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.plan.train.checkpoint_dir = Some(dir.into());
        self.plan.train.resume = true;
        self
    }
    /// Stop after this many steps in one call (resumable with a checkpoint dir).
    pub fn step_budget(mut self, steps: usize) -> Self {
        self.plan.train.step_budget = Some(steps);
        self
    }
    /// Stop after this much wall time in one call (resumable with a checkpoint dir).
    pub fn time_budget(mut self, budget: Duration) -> Self {
        self.plan.train.time_budget = Some(budget);
        self
    }
    /// Any other trainer setting, replaced whole (groups are always set by the plan).
    pub fn train_config(mut self, cfg: TrainConfig) -> Self {
        self.plan.train = cfg;
        self
    }

    /// The plan as set so far, unchecked.
    pub fn peek(&self) -> &MlLr {
        &self.plan
    }

    /// Checks the plan and returns it.
    pub fn build(self) -> Result<MlLr> {
        let p = self.plan;
        let bad = |what: &str, why: String| Err(Error::invalid(what, why));
        if !(p.train.lr.is_finite() && p.train.lr > 0.0) {
            return bad("learning rate", format!("{} must be a positive number", p.train.lr));
        }
        if !(p.ratio.is_finite() && p.ratio >= 0.0) {
            return bad("LR ratio", format!("{} must be a number >= 0 (0 freezes the rest, 1 is plain IFT)", p.ratio));
        }
        if let Some(r) = p.non_module_ratio.filter(|r| !(r.is_finite() && *r >= 0.0)) {
            return bad("non-module LR ratio", format!("{r} must be a number >= 0"));
        }
        if p.robust.is_empty() && p.ratio == 0.0 && p.non_module_ratio.unwrap_or(0.0) == 0.0 {
            return bad("robust module set", "is empty and the ratio is 0: nothing would train".into());
        }
        if let Some((l, f)) = p.layer_factors.iter().find(|(_, f)| !(f.is_finite() && **f >= 0.0)) {
            return bad("layer factor", format!("layer {l}: {f} must be a number >= 0"));
        }
        if let Some(w) = p.swat_warmup.filter(|w| !(0.0..1.0).contains(w)) {
            return bad("SWAT warm-up share", format!("{w} must be in [0, 1)"));
        }
        if let Some(lora) = &p.lora {
            lora.validate()?;
        }
        if p.max_len < 2 {
            return bad("max_len", "must be at least 2 tokens".into());
        }
        Ok(p)
    }
}

/// A fine-tuned model and how training went.
#[derive(Debug, Clone)]
pub struct Tuned {
    /// The tuned model (plain tensors again, ready to evaluate or save).
    pub model: Model,
    /// Losses, LR and update norms per group.
    pub report: TrainReport,
    /// Safety and task skill along training ([`MlLr::fit_watched`]); empty otherwise.
    pub curve: Vec<CurvePoint>,
    /// With LoRA, the tuned model with its adapters not merged (for
    /// [`Model::save_adapters`]); `None` for full fine-tuning.
    pub adapted: Option<Model>,
}
