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

pub mod assets;
pub mod data;
pub mod display;
pub mod error;
pub mod eval;
pub mod experiment;
pub mod fs;
pub mod kernels;
pub mod model;
pub mod probe;
pub mod progress;
pub mod recipe;
pub mod rng;
pub mod robustness;
pub mod search;
pub mod stats;
pub mod train;
pub mod tune;

pub use error::{Error, Result};
pub use model::Model;

/// Settles the process-wide settings that make CPU work fast; the binary calls it first thing,
/// and a library user (a notebook, a test, another program) should too, before anything else
/// touches candle. It sets candle's threading defaults where the environment leaves them open
/// ([`kernels::configure_cpu_threads`]). Calling it again does nothing. (The binary also sets
/// its allocator, mimalloc, up in `src/main.rs`; the library never links mimalloc, see
/// docs/architecture.md.)
///
/// ```
/// secure_tuning::init();
/// assert_eq!(std::env::var("CANDLE_BARRIER_POOL_SPIN_LIMIT").unwrap(), "1");
/// ```
pub fn init() {
    kernels::configure_cpu_threads();
}

/// The types most programs and notebooks need.
pub mod prelude {
    pub use crate::error::{Error, Result};
    pub use crate::model::{
        Batch, Capture, GenerateOptions, HookPoint, LoadOptions, LogitsMode, Message, Model, ModuleId, ModuleKind,
        ModuleSet, Sampling,
    };
}

/// docs/guide.md, compiled and run as a doctest so the walk-through stays true.
#[cfg(doctest)]
#[doc = include_str!("../docs/guide.md")]
pub struct Guide;
