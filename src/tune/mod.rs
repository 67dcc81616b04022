//! Fine-tuning: one trainer for every strategy ([`train`]), its optimizer, schedule and
//! checkpoints, and safety measured along a training trajectory ([`safety_curve`]).
//! Strategies (plain IFT now; ML-LR, SWAT and the controls build on [`LrGroup`]s) only decide
//! which parameters get which learning-rate scale.

mod align;
mod curve;
mod mllr;
mod optim;
mod schedule;
mod trainer;

pub use align::{alignment_data, AlignConfig, AlignmentData};
pub use curve::{safety_curve, CurvePoint, SafetyCurve, SafetyEvalSets};
pub use mllr::{random_modules, MlLr, MlLrBuilder, Tuned};
pub use optim::{AdamW, AdamWParams};
pub use schedule::Schedule;
pub(crate) use trainer::response_loss;
pub use trainer::{
    checkpoint, clip_global_norm, encode_examples, train, train_observed, Example, GroupTrace, LrGroup, StepOutcome,
    TrainConfig, TrainReport, TrainStep,
};
