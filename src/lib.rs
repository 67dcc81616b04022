//! # secure-tuning
//!
//! Study and prevent the safety loss that benign instruction fine-tuning causes in chat LLMs,
//! after Du et al., "Towards Secure Tuning" (arXiv 2410.04524).
//!
//! The pipeline, in data-flow order: **load** a model ([`Model::load`]) → read its hidden
//! states ([`Model::forward`] with a [`model::Capture`]) → probe → robustness → search →
//! tune → eval → display: [`probe::probe_all`] fits the security feature classifier per layer,
//! [`robustness::Robustness::measure`] scores every module group, [`robustness::Robustness::search`]
//! finds Mods_Robust, [`tune`] fine-tunes with per-group learning rates and [`eval`] measures
//! refusals and task skill.
//!
//! ```
//! use secure_tuning::prelude::*;
//! let model = Model::load_dir("tests/fixtures/llama3")?;
//! let ids = model.tokenizer().encode("Hello there", true)?;
//! let acts = model.forward(&Batch::single(&ids, model.device())?, &Capture::residual())?;
//! // Hugging Face convention: embeddings first, last entry after the final norm.
//! assert_eq!(acts.hidden_states()?.len(), model.config().num_layers + 1);
//! # Ok::<(), secure_tuning::Error>(())
//! ```

#![warn(missing_docs)]

pub mod bench;
pub mod data;
pub mod display;
pub mod error;
pub mod eval;
pub mod model;
pub mod probe;
pub mod pypi;
pub mod recipe;
pub mod reproduce;
pub mod robustness;
pub mod search;
pub mod tune;

pub use error::{Error, Result};
pub use model::Model;

/// The types most programs and notebooks need.
pub mod prelude {
    pub use crate::error::{Error, Result};
    pub use crate::model::{
        Batch, Capture, GenerateOptions, HookPoint, LoadOptions, LogitsMode, Message, Model, ModuleId, ModuleKind,
        ModuleSet, Sampling,
    };
}
