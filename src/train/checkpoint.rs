//! Checkpoints: `DIR/step-NNNNNN/` is a loadable model folder plus `optimizer.safetensors` and
//! `trainer_state.json`; `DIR/latest` names the newest. Each is written to a temp path and
//! renamed, so a crash never leaves a half-written checkpoint as `latest`.

use super::config::TrainConfig;
use super::optim::AdamW;
use super::report::TrainReport;
use crate::error::{Error, Result};
use crate::model::Model;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What a checkpoint records besides weights and optimizer state.
#[derive(Serialize, Deserialize)]
pub(crate) struct TrainerState {
    pub(crate) report: TrainReport,
    pub(crate) config: TrainConfig,
}

/// The newest complete checkpoint in `dir`, if any.
pub fn latest(dir: &Path) -> Option<PathBuf> {
    let name = std::fs::read_to_string(dir.join("latest")).ok()?;
    let p = dir.join(name.trim());
    p.is_dir().then_some(p)
}

pub(crate) fn save(dir: &Path, model: &Model, opt: &AdamW, state: &TrainerState) -> Result<PathBuf> {
    let name = format!("step-{:06}", state.report.steps);
    let final_dir = dir.join(&name);
    let tmp = dir.join(format!("{name}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    model.save_dir(&tmp)?;
    crate::model::save_safetensors(&opt.state()?, &tmp.join("optimizer.safetensors"))?;
    let json = serde_json::to_vec_pretty(state).expect("state serialises");
    crate::fs::write_atomic(&tmp.join("trainer_state.json"), &json)?;
    let _ = std::fs::remove_dir_all(&final_dir);
    std::fs::rename(&tmp, &final_dir).map_err(|source| Error::Io { path: final_dir.clone(), source })?;
    let previous = latest(dir);
    crate::fs::write_atomic(&dir.join("latest"), name.as_bytes())?;
    // Keep the newest two, so a checkpoint that turns out bad still has a predecessor.
    if let Some(prev) = previous {
        let mut all: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|source| Error::Io { path: dir.to_path_buf(), source })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("step-")))
            .filter(|p| p.extension().is_none())
            .collect();
        all.sort();
        for old in all.iter().filter(|p| **p != prev && **p != final_dir) {
            let _ = std::fs::remove_dir_all(old);
        }
    }
    Ok(final_dir)
}

pub(crate) fn restore(
    dir: &Path,
    model: &Model,
    opt: &mut AdamW,
    vars: &[(String, candle_core::Var)],
) -> Result<Option<TrainerState>> {
    let Some(ckpt) = latest(dir) else {
        return Ok(None);
    };
    let state_path = ckpt.join("trainer_state.json");
    let text = crate::fs::read_file(&state_path, "the checkpoint is incomplete")?;
    let state: TrainerState = serde_json::from_str(&text).map_err(|e| Error::malformed(&state_path, e.to_string()))?;
    let weights = crate::model::load_tensors(&ckpt.join("model.safetensors"), model.device())?;
    for (name, var) in vars {
        let w = weights.get(name).ok_or_else(|| Error::MissingTensor {
            name: name.clone(),
            path: ckpt.clone(),
            hint: "the checkpoint was written by a run training other parameters".into(),
        })?;
        var.set(&w.to_dtype(var.dtype())?)?;
    }
    let opt_state = crate::model::load_tensors(&ckpt.join("optimizer.safetensors"), model.device())?;
    opt.load_state(&opt_state, state.report.steps)?;
    Ok(Some(state))
}
