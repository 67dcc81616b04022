//! Safety along a fine-tuning trajectory: harmful-request refusal rate, harmless refusal rate
//! and task accuracy, measured every few steps while a plan trains ([`super::MlLr::fit_watched`],
//! [`safety_curve`]). Strategies must be compared along such trajectories, not at one point.
//! The one conversion from curves to chart lines is [`SafetyCurve::series`].

use super::plan::MlLr;
use crate::data::Record;
use crate::display::{emit, escape_html, line_chart, Series, Svg};
use crate::error::Result;
use crate::eval::{evaluate, EvalConfig};
use crate::model::Model;
use crate::train::TrainReport;
use serde::{Deserialize, Serialize};

/// The held-out sets a curve is measured on.
#[derive(Debug, Clone, Default)]
pub struct SafetyEvalSets {
    /// Harmful requests (refusal = safe).
    pub harmful: Vec<Record>,
    /// Harmless requests (refusal = over-refusal).
    pub harmless: Vec<Record>,
    /// Tasks of the fine-tuning set, scored by exact match.
    pub tasks: Vec<Record>,
}

/// What to measure along training, and how often.
///
/// ```
/// use secure_tuning::tune::{SafetyEvalSets, Watch};
/// let watch = Watch { every: 25, ..Watch::new(SafetyEvalSets::default()) };
/// assert_eq!(watch.eval.max_new_tokens, 16);
/// ```
#[derive(Debug, Clone)]
pub struct Watch {
    /// The sets.
    pub sets: SafetyEvalSets,
    /// Steps between measurements (at least 1).
    pub every: usize,
    /// How responses are generated and scored.
    pub eval: EvalConfig,
}

impl Watch {
    /// Measures `sets` every 25 steps with 16-token responses.
    pub fn new(sets: SafetyEvalSets) -> Self {
        Watch { sets, every: 25, eval: EvalConfig { max_new_tokens: 16, ..EvalConfig::default() } }
    }
}

/// One measurement along the trajectory.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// Optimizer steps taken.
    pub step: usize,
    /// Mean training loss over the last steps (NaN before step 1; `null` in JSON).
    #[serde(deserialize_with = "nan_if_null")]
    pub train_loss: f32,
    /// Refusal rate on harmful requests.
    pub harmful_refusal: f64,
    /// Refusal rate on harmless requests.
    pub harmless_refusal: f64,
    /// Exact-match accuracy on the fine-tuning tasks.
    pub task_accuracy: f64,
}

impl CurvePoint {
    /// Evaluates `model` on `watch`'s sets at the point of training `report` describes; the
    /// loss is the mean of the last `min(every, 10)` steps.
    pub fn measure(model: &Model, report: &TrainReport, watch: &Watch) -> Result<Self> {
        let sets = &watch.sets;
        let e = evaluate(model, &sets.harmful, &sets.harmless, &sets.tasks, &watch.eval)?;
        Ok(CurvePoint {
            step: report.steps,
            train_loss: if report.losses.is_empty() { f32::NAN } else { report.recent_loss(watch.every.min(10)) },
            harmful_refusal: e.harmful.map_or(f64::NAN, |s| s.refusal_rate),
            harmless_refusal: e.harmless.map_or(f64::NAN, |s| s.refusal_rate),
            task_accuracy: e.tasks.map_or(f64::NAN, |s| s.accuracy),
        })
    }

    /// The value of one measure at this point.
    pub fn get(&self, metric: Metric) -> f64 {
        match metric {
            Metric::Step => self.step as f64,
            Metric::TrainLoss => self.train_loss as f64,
            Metric::HarmfulRefusal => self.harmful_refusal,
            Metric::HarmlessRefusal => self.harmless_refusal,
            Metric::TaskAccuracy => self.task_accuracy,
        }
    }
}

impl std::fmt::Display for CurvePoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "step {}: harmful refused {:.2}, harmless refused {:.2}, task accuracy {:.2}",
            self.step, self.harmful_refusal, self.harmless_refusal, self.task_accuracy
        )
    }
}

/// What a curve can be drawn against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Optimizer steps taken.
    Step,
    /// Mean recent training loss.
    TrainLoss,
    /// Refusal rate on harmful requests.
    HarmfulRefusal,
    /// Refusal rate on harmless requests.
    HarmlessRefusal,
    /// Exact-match task accuracy.
    TaskAccuracy,
}

impl Metric {
    /// The axis title.
    pub fn title(self) -> &'static str {
        match self {
            Metric::Step => "fine-tuning step",
            Metric::TrainLoss => "training loss",
            Metric::HarmfulRefusal => "harmful refusal rate",
            Metric::HarmlessRefusal => "harmless refusal rate",
            Metric::TaskAccuracy => "task accuracy",
        }
    }

    /// Whether the measure is a rate in [0, 1].
    pub fn is_rate(self) -> bool {
        matches!(self, Metric::HarmfulRefusal | Metric::HarmlessRefusal | Metric::TaskAccuracy)
    }
}

/// A labelled trajectory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SafetyCurve {
    /// Name of the run (e.g. `plain lr=3e-4`).
    pub label: String,
    /// The plan that trained it.
    pub plan: MlLr,
    /// Measurements, starting with the base model at step 0.
    pub points: Vec<CurvePoint>,
    /// Training seconds (evaluation excluded).
    pub train_seconds: f64,
}

impl SafetyCurve {
    /// `y` against `x` along the curve, labelled with the curve's label.
    pub fn series(&self, x: Metric, y: Metric) -> Series {
        series(&self.label, &self.points, x, y)
    }

    /// Harmful/harmless refusal and task accuracy against the step, as one chart.
    pub fn chart(&self) -> Svg {
        let lines: Vec<Series> = [Metric::HarmfulRefusal, Metric::HarmlessRefusal, Metric::TaskAccuracy]
            .into_iter()
            .map(|y| series(y.title(), &self.points, Metric::Step, y))
            .collect();
        line_chart(&self.label, Metric::Step.title(), "rate", &lines, Some((0.0, 1.0)))
    }

    /// Inline display in evcxr: the chart and the last point as text.
    pub fn evcxr_display(&self) {
        let last = self.points.last().map_or(String::new(), |p| format!("{}: {p}", self.label));
        emit(&format!("<div>{}<p>{}</p></div>", self.chart(), escape_html(&last)), &last)
    }
}

/// `y` against `x` along `points`, as one chart line.
pub fn series(label: &str, points: &[CurvePoint], x: Metric, y: Metric) -> Series {
    Series { label: label.to_string(), points: points.iter().map(|p| (p.get(x), p.get(y))).collect() }
}

/// Several labelled trajectories (one per learning rate, strategy or seed), drawn together.
///
/// ```
/// use secure_tuning::tune::{Curves, Metric};
/// let svg = Curves(vec![]).chart("Refusals", Metric::Step, Metric::HarmfulRefusal);
/// assert!(svg.as_str().starts_with("<svg"));
/// ```
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Curves(pub Vec<SafetyCurve>);

impl Curves {
    /// Every curve's `y` against `x`, overlaid in one chart.
    pub fn chart(&self, title: &str, x: Metric, y: Metric) -> Svg {
        let lines: Vec<Series> = self.0.iter().map(|c| c.series(x, y)).collect();
        line_chart(title, x.title(), y.title(), &lines, y.is_rate().then_some((0.0, 1.0)))
    }

    /// The two charts that tell the story: refusals of harmful requests, and task accuracy.
    pub fn charts(&self) -> [Svg; 2] {
        [
            self.chart("Refusal of held-out harmful requests", Metric::Step, Metric::HarmfulRefusal),
            self.chart("Accuracy on the fine-tuning tasks", Metric::Step, Metric::TaskAccuracy),
        ]
    }

    /// Writes `curve.json`, `harmful_refusal.svg` and `task_accuracy.svg` into `dir`.
    pub fn write(&self, dir: &std::path::Path) -> Result<()> {
        crate::fs::create_dir_all(dir)?;
        let json = serde_json::to_vec_pretty(self).expect("curves serialise");
        crate::fs::write_atomic(&dir.join("curve.json"), &json)?;
        let [refusal, skill] = self.charts();
        refusal.save(&dir.join("harmful_refusal.svg"))?;
        skill.save(&dir.join("task_accuracy.svg"))
    }

    /// Inline display in evcxr: both charts, and the table as text.
    pub fn evcxr_display(&self) {
        let [refusal, skill] = self.charts();
        emit(&format!("<div>{refusal}{skill}</div>"), &self.to_string())
    }
}

impl std::fmt::Display for Curves {
    /// Per curve: its training time, then one row per measurement.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, c) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            writeln!(f, "{} ({:.0}s of training):", c.label, c.train_seconds)?;
            write!(f, "  step  loss   harmful-refused  harmless-refused  task-accuracy")?;
            for p in &c.points {
                write!(
                    f,
                    "\n  {:>4}  {:>5.3}  {:>15.2}  {:>16.2}  {:>13.2}",
                    p.step, p.train_loss, p.harmful_refusal, p.harmless_refusal, p.task_accuracy
                )?;
            }
        }
        Ok(())
    }
}

/// Fine-tunes a copy of `base` on `data` with `plan`, measuring `watch`'s sets along the way.
///
/// ```no_run
/// use secure_tuning::{Model, data::*, tune::*};
/// let model = Model::load("default")?;
/// let ift = load_records(&default_data_dir().join("ift_general.jsonl"))?;
/// let sets = SafetyEvalSets { tasks: split(&ift, "eval"), ..SafetyEvalSets::default() };
/// let plan = MlLr::builder().ratio(1.0).steps(50).build()?;
/// let curve = safety_curve("plain", &model, &plan, &split(&ift, "train"), &Watch::new(sets))?;
/// # Ok::<(), secure_tuning::Error>(())
/// ```
pub fn safety_curve(label: &str, base: &Model, plan: &MlLr, data: &[Record], watch: &Watch) -> Result<SafetyCurve> {
    let tuned = plan.fit_watched(base, data, watch)?;
    Ok(SafetyCurve {
        label: label.to_string(),
        plan: plan.clone(),
        points: tuned.curve,
        train_seconds: tuned.report.seconds,
    })
}

/// JSON has no NaN: serde_json writes it as `null`, so read `null` back as NaN.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f32, D::Error> {
    Ok(Option::<f32>::deserialize(d)?.unwrap_or(f32::NAN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_point_before_training_round_trips_through_json() {
        let p = CurvePoint {
            step: 0,
            train_loss: f32::NAN,
            harmful_refusal: 0.9,
            harmless_refusal: 0.0,
            task_accuracy: 0.1,
        };
        let back: CurvePoint = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert!(back.train_loss.is_nan());
        assert_eq!((back.step, back.harmful_refusal), (0, 0.9));
    }
}
