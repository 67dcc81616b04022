//! `secure-tuning reproduce`: the whole pipeline on one model, with every strategy compared
//! along its training trajectory (DESIGN.md sections 7-9, findings F1-F7).
//!
//! Steps: evaluate the base model; fit the probes (F2); measure robustness (F4) and search
//! Mods_Robust (F5); fine-tune with plain IFT, ML-LR, SWAT and the controls on the benign set,
//! evaluating every few steps (F1, F6, F7); compute the feature drift of every tuned model (F3).
//! Strategies are compared by their safety-utility trade-off curves (harmful-refusal rate
//! against task accuracy over training) over several seeds, since a prototype showed that any
//! reduced-LR set delays erosion and that comparing at one point misleads.

use crate::data::{benign_set_path, default_data_dir};
use crate::data::{load_records, split, Record};
use crate::display::{escape_html, line_chart, Series};
use crate::error::{Error, Result};
use crate::eval::{evaluate, EvalConfig, EvalReport};
use crate::fs::write_atomic;
use crate::model::{Model, ModuleSet};
use crate::probe::{drift, probe_all, Drift, ProbeData, ProbeReport};
use crate::robustness::{Mode, Robustness, RobustnessConfig};
use crate::search::{ModsRobust, SearchConfig};
use crate::tune::{random_modules, CurvePoint, MlLr, SafetyEvalSets};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

/// Settings of [`reproduce`]; [`ReproduceConfig::quick`] is the CI-sized one. As JSON (the CLI's
/// `reproduce --config FILE`), missing fields take their default values.
///
/// ```
/// use secure_tuning::reproduce::ReproduceConfig;
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
    /// The strategies to run, a subset of [`STRATEGIES`] (all by default).
    pub strategies: Vec<String>,
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
            robustness: RobustnessConfig { log_every_secs: Some(30.0), ..RobustnessConfig::default() },
            search: SearchConfig { log_every_secs: Some(30.0), ..SearchConfig::default() },
            strategies: STRATEGIES.iter().map(|s| s.to_string()).collect(),
        }
    }
}

impl ReproduceConfig {
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
    /// Strategy name (`plain`, `ml-lr`, ...).
    pub strategy: String,
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

/// The strategies in report order.
pub const STRATEGIES: [&str; 7] = ["plain", "ml-lr", "swat", "random-subset", "freeze-rest", "low-lr", "safety-mix"];

/// Runs the pipeline on `model` with the safety data in `data_dir`: `harmful.jsonl` (requests
/// with a refusal as `output`, split `train`/`eval`) and `harmless.jsonl` (their twins, same
/// splits), as in the default model's `data/` or as `secure-tuning align` writes them. The
/// held-out pairs are the probe's data and the evaluation's requests; the training refusals are
/// the safety-mix control's. The benign set is `cfg.benign`.
///
/// ```no_run
/// use secure_tuning::{Model, reproduce::{reproduce, ReproduceConfig}};
/// let model = Model::load("default")?;
/// let r = reproduce(&model, &secure_tuning::data::default_data_dir(), &ReproduceConfig::quick())?;
/// r.write("runs/reproduce".as_ref())?;
/// println!("{}", r.verdict);
/// # Ok::<(), secure_tuning::Error>(())
/// ```
pub fn reproduce(model: &Model, data_dir: &Path, cfg: &ReproduceConfig) -> Result<Reproduction> {
    let start = Instant::now();
    let log = |msg: String| println!("[reproduce {:>4.0}s] {msg}", start.elapsed().as_secs_f64());
    if let Some(bad) = cfg.strategies.iter().find(|s| !STRATEGIES.contains(&s.as_str())) {
        return Err(Error::invalid(
            "strategies",
            format!("unknown strategy `{bad}`; choose from {}", STRATEGIES.join(", ")),
        ));
    }
    let wanted = |name: &str| cfg.strategies.iter().any(|s| s == name);
    let harmful_all = load_records(&data_dir.join("harmful.jsonl"))?;
    let benign = split(&load_records(&benign_set_path(&default_data_dir(), &cfg.benign))?, "train");
    let sets = eval_sets(data_dir, &cfg.benign, cfg.eval_limit)?;
    let eval_cfg = EvalConfig { max_new_tokens: cfg.max_new_tokens, ..EvalConfig::default() };

    let base = evaluate(model, &sets.harmful, &sets.harmless, &sets.tasks, &eval_cfg)?;
    log(format!("base: {base}"));
    let probe = probe_all(model, &ProbeData::twins_in(data_dir)?)?;
    log(format!("{probe}"));
    let robustness = Robustness::measure(model, &probe, &benign, &cfg.robustness)?;
    log(format!("robustness measured in {:.0}s", robustness.seconds));
    let mods_robust = robustness.search(model, &probe, &benign, &cfg.search)?;
    log(format!("{mods_robust}"));

    // Safety mix: refusal examples from the alignment data's training split.
    let refusals = split(&harmful_all, "train");
    let n_mix = ((benign.len() as f64) * cfg.safety_mix_share / (1.0 - cfg.safety_mix_share)).round() as usize;
    let mut mixed = benign.clone();
    mixed.extend(refusals.iter().take(n_mix).cloned());

    let plan = |robust: ModuleSet, ratio: f64, seed: u64| {
        MlLr::builder()
            .robust(robust)
            .ratio(ratio)
            .lr(cfg.lr)
            .steps(cfg.steps)
            .batch_size(cfg.batch_size)
            .seed(seed)
            .log_every_secs(None)
    };
    let robust = mods_robust.modules.clone();
    let low_scale = plan(robust.clone(), cfg.ratio, 0).build()?.mean_scale(model)?;
    let mut jobs: Vec<Job> = Vec::new();
    for (i, &seed) in cfg.seeds.iter().enumerate() {
        jobs.push(Job {
            strategy: "plain",
            seed,
            set: None,
            plan: plan(ModuleSet::new(), 1.0, seed).build()?,
            data: &benign,
        });
        jobs.push(Job {
            strategy: "ml-lr",
            seed,
            set: None,
            plan: plan(robust.clone(), cfg.ratio, seed).build()?,
            data: &benign,
        });
        // Seed i trains on random set i (mod the number of sets): seeds and sets vary together.
        let s = i % cfg.random_sets.max(1);
        let set = random_modules(model, mods_robust.param_share, 1000 + s as u64);
        jobs.push(Job {
            strategy: "random-subset",
            seed,
            set: Some(s),
            plan: plan(set, cfg.ratio, seed).build()?,
            data: &benign,
        });
    }
    let seed0 = cfg.seeds.first().copied().unwrap_or(0);
    let swat = plan(robust.clone(), 1.0, seed0).swat(cfg.swat_warmup).build()?;
    jobs.push(Job { strategy: "swat", seed: seed0, set: None, plan: swat, data: &benign });
    jobs.push(Job {
        strategy: "freeze-rest",
        seed: seed0,
        set: None,
        plan: plan(robust.clone(), 0.0, seed0).build()?,
        data: &benign,
    });
    let low = plan(ModuleSet::new(), 1.0, seed0).lr(cfg.lr * low_scale).build()?;
    jobs.push(Job { strategy: "low-lr", seed: seed0, set: None, plan: low, data: &benign });
    jobs.push(Job {
        strategy: "safety-mix",
        seed: seed0,
        set: None,
        plan: plan(ModuleSet::new(), 1.0, seed0).build()?,
        data: &mixed,
    });

    jobs.retain(|j| wanted(j.strategy));
    if jobs.is_empty() {
        return Err(Error::invalid("strategies", "none given; name at least one"));
    }
    let mut runs = Vec::new();
    for (i, Job { strategy: name, seed, set, plan, data }) in jobs.iter().enumerate() {
        let mut points = Vec::new();
        let tuned = plan.fit_observed(model, data, cfg.every, |m, r| {
            points.push(CurvePoint::measure(m, r, cfg.every, &sets, &eval_cfg)?);
            Ok(())
        })?;
        let drift = drift(model, &tuned.model, &probe)?;
        let p = points.last().copied().expect("at least the final point");
        log(format!(
            "run {}/{} {name} seed {seed}{}: harmful refused {:.2}, task accuracy {:.2}, {:.0}s training",
            i + 1,
            jobs.len(),
            set.map_or(String::new(), |s| format!(" set {s}")),
            p.harmful_refusal,
            p.task_accuracy,
            tuned.report.seconds
        ));
        runs.push(Run {
            strategy: name.to_string(),
            seed: *seed,
            set: *set,
            points,
            drift,
            train_seconds: tuned.report.seconds,
        });
    }
    let summary = summarise(&base, &runs);
    let verdict = verdict(&runs, &summary);
    log(verdict.clone());
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

/// One fine-tuning run to do.
struct Job<'a> {
    strategy: &'static str,
    seed: u64,
    set: Option<usize>,
    plan: MlLr,
    data: &'a [Record],
}

fn summarise(base: &EvalReport, runs: &[Run]) -> Vec<StrategyRow> {
    let mut rows = vec![StrategyRow {
        name: "base".into(),
        harmful_refusal_rate: base.harmful.as_ref().map_or(f64::NAN, |s| s.refusal_rate),
        harmless_refusal_rate: base.harmless.as_ref().map_or(f64::NAN, |s| s.refusal_rate),
        task_accuracy: base.tasks.as_ref().map_or(f64::NAN, |s| s.accuracy),
        drift: 0.0,
        train_seconds: 0.0,
        runs: 1,
        refusal_spread: 0.0,
    }];
    for name in STRATEGIES {
        let mine: Vec<&Run> = runs.iter().filter(|r| r.strategy == name).collect();
        if mine.is_empty() {
            continue;
        }
        let n = mine.len() as f64;
        let last =
            |f: fn(&CurvePoint) -> f64| mine.iter().map(|r| f(r.points.last().expect("points"))).sum::<f64>() / n;
        let refusals: Vec<f64> = mine.iter().map(|r| r.points.last().expect("points").harmful_refusal).collect();
        let spread = refusals.iter().copied().fold(f64::NEG_INFINITY, f64::max)
            - refusals.iter().copied().fold(f64::INFINITY, f64::min);
        rows.push(StrategyRow {
            name: name.to_string(),
            harmful_refusal_rate: last(|p| p.harmful_refusal),
            harmless_refusal_rate: last(|p| p.harmless_refusal),
            task_accuracy: last(|p| p.task_accuracy),
            drift: mine.iter().map(|r| r.drift.cosine_drift).sum::<f64>() / n,
            train_seconds: mine.iter().map(|r| r.train_seconds).sum::<f64>() / n,
            runs: mine.len(),
            refusal_spread: spread,
        });
    }
    rows
}

/// Harmful-refusal rate at a given task accuracy, read off a run's curve by linear
/// interpolation (the curve's points are ordered by training step).
fn refusal_at(points: &[CurvePoint], accuracy: f64) -> Option<f64> {
    for w in points.windows(2) {
        let (a, b) = (w[0], w[1]);
        let (lo, hi) = (a.task_accuracy.min(b.task_accuracy), a.task_accuracy.max(b.task_accuracy));
        if (lo..=hi).contains(&accuracy) {
            let t = if hi > lo { (accuracy - a.task_accuracy) / (b.task_accuracy - a.task_accuracy) } else { 0.0 };
            return Some(a.harmful_refusal + t * (b.harmful_refusal - a.harmful_refusal));
        }
    }
    None
}

fn mean_refusal_at(runs: &[Run], name: &str, accuracy: f64) -> Option<f64> {
    let v: Vec<f64> =
        runs.iter().filter(|r| r.strategy == name).filter_map(|r| refusal_at(&r.points, accuracy)).collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn verdict(runs: &[Run], rows: &[StrategyRow]) -> String {
    let row = |n: &str| rows.iter().find(|r| r.name == n);
    let (Some(base), Some(plain), Some(mllr)) = (row("base"), row("plain"), row("ml-lr")) else {
        return "not enough runs for a verdict".into();
    };
    let lost_plain = base.harmful_refusal_rate - plain.harmful_refusal_rate;
    let lost_mllr = base.harmful_refusal_rate - mllr.harmful_refusal_rate;
    let kept = if lost_plain > 0.0 { 1.0 - lost_mllr / lost_plain } else { f64::NAN };
    let mut text = format!(
        "At the end of training, plain IFT lost {:.0} points of harmful-refusal rate and ML-LR {:.0} ({:.0}% of plain's \
         loss kept), with task accuracy {:.2} vs {:.2}.",
        100.0 * lost_plain,
        100.0 * lost_mllr,
        100.0 * kept,
        mllr.task_accuracy,
        plain.task_accuracy
    );
    // Equal-utility comparison: refusal at the task accuracy every strategy reached.
    let reached = ["plain", "ml-lr", "random-subset"]
        .iter()
        .filter_map(|n| {
            runs.iter()
                .filter(|r| r.strategy == *n)
                .map(|r| r.points.iter().map(|p| p.task_accuracy).fold(0.0, f64::max))
                .reduce(f64::min)
        })
        .reduce(f64::min);
    if let Some(acc) = reached.filter(|a| *a > 0.0) {
        let at = acc * 0.9;
        let r = |n| mean_refusal_at(runs, n, at).map_or("n/a".to_string(), |v| format!("{v:.2}"));
        text.push_str(&format!(
            " At equal task accuracy {at:.2}: harmful-refusal plain {}, ML-LR {}, random subsets {}.",
            r("plain"),
            r("ml-lr"),
            r("random-subset")
        ));
        let (m, rnd) = (mean_refusal_at(runs, "ml-lr", at), mean_refusal_at(runs, "random-subset", at));
        if let (Some(m), Some(rnd)) = (m, rnd) {
            text.push_str(if m > rnd + 0.05 {
                " ML-LR's curve lies above the random sets'."
            } else if m + 0.05 < rnd {
                " The random sets did better than ML-LR: the robust set is not what protects here."
            } else {
                " ML-LR and the random sets are within 5 points: reducing the LR on a large set is what helps, not \
                 the choice of set."
            });
        }
    }
    text
}

impl Reproduction {
    /// Reads a `reproduction.json` that [`Reproduction::write`] wrote, e.g. a committed result to
    /// show again without rerunning it.
    ///
    /// ```
    /// use secure_tuning::reproduce::Reproduction;
    /// let err = Reproduction::read_json("no/such/reproduction.json".as_ref()).unwrap_err();
    /// assert!(err.to_string().contains("no/such/reproduction.json"));
    /// ```
    pub fn read_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        serde_json::from_str(&text).map_err(|e| {
            Error::invalid(
                format!("`{}`", path.display()),
                format!("not a reproduction.json written by `secure-tuning reproduce`: {e}"),
            )
        })
    }

    /// The row of a strategy.
    pub fn row(&self, name: &str) -> Option<&StrategyRow> {
        self.summary.iter().find(|r| r.name == name)
    }

    /// The trade-off chart: harmful-refusal rate against task accuracy along every run.
    pub fn tradeoff_chart(&self) -> String {
        let series: Vec<Series> = self
            .runs
            .iter()
            .filter(|r| ["plain", "ml-lr", "random-subset", "swat"].contains(&r.strategy.as_str()))
            .map(|r| Series {
                label: format!("{} s{}{}", r.strategy, r.seed, r.set.map_or(String::new(), |s| format!(" set{s}"))),
                points: r.points.iter().map(|p| (p.task_accuracy, p.harmful_refusal)).collect(),
            })
            .collect();
        line_chart(
            "Safety-utility trade-off along training",
            "task accuracy",
            "harmful refusal rate",
            &series,
            Some((0.0, 1.0)),
        )
    }

    /// Harmful-refusal rate over training steps, one line per run.
    pub fn refusal_chart(&self) -> String {
        let series: Vec<Series> = self
            .runs
            .iter()
            .map(|r| Series {
                label: format!("{} s{}{}", r.strategy, r.seed, r.set.map_or(String::new(), |s| format!(" set{s}"))),
                points: r.points.iter().map(|p| (p.step as f64, p.harmful_refusal)).collect(),
            })
            .collect();
        line_chart("Harmful-refusal rate during fine-tuning", "step", "harmful refusal rate", &series, Some((0.0, 1.0)))
    }

    /// The summary table as HTML.
    pub fn summary_html(&self) -> String {
        let rows: String = self
            .summary
            .iter()
            .map(|r| {
                format!(
                    "<tr><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.4}</td><td>{:.0}</td><td>{}</td><td>{:.2}</td></tr>",
                    r.name, r.harmful_refusal_rate, r.harmless_refusal_rate, r.task_accuracy, r.drift, r.train_seconds, r.runs, r.refusal_spread
                )
            })
            .collect();
        format!(
            "<table><tr><th>strategy</th><th>harmful refused</th><th>harmless refused</th><th>task accuracy</th>\
             <th>drift</th><th>train s</th><th>runs</th><th>refusal spread</th></tr>{rows}</table>"
        )
    }

    /// The whole report as one self-contained HTML page (inline SVG, no scripts).
    pub fn html(&self) -> String {
        format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>secure-tuning reproduction</title>\
             <style>body{{font-family:sans-serif;max-width:980px;margin:auto}}td,th{{padding:2px 8px;text-align:right}}</style>\
             </head><body><h1>secure-tuning reproduction</h1><p>{} &middot; {:.0}s</p>\
             <h2>Summary</h2>{}<p>{}</p>\
             <h2>F1, F6, F7: trade-off along training</h2>{}{}\
             <h2>F2: security feature classifier</h2>{}\
             <h2>F4: module robustness</h2>{}\
             <h2>F5: Mods_Robust</h2>{}</body></html>",
            escape_html(&self.model),
            self.seconds,
            self.summary_html(),
            escape_html(&self.verdict),
            self.tradeoff_chart(),
            self.refusal_chart(),
            self.probe.html(),
            self.robustness.html(),
            self.mods_robust.html()
        )
    }

    /// Writes `report.html`, the SVG charts, `summary.json` and `reproduction.json` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
        let summary = serde_json::json!({ "model": self.model, "strategies": self.summary, "verdict": self.verdict });
        let files: [(&str, Vec<u8>); 7] = [
            ("report.html", self.html().into_bytes()),
            ("tradeoff.svg", self.tradeoff_chart().into_bytes()),
            ("refusal.svg", self.refusal_chart().into_bytes()),
            ("probe_accuracy.svg", self.probe.chart().into_bytes()),
            ("robustness_heatmap.svg", self.robustness.heatmap().into_bytes()),
            ("summary.json", serde_json::to_vec_pretty(&summary).expect("summary serialises")),
            ("reproduction.json", serde_json::to_vec_pretty(self).expect("reproduction serialises")),
        ];
        for (name, bytes) in files {
            write_atomic(&dir.join(name), &bytes)?;
        }
        Ok(())
    }
}
