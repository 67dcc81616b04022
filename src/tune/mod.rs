//! Fine-tuning strategies: the ML-LR plan ([`MlLr`]) that sets which module trains at which
//! rate and when, every strategy and control as a [`Strategy`] that builds such a plan, safety
//! measured along a trajectory ([`MlLr::fit_watched`], [`safety_curve`]), and the alignment data
//! that makes a compliant model refuse ([`alignment_data`]), and plans written for other
//! trainers ([`PlanFile`]). Training itself is [`crate::train`].

mod align;
mod curve;
mod export;
mod plan;
mod strategy;

pub use align::{align, alignment_data, AlignConfig, AlignSummary, Aligned, AlignmentData};
pub use curve::{safety_curve, series, CurvePoint, Curves, Metric, SafetyCurve, SafetyEvalSets, Watch};
pub use export::{PlanFile, PlanGroup, PlanLora, PlanModel, PlanOptimizer, PlanSchedule, PLAN_FORMAT, PLAN_VERSION};
pub use plan::{MlLr, MlLrBuilder, Tuned};
pub use strategy::{random_modules, Strategy, StrategyKind};
