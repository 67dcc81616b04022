//! [`Analysis`]: the model, its probe and the benign data, held once, from which robustness is
//! measured ([`Analysis::robustness`]) and Mods_Robust searched ([`Analysis::search`]).

use super::bench::{Bench, Change, TASK_GAIN_FLOOR};
use super::{group_label, group_set, layer_groups, Normalize, RawScore, Robustness, RobustnessConfig};
use crate::data::Record;
use crate::error::Result;
use crate::model::Model;
use crate::probe::ProbeReport;
use crate::progress::Task;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

/// What the robustness analysis and the search read: a model, its security-feature probes
/// (the frozen proxy probe and the harmful prompts come from [`ProbeReport::proxy`] and its
/// data) and the benign IFT data the update mode trains on. The measuring bench built from them
/// (the model's own refusals, its features) is kept between calls with the same settings, so a
/// search after a measurement does not build it again.
///
/// ```no_run
/// use secure_tuning::{Model, data::*, probe::*, robustness::*, search::SearchConfig};
/// let model = Model::load("default")?;
/// let probe = probe_all(&model, &ProbeData::default_twins()?)?;
/// let benign = split(&load_records(&default_data_dir().join("ift_general.jsonl"))?, "train");
/// let analysis = Analysis::new(&model, &probe, &benign);
/// let rob = analysis.robustness(&RobustnessConfig::default())?;
/// let robust = analysis.search(&rob, &SearchConfig::default())?;
/// rob.heatmap().save("heatmap.svg".as_ref())?;
/// # Ok::<(), secure_tuning::Error>(())
/// ```
///
/// [`Analysis::new`] borrows its inputs; [`Analysis::owning`] takes them, for a notebook, where a
/// value kept from one cell to the next may not borrow from another.
pub struct Analysis<'a> {
    model: Held<'a, Model>,
    probe: Held<'a, ProbeReport>,
    benign: Held<'a, [Record]>,
    bench: RefCell<Option<(RobustnessConfig, Rc<Bench<'a>>)>>,
}

/// An input of the analysis: borrowed from the caller, or owned by the analysis and shared with
/// its bench.
pub(crate) enum Held<'a, T: ?Sized> {
    Borrowed(&'a T),
    Shared(Arc<T>),
}

impl<T: ?Sized> Clone for Held<'_, T> {
    fn clone(&self) -> Self {
        match self {
            Held::Borrowed(r) => Held::Borrowed(r),
            Held::Shared(shared) => Held::Shared(shared.clone()),
        }
    }
}

impl<T: ?Sized> std::ops::Deref for Held<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        match self {
            Held::Borrowed(r) => r,
            Held::Shared(shared) => shared,
        }
    }
}

impl Analysis<'static> {
    /// The analysis of `model` with `probe` and the benign IFT records `benign`, which it keeps:
    /// the form an evcxr notebook can hold from one cell to the next (pass clones there, as
    /// [`Model::clone`] copies only the trainable weights).
    ///
    /// ```no_run
    /// use secure_tuning::{Model, data::*, probe::*, robustness::*};
    /// let model = Model::load("default")?;
    /// let probe = probe_all(&model, &ProbeData::default_twins()?)?;
    /// let analysis = Analysis::owning(model.clone(), probe.clone(), Vec::new());
    /// let rob = analysis.robustness(&RobustnessConfig { mode: Mode::Perturb, ..Default::default() })?;
    /// # Ok::<(), secure_tuning::Error>(())
    /// ```
    pub fn owning(model: Model, probe: ProbeReport, benign: Vec<Record>) -> Self {
        Analysis {
            model: Held::Shared(Arc::new(model)),
            probe: Held::Shared(Arc::new(probe)),
            benign: Held::Shared(Arc::from(benign)),
            bench: RefCell::new(None),
        }
    }
}

impl<'a> Analysis<'a> {
    /// The analysis of `model` with `probe` and the benign IFT records `benign`, borrowed.
    pub fn new(model: &'a Model, probe: &'a ProbeReport, benign: &'a [Record]) -> Self {
        Analysis {
            model: Held::Borrowed(model),
            probe: Held::Borrowed(probe),
            benign: Held::Borrowed(benign),
            bench: RefCell::new(None),
        }
    }

    /// The model analysed.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The bench for `config`, built on first use and kept while the settings stay the same.
    pub(crate) fn bench(&self, config: &RobustnessConfig) -> Result<Rc<Bench<'a>>> {
        if let Some((cfg, bench)) = self.bench.borrow().as_ref() {
            if cfg == config {
                return Ok(bench.clone());
            }
        }
        let bench = Rc::new(Bench::new(self.model.clone(), &self.probe, &self.benign, config)?);
        *self.bench.borrow_mut() = Some((config.clone(), bench.clone()));
        Ok(bench)
    }

    /// Measures every (kind, layer group) of the model as `config` says: each group is changed
    /// alone, the damage read and divided by the change ([`Normalize`]).
    pub fn robustness(&self, config: &RobustnessConfig) -> Result<Robustness> {
        let start = Instant::now();
        let bench = self.bench(config)?;
        let layer_groups = layer_groups(self.model.config().num_layers, config.layers_per_group);
        let cells: Vec<(usize, usize)> =
            (0..config.kinds.len()).flat_map(|k| (0..layer_groups.len()).map(move |g| (k, g))).collect();
        let total = cells.len() * config.seeds.len();
        let mut raw = Vec::with_capacity(total);
        let mut progress = Task::new("robustness", total);
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
                progress.update(raw.len(), || {
                    format!(
                        "{kind} {}: damage {damage:.3}, rel change {rel_change:.4}, task gain {task_gain:.3}",
                        group_label(layer_groups[g])
                    )
                });
            }
        }
        let mut scores = vec![vec![0.0; layer_groups.len()]; config.kinds.len()];
        for r in &raw {
            let k = config.kinds.iter().position(|&x| x == r.kind).unwrap_or(0);
            scores[k][r.group] += r.sensitivity / config.seeds.len() as f64;
        }
        Ok(Robustness {
            model: self.model.to_string(),
            num_layers: self.model.config().num_layers,
            kinds: config.kinds.clone(),
            layer_groups,
            scores,
            raw,
            config: config.clone(),
            proxy_layer: bench.probe.layer,
            seconds: start.elapsed().as_secs_f64(),
        })
    }
}
