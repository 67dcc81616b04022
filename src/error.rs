//! One error type for the whole crate.
//!
//! Every variant carries the facts a user needs to fix the problem: which input, what was
//! expected, what was found, and what to do next. Library code never panics on user input.

use std::path::PathBuf;

/// The crate's error: what went wrong, where, and what to do next.
///
/// ```
/// use secure_tuning::Error;
/// let e = Error::MissingFile { path: "m/config.json".into(), hint: "is this a model folder?".into() };
/// assert!(e.to_string().contains("m/config.json"));
/// ```
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file the operation needs does not exist.
    #[error("`{path}` does not exist; {hint}")]
    MissingFile {
        /// The path that was looked for.
        path: PathBuf,
        /// What to do about it.
        hint: String,
    },
    /// A file or folder exists but could not be read.
    #[error("cannot read `{path}`: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// A file or folder could not be written (created, renamed, removed).
    #[error("cannot write `{path}`: {source}; check that its folder exists and is writable")]
    Write {
        /// The file or folder.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// A file was read but its content is malformed.
    #[error("`{path}` is malformed: {reason}")]
    Malformed {
        /// The file (or other named input).
        path: PathBuf,
        /// What is wrong, as precisely as known.
        reason: String,
    },
    /// The model's `config.json` names an architecture this crate does not implement.
    #[error("unsupported model_type `{model_type}` in `{path}`; supported: llama, qwen2, mistral")]
    UnsupportedArchitecture {
        /// The `model_type` found.
        model_type: String,
        /// The config file.
        path: PathBuf,
    },
    /// A model folder holds only pickled weights, which this crate refuses to load.
    #[error(
        "`{path}` holds only pickled PyTorch weights ({found}); they can run arbitrary code when \
         loaded, so only safetensors are accepted: convert them with \
         `transformers`' `save_pretrained(..., safe_serialization=True)`"
    )]
    PickleOnly {
        /// The model folder.
        path: PathBuf,
        /// The weight files found.
        found: String,
    },
    /// A weight tensor is missing from the checkpoint.
    #[error("tensor `{name}` is missing from the checkpoint in `{path}`; {hint}")]
    MissingTensor {
        /// Full Hugging Face parameter name.
        name: String,
        /// The model folder or file.
        path: PathBuf,
        /// What may explain it.
        hint: String,
    },
    /// A weight tensor has a shape that disagrees with `config.json`.
    #[error("tensor `{name}`: expected {expected:?}, found {found:?}; {hint}")]
    ShapeMismatch {
        /// Full Hugging Face parameter name.
        name: String,
        /// Shape implied by the config.
        expected: Vec<usize>,
        /// Shape in the checkpoint.
        found: Vec<usize>,
        /// Which config field to check.
        hint: String,
    },
    /// A model id could not be resolved through the Hugging Face hub or its cache.
    #[error("model `{id}`: {reason}")]
    Hub {
        /// The model id (`org/name`).
        id: String,
        /// What failed and what to do.
        reason: String,
    },
    /// A benchmark dataset could not be read from any source.
    #[error("dataset `{name}` is not available: {reason}")]
    DatasetUnavailable {
        /// The benchmark's short name.
        name: String,
        /// What each way needs, and why it failed.
        reason: String,
    },
    /// An argument or input value is invalid.
    #[error("invalid {what}: {reason}")]
    InvalidInput {
        /// Which input (argument name, field, file).
        what: String,
        /// Why it is invalid and what is accepted.
        reason: String,
    },
    /// Tokenizer failure (loading or encoding).
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Chat template failure.
    #[error("chat template: {0}")]
    Template(String),
    /// Training produced a NaN or infinite loss; the update was not applied.
    #[error(
        "loss became {loss} at step {step} (lr {lr:.2e}); {kept}; try a lower learning rate or gradient clipping \
         (clip norm 1.0)"
    )]
    NonFiniteLoss {
        /// The loss value (NaN or inf).
        loss: f32,
        /// The 1-based step whose loss it was.
        step: usize,
        /// The learning rate at that step.
        lr: f64,
        /// Where the last good checkpoint is, in words.
        kept: String,
    },
    /// A tensor operation failed (usually a bug or an out-of-memory condition).
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An [`Error::InvalidInput`] with the given input name and reason.
    pub fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidInput { what: what.into(), reason: reason.into() }
    }

    /// An [`Error::Malformed`] for a file.
    pub fn malformed(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Malformed { path: path.into(), reason: reason.into() }
    }
}

thread_local! {
    /// Set while [`catch_panic`] runs on this thread: its panics are reported as errors, so the
    /// default hook's message must not be printed as well.
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs third-party code that may panic on hostile input (a GGUF reader's division by a zero
/// alignment, a tokenizer's runaway regex) and turns a panic into an error naming `what`,
/// without the panic message on stderr.
pub(crate) fn catch_panic<T>(what: &str, f: impl FnOnce() -> T) -> Result<T> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(|q| q.get()) {
                previous(info)
            }
        }));
    });
    let was = QUIET.with(|q| q.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was));
    result.map_err(|payload| {
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("unknown failure");
        Error::invalid(what, format!("its reader failed ({msg}); the input is malformed or too hard to parse"))
    })
}
