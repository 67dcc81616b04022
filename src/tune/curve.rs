//! Safety along a fine-tuning trajectory: harmful-request refusal rate, harmless refusal rate
//! and task accuracy, measured every few steps while a strategy trains. Strategies must be
//! compared along such trajectories, not at one point (DESIGN.md section 9).

use super::trainer::{encode_examples, train_observed, TrainConfig, TrainReport};
use crate::data::Record;
use crate::error::Result;
use crate::eval::{evaluate, EvalConfig};
use crate::model::Model;
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
    /// Evaluates `model` on `sets` at the point of training `report` describes; the loss is the
    /// mean of the last `min(every, 10)` steps.
    pub fn measure(
        model: &Model,
        report: &TrainReport,
        every: usize,
        sets: &SafetyEvalSets,
        eval: &EvalConfig,
    ) -> Result<Self> {
        let e = evaluate(model, &sets.harmful, &sets.harmless, &sets.tasks, eval)?;
        Ok(CurvePoint {
            step: report.steps,
            train_loss: if report.losses.is_empty() { f32::NAN } else { report.recent_loss(every.min(10)) },
            harmful_refusal: e.harmful.map_or(f64::NAN, |s| s.refusal_rate),
            harmless_refusal: e.harmless.map_or(f64::NAN, |s| s.refusal_rate),
            task_accuracy: e.tasks.map_or(f64::NAN, |s| s.accuracy),
        })
    }
}

/// A strategy's trajectory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SafetyCurve {
    /// Name of the run (e.g. `plain lr=3e-4`).
    pub label: String,
    /// The training settings.
    pub config: TrainConfig,
    /// Measurements, starting with the base model at step 0.
    pub points: Vec<CurvePoint>,
    /// Training seconds (evaluation excluded).
    pub train_seconds: f64,
}

/// Fine-tunes a copy of `base` on `data` as `cfg` says, measuring `sets` every `every` steps.
pub fn safety_curve(
    label: &str,
    base: &Model,
    data: &[Record],
    cfg: &TrainConfig,
    sets: &SafetyEvalSets,
    every: usize,
    eval: &EvalConfig,
) -> Result<SafetyCurve> {
    let mut model = base.clone();
    let examples = encode_examples(&model, data, 256)?;
    let mut points = Vec::new();
    let report = train_observed(&mut model, &examples, cfg, every, |m, r| {
        let p = CurvePoint::measure(m, r, every, sets, eval)?;
        if cfg.log_every_secs.is_some() {
            println!(
                "[{label}] step {}: harmful refused {:.2}, harmless refused {:.2}, task accuracy {:.2}",
                p.step, p.harmful_refusal, p.harmless_refusal, p.task_accuracy
            );
        }
        points.push(p);
        Ok(())
    })?;
    Ok(SafetyCurve { label: label.to_string(), config: cfg.clone(), points, train_seconds: report.seconds })
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
