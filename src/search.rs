//! The proxy-guided search for Mods_Robust: add module groups
//! most-robust-first, and keep a group only if changing *all kept groups together* still
//! damages safety by no more than a tolerance. The check is joint because robust groups can add
//! up: two groups that each pass alone may fail together.
//!
//! The tolerance is a share of the reference damage, the damage when every group changes together
//! (what plain fine-tuning does), so one default works across models and measures.

use crate::display::{emit, escape_html, line_chart, Series, Svg};
use crate::error::{Error, Result};
use crate::model::ModuleSet;
use crate::progress::Task;
use crate::robustness::{Analysis, Robustness};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Settings of [`Analysis::search`].
///
/// ```
/// let cfg = secure_tuning::search::SearchConfig { max_share: Some(0.5), ..Default::default() };
/// assert_eq!(cfg.tolerance, 0.3);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SearchConfig {
    /// Largest joint damage kept, as a share of the reference damage (all groups changed).
    pub tolerance: f64,
    /// Largest share of the module parameters the set may hold; `None` = no cap.
    pub max_share: Option<f64>,
    /// Mixed into the matrix's seeds for the joint changes (each joint change is averaged over
    /// the seeds the matrix was measured with).
    pub seed: u64,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig { tolerance: 0.3, max_share: None, seed: 0 }
    }
}

impl SearchConfig {
    /// Checks the settings: a finite tolerance of at least 0, a share cap in (0, 1].
    pub fn validate(&self) -> Result<()> {
        if !(self.tolerance.is_finite() && self.tolerance >= 0.0) {
            return Err(Error::invalid("search tolerance", format!("{} must be a finite number >= 0", self.tolerance)));
        }
        if let Some(cap) = self.max_share.filter(|c| !(c.is_finite() && *c > 0.0 && *c <= 1.0)) {
            return Err(Error::invalid("search max share", format!("{cap} must be a share in (0, 1]")));
        }
        Ok(())
    }
}

/// One candidate the search tried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchStep {
    /// The candidate group.
    pub candidate: ModuleSet,
    /// Joint damage of the kept groups plus the candidate (`None` when the size cap skipped it).
    pub damage: Option<f64>,
    /// Whether it was kept.
    pub kept: bool,
    /// Parameter share of the kept set after this step.
    pub param_share: f64,
}

/// The robust module set and how the search found it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModsRobust {
    /// The model's one-line description.
    pub model: String,
    /// The kept modules.
    pub modules: ModuleSet,
    /// Their share of the parameters of all q/k/v/o/gate/up/down modules.
    pub param_share: f64,
    /// Damage when every group changes together.
    pub reference_damage: f64,
    /// The absolute damage limit (`tolerance * reference_damage`).
    pub limit: f64,
    /// Every candidate in the order tried (the proxy curve).
    pub steps: Vec<SearchStep>,
    /// The settings used.
    pub config: SearchConfig,
    /// Wall seconds.
    pub seconds: f64,
}

impl ModsRobust {
    /// The proxy curve: joint damage per candidate tried, with the limit.
    pub fn chart(&self) -> Svg {
        let tried: Vec<(f64, f64)> =
            self.steps.iter().enumerate().filter_map(|(i, s)| Some((i as f64 + 1.0, s.damage?))).collect();
        let kept: Vec<(f64, f64)> = self
            .steps
            .iter()
            .enumerate()
            .filter(|(_, s)| s.kept)
            .filter_map(|(i, s)| Some((i as f64 + 1.0, s.damage?)))
            .collect();
        let n = self.steps.len().max(1) as f64;
        let series = [
            Series { label: "joint damage with candidate".into(), points: tried },
            Series { label: "kept".into(), points: kept },
            Series { label: "limit".into(), points: vec![(1.0, self.limit), (n, self.limit)] },
        ];
        line_chart("Search for Mods_Robust (most robust first)", "candidate", "joint damage", &series, None)
    }

    /// Chart plus a summary table, as one HTML block.
    pub fn html(&self) -> String {
        let kept: Vec<String> = self.modules.iter().map(|m| m.label()).collect();
        format!(
            "<div>{}<p>{} &middot; {} modules, {:.1}% of module parameters &middot; limit {:.3} \
             ({:.0}% of the all-modules damage {:.3}) &middot; {:.0}s</p><p><code>{}</code></p></div>",
            self.chart(),
            escape_html(&self.model),
            self.modules.len(),
            100.0 * self.param_share,
            self.limit,
            100.0 * self.config.tolerance,
            self.reference_damage,
            self.seconds,
            escape_html(&kept.join(" "))
        )
    }

    /// Inline display in evcxr.
    pub fn evcxr_display(&self) {
        emit(&self.html(), &self.to_string())
    }

    /// Writes `mods_robust.json` (what `tune --robust` and `export-plan` read) and `search.svg`.
    pub fn write(&self, dir: &std::path::Path) -> Result<()> {
        crate::fs::create_dir_all(dir)?;
        crate::fs::write_json(&dir.join("mods_robust.json"), self)?;
        self.chart().save(&dir.join("search.svg"))
    }
}

impl std::fmt::Display for ModsRobust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kept: Vec<String> = self.modules.iter().map(|m| m.label()).collect();
        write!(
            f,
            "Mods_Robust: {} modules ({:.1}% of module parameters), joint damage limit {:.3}: {}",
            self.modules.len(),
            100.0 * self.param_share,
            self.limit,
            kept.join(" ")
        )
    }
}

impl Analysis<'_> {
    /// Searches Mods_Robust with the measurement settings the matrix `rob` was made with:
    /// groups most robust first, each kept if the joint damage stays within the tolerance.
    ///
    /// ```no_run
    /// # use secure_tuning::{Model, data::*, probe::*, robustness::*, search::*};
    /// # let model = Model::load("default")?;
    /// # let probe = probe_all(&model, &ProbeData::default_twins()?)?;
    /// # let benign = split(&load_records(&default_data_dir().join("ift_general.jsonl"))?, "train");
    /// let analysis = Analysis::new(&model, &probe, &benign);
    /// let rob = analysis.robustness(&RobustnessConfig::default())?;
    /// let robust = analysis.search(&rob, &SearchConfig::default())?;
    /// println!("{robust}");
    /// # Ok::<(), secure_tuning::Error>(())
    /// ```
    pub fn search(&self, rob: &Robustness, config: &SearchConfig) -> Result<ModsRobust> {
        let start = Instant::now();
        let model = self.model();
        config.validate()?;
        rob.check_fits(model)?;
        let bench = self.bench(&rob.config)?;
        let all: ModuleSet = rob.ranking().iter().fold(ModuleSet::new(), |acc, (s, _)| acc.union(s));
        let total = model.num_params_of(&all) as f64;
        // Every joint change is averaged over the matrix's seeds, like its cells.
        let seeds = &rob.config.seeds;
        let joint = |set: &ModuleSet| -> Result<f64> {
            let mut sum = 0.0;
            for &seed in seeds {
                sum += bench.change_and_read(set, seed ^ config.seed)?.damage;
            }
            Ok(sum / seeds.len() as f64)
        };
        let reference_damage = joint(&all)?;
        let limit = config.tolerance * reference_damage;
        let candidates: Vec<(ModuleSet, f64)> =
            rob.ranking().into_iter().map(|(s, _)| (s.clone(), model.num_params_of(&s) as f64 / total)).collect();
        let mut progress = Task::new("search", candidates.len());
        let mut tried = 0;
        let (modules, steps) = greedy(&candidates, limit, config.max_share, |set| {
            let damage = joint(set)?;
            tried += 1;
            progress.update(tried, || {
                format!("{} modules tried jointly, damage {damage:.3} (limit {limit:.3})", set.len())
            });
            Ok(damage)
        })?;
        let param_share = model.num_params_of(&modules) as f64 / total;
        Ok(ModsRobust {
            model: model.to_string(),
            modules,
            param_share,
            reference_damage,
            limit,
            steps,
            config: config.clone(),
            seconds: start.elapsed().as_secs_f64(),
        })
    }
}

/// The greedy search itself, independent of how damage is measured: `candidates` (groups with
/// their parameter shares) in the order to try; `joint_damage(set)` measures changing `set`
/// as a whole. A candidate is kept when the joint damage of the kept set plus it is at most
/// `limit` and the share cap allows it.
///
/// ```
/// use secure_tuning::model::{ModuleId, ModuleKind, ModuleSet};
/// use secure_tuning::search::greedy;
/// let g = |l| (ModuleSet::from_iter([ModuleId::new(l, ModuleKind::Q)]), 0.1);
/// // Damage = number of modules: with limit 2, two groups fit.
/// let (kept, steps) = greedy(&[g(0), g(1), g(2)], 2.0, None, |s| Ok(s.len() as f64))?;
/// assert_eq!(kept.len(), 2);
/// assert!(!steps[2].kept);
/// # Ok::<(), secure_tuning::Error>(())
/// ```
pub fn greedy(
    candidates: &[(ModuleSet, f64)],
    limit: f64,
    max_share: Option<f64>,
    mut joint_damage: impl FnMut(&ModuleSet) -> Result<f64>,
) -> Result<(ModuleSet, Vec<SearchStep>)> {
    if !limit.is_finite() {
        return Err(Error::invalid("search limit", format!("{limit} is not a finite damage limit")));
    }
    let mut kept = ModuleSet::new();
    let mut share = 0.0;
    let mut steps = Vec::with_capacity(candidates.len());
    for (candidate, cand_share) in candidates {
        if max_share.is_some_and(|cap| share + cand_share > cap + 1e-12) {
            steps.push(SearchStep { candidate: candidate.clone(), damage: None, kept: false, param_share: share });
            continue;
        }
        let trial = kept.union(candidate);
        let damage = joint_damage(&trial)?;
        let keep = damage <= limit;
        if keep {
            kept = trial;
            share += cand_share;
        }
        steps.push(SearchStep { candidate: candidate.clone(), damage: Some(damage), kept: keep, param_share: share });
    }
    Ok((kept, steps))
}
