//! The one trainer every strategy runs through: response-only loss over chat-formatted
//! examples, AdamW with a learning-rate scale and a start step per parameter group, warm-up +
//! cosine schedule, global gradient clipping, a seeded data order, progress through
//! [`crate::progress`], step and time budgets, atomic checkpoints with bit-identical resume, and
//! a hard stop on a NaN/inf loss.
//!
//! What to train at which rate is decided above this layer: a strategy in [`crate::tune`]
//! turns into [`LrGroup`]s, and [`crate::robustness`]'s update mode trains one module group.

pub mod checkpoint;
mod config;
mod examples;
mod optim;
mod report;
mod run;
mod schedule;
mod step;

pub use config::{LrGroup, TrainConfig, MAX_STEPS};
pub(crate) use examples::response_loss;
pub use examples::{encode_examples, Example};
pub use optim::{AdamW, AdamWParams};
pub use report::{GroupTrace, TrainReport};
pub use run::{train, train_observed, Observer};
pub use schedule::Schedule;
pub use step::{clip_global_norm, StepOutcome, TrainStep};
