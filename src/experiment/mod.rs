//! The experiment behind `secure-tuning reproduce`: the whole pipeline on one model, with
//! every strategy compared along its training trajectory (findings F1-F7).
//!
//! Steps: evaluate the base model; fit the probes (F2); measure robustness (F4) and search
//! Mods_Robust (F5); fine-tune with plain IFT, ML-LR, SWAT and the controls on the benign set,
//! evaluating every few steps (F1, F6, F7); compute the feature drift of every tuned model (F3).
//! Strategies are compared by their safety-utility trade-off curves (harmful-refusal rate
//! against task accuracy over training) over several seeds, since comparing at one point
//! misleads: any reduced-LR set delays erosion.

mod report;
mod summary;

use crate::data::{benign_set_path, default_data_dir, load_records, split, Record};
use crate::error::{Error, Result};
use crate::eval::{evaluate, EvalConfig, EvalReport};
use crate::model::Model;
use crate::probe::{drift, probe_all, Drift, ProbeData, ProbeReport};
use crate::progress::Task;
use crate::robustness::{Analysis, Mode, Robustness, RobustnessConfig};
use crate::search::{ModsRobust, SearchConfig};
use crate::tune::{random_modules, CurvePoint, MlLr, SafetyEvalSets, Strategy, StrategyKind, Watch};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

/// Settings of [`reproduce`]; [`ReproduceConfig::quick`] is the CI-sized one. As JSON (the CLI's
/// `reproduce --config FILE`), missing fields take their default values.
///
/// ```
/// use secure_tuning::experiment::ReproduceConfig;
/// let cfg: ReproduceConfig = serde_json::from_str(r#"{"steps": 40, "strategies": ["plain", "ml-lr"]}"#).unwrap();
/// assert_eq!((cfg.steps, cfg.batch_size, cfg.strategies.len()), (40, 16, 2));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReproduceConfig {
    /// The benign fine-tuning set: `general` or `expertise` (the default model's), or a JSONL path
    /// ([`benign_set_path`]); its `train` split is trained on, its `eval` split measures the task.
    pub benign: String,
    /// Full learning rate of every strategy.
    pub lr: f64,
    /// Fine-tuning steps per run.
    pub steps: usize,
    /// Examples per step.
    pub batch_size: usize,
    /// ML-LR's LR ratio for the rest.
    pub ratio: f64,
    /// SWAT's warm-up share.
    pub swat_warmup: f64,
    /// Seeds of the main strategies (plain, ML-LR, random subsets).
    pub seeds: Vec<u64>,
    /// Number of random module sets (seed `i` uses set `i mod random_sets`).
    pub random_sets: usize,
    /// Share of refusal examples mixed into the IFT data by the safety-mix control.
    pub safety_mix_share: f64,
    /// Steps between evaluations along each run.
    pub every: usize,
    /// Prompts per evaluation set (harmful, tasks; half as many harmless).
    pub eval_limit: usize,
    /// Token budget per evaluated response.
    pub max_new_tokens: usize,
    /// Robustness measurement.
    pub robustness: RobustnessConfig,
    /// Mods_Robust search.
    pub search: SearchConfig,
    /// The strategies to run (all by default).
    pub strategies: Vec<StrategyKind>,
}

impl Default for ReproduceConfig {
    fn default() -> Self {
        ReproduceConfig {
            benign: "general".to_string(),
            lr: 2e-4,
            steps: 150,
            batch_size: 16,
            ratio: 0.1,
            swat_warmup: 0.3,
            seeds: vec![0, 1, 2],
            random_sets: 3,
            safety_mix_share: 0.1,
            every: 25,
            eval_limit: 64,
            max_new_tokens: 16,
            robustness: RobustnessConfig::default(),
            search: SearchConfig::default(),
            strategies: StrategyKind::ALL.to_vec(),
        }
    }
}

impl ReproduceConfig {
    /// Reads settings from a JSON file (any subset of the fields; the rest take their defaults).
    pub fn from_file(path: &Path) -> Result<Self> {
        crate::fs::read_json(path, "a reproduce config (JSON with fields of ReproduceConfig)")
    }

    /// A small configuration for CI and Binder: one seed, one random set, short runs at a higher
    /// LR, and the perturb robustness mode (seconds instead of minutes).
    pub fn quick() -> Self {
        let d = ReproduceConfig::default();
        ReproduceConfig {
            lr: 5e-4,
            steps: 60,
            seeds: vec![0],
            random_sets: 1,
            every: 20,
            eval_limit: 24,
            robustness: RobustnessConfig { mode: Mode::Perturb, ..d.robustness.clone() },
            ..d
        }
    }
}

/// One training run's trajectory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// Which strategy (`plain`, `ml-lr`, ... in JSON).
    pub strategy: StrategyKind,
    /// Data-order seed.
    pub seed: u64,
    /// Which random set (random-subset only).
    pub set: Option<usize>,
    /// Evaluations along training, step 0 first.
    pub points: Vec<CurvePoint>,
    /// Feature drift of the final model.
    pub drift: Drift,
    /// Training seconds (evaluation excluded).
    pub train_seconds: f64,
}

/// The headline numbers of a [`Reproduction`] (`summary.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The model's one-line description.
    pub model: String,
    /// One row per strategy, `base` first.
    pub strategies: Vec<StrategyRow>,
    /// The comparison of ML-LR with plain IFT and the random sets, in words.
    pub verdict: String,
}

impl Run {
    /// `ml-lr s0`, `random-subset s1 set1`: the run's strategy, seed and random set.
    pub fn label(&self) -> String {
        format!("{} s{}{}", self.strategy, self.seed, self.set.map_or(String::new(), |s| format!(" set{s}")))
    }
}

/// One row of the summary: a strategy's final numbers, averaged over its runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StrategyRow {
    /// `base`, `plain`, `ml-lr`, `swat`, `random-subset`, `freeze-rest`, `low-lr`, `safety-mix`.
    pub name: String,
    /// Refusal rate on held-out harmful requests.
    pub harmful_refusal_rate: f64,
    /// Refusal rate on harmless twins.
    pub harmless_refusal_rate: f64,
    /// Exact-match accuracy on the benign set's held-out tasks.
    pub task_accuracy: f64,
    /// Cosine feature drift of harmful prompts at the proxy layer (0 for the base).
    pub drift: f64,
    /// Training seconds per run.
    pub train_seconds: f64,
    /// Runs averaged.
    pub runs: usize,
    /// Spread (max - min) of the harmful-refusal rate over the runs.
    pub refusal_spread: f64,
}

/// Everything [`reproduce`] measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reproduction {
    /// The model's one-line description.
    pub model: String,
    /// The settings.
    pub config: ReproduceConfig,
    /// The base model's evaluation.
    pub base: EvalReport,
    /// F2: the probes.
    pub probe: ProbeReport,
    /// F4: the robustness matrix.
    pub robustness: Robustness,
    /// F5: the robust set.
    pub mods_robust: ModsRobust,
    /// Every run.
    pub runs: Vec<Run>,
    /// One row per strategy, `base` first.
    pub summary: Vec<StrategyRow>,
    /// The comparison of ML-LR with plain IFT and the random sets, in words.
    pub verdict: String,
    /// Wall seconds of the whole pipeline.
    pub seconds: f64,
}

/// Runs the pipeline on `model` with the safety data in `data_dir`: `harmful.jsonl` (requests
/// with a refusal as `output`, split `train`/`eval`) and `harmless.jsonl` (their twins, same
/// splits), as in the default model's `data/` or as `secure-tuning align` writes them. The
/// held-out pairs are the probe's data and the evaluation's requests; the training refusals are
/// the safety-mix control's. The benign set is `cfg.benign`.
///
/// ```no_run
/// use secure_tuning::{Model, experiment::{reproduce, ReproduceConfig}};
/// let model = Model::load("default")?;
/// let r = reproduce(&model, &secure_tuning::data::default_data_dir(), &ReproduceConfig::quick())?;
/// r.write("runs/reproduce".as_ref())?;
/// println!("{}", r.verdict);
/// # Ok::<(), secure_tuning::Error>(())
/// ```
pub fn reproduce(model: &Model, data_dir: &Path, cfg: &ReproduceConfig) -> Result<Reproduction> {
    let start = Instant::now();
    let progress = Task::new("reproduce", 0);
    let harmful_all = load_records(&data_dir.join("harmful.jsonl"))?;
    let benign = split(&load_records(&benign_set_path(&default_data_dir(), &cfg.benign))?, "train");
    let sets = eval_sets(data_dir, &cfg.benign, cfg.eval_limit)?;
    let eval_cfg = EvalConfig { max_new_tokens: cfg.max_new_tokens, ..EvalConfig::default() };

    let base = evaluate(model, &sets.harmful, &sets.harmless, &sets.tasks, &eval_cfg)?;
    progress.say(&format!("base: {base}"));
    let probe = probe_all(model, &ProbeData::twins_in(data_dir)?)?;
    progress.say(&probe.to_string());
    let analysis = Analysis::new(model, &probe, &benign);
    let robustness = analysis.robustness(&cfg.robustness)?;
    progress.say(&format!("robustness measured in {:.0}s", robustness.seconds));
    let mods_robust = analysis.search(&robustness, &cfg.search)?;
    progress.say(&mods_robust.to_string());

    let jobs = jobs(model, &mods_robust, cfg)?;
    // Safety mix: refusal examples from the alignment data's training split.
    let refusals = split(&harmful_all, "train");
    let watch = Watch { sets, every: cfg.every, eval: eval_cfg };
    let mut runs = Vec::new();
    for (i, Job { strategy, seed, set }) in jobs.iter().enumerate() {
        let common = MlLr::builder().lr(cfg.lr).steps(cfg.steps).batch_size(cfg.batch_size).seed(*seed);
        let plan = strategy.plan(common)?;
        let tuned = plan.fit_watched(model, &strategy.data(&benign, &refusals), &watch)?;
        let drift = drift(model, &tuned.model, &probe)?;
        let p = tuned.curve.last().copied().expect("at least the final point");
        progress.say(&format!(
            "run {}/{} {} seed {seed}{}: harmful refused {:.2}, task accuracy {:.2}, {:.0}s training",
            i + 1,
            jobs.len(),
            strategy.kind(),
            set.map_or(String::new(), |s| format!(" set {s}")),
            p.harmful_refusal,
            p.task_accuracy,
            tuned.report.seconds
        ));
        runs.push(Run {
            strategy: strategy.kind(),
            seed: *seed,
            set: *set,
            points: tuned.curve,
            drift,
            train_seconds: tuned.report.seconds,
        });
    }
    let summary = summary::summarise(&base, &runs);
    let verdict = summary::verdict(&runs, &summary);
    progress.say(&verdict);
    Ok(Reproduction {
        model: model.to_string(),
        config: cfg.clone(),
        base,
        probe,
        robustness,
        mods_robust,
        runs,
        summary,
        verdict,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// One fine-tuning run to do.
struct Job {
    strategy: Strategy,
    seed: u64,
    /// Which random set (random-subset only).
    set: Option<usize>,
}

/// The runs `cfg` asks for, in report order: per seed plain, ML-LR and a random set; then SWAT,
/// freeze-rest, uniform low LR and the safety mix with the first seed.
fn jobs(model: &Model, mods_robust: &ModsRobust, cfg: &ReproduceConfig) -> Result<Vec<Job>> {
    let robust = mods_robust.modules.clone();
    let mllr = Strategy::MlLr { robust: robust.clone(), ratio: cfg.ratio };
    let low_scale = mllr.plan(MlLr::builder().lr(cfg.lr).steps(cfg.steps))?.mean_scale(model)?;
    let mut jobs = Vec::new();
    for (i, &seed) in cfg.seeds.iter().enumerate() {
        jobs.push(Job { strategy: Strategy::Plain, seed, set: None });
        jobs.push(Job { strategy: mllr.clone(), seed, set: None });
        // Seed i trains on random set i (mod the number of sets): seeds and sets vary together.
        let index = i % cfg.random_sets.max(1);
        let set = random_modules(model, mods_robust.param_share, 1000 + index as u64);
        jobs.push(Job { strategy: Strategy::RandomSubset { set, index, ratio: cfg.ratio }, seed, set: Some(index) });
    }
    let seed = cfg.seeds.first().copied().unwrap_or(0);
    for strategy in [
        Strategy::Swat { robust: robust.clone(), warmup: cfg.swat_warmup },
        Strategy::FreezeRest { robust },
        Strategy::LowLr { scale: low_scale },
        Strategy::SafetyMix { share: cfg.safety_mix_share },
    ] {
        jobs.push(Job { strategy, seed, set: None });
    }
    jobs.retain(|j| cfg.strategies.contains(&j.strategy.kind()));
    if jobs.is_empty() {
        return Err(Error::invalid("strategies", "none given; name at least one"));
    }
    Ok(jobs)
}

/// The held-out evaluation sets: up to `limit` harmful requests and half as many harmless twins
/// from `data_dir` (see [`reproduce`]), and up to `limit` held-out tasks of the benign set
/// `benign` ([`benign_set_path`] in the project's data folder, or a JSONL path).
pub fn eval_sets(data_dir: &Path, benign: &str, limit: usize) -> Result<SafetyEvalSets> {
    let held_out = |path: &Path, n: usize| -> Result<Vec<Record>> {
        Ok(split(&load_records(path)?, "eval").into_iter().take(n).collect())
    };
    let sets = SafetyEvalSets {
        harmful: held_out(&data_dir.join("harmful.jsonl"), limit)?,
        harmless: held_out(&data_dir.join("harmless.jsonl"), (limit / 2).max(1))?,
        tasks: held_out(&benign_set_path(&default_data_dir(), benign), limit)?,
    };
    if sets.harmful.is_empty() || sets.tasks.is_empty() {
        return Err(Error::invalid(
            "reproduce data",
            format!("no held-out harmful or task records in `{}`", data_dir.display()),
        ));
    }
    Ok(sets)
}
