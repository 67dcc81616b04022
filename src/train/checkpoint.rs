//! Checkpoints: `DIR/step-NNNNNN/` is a loadable model folder plus `optimizer.safetensors` and
//! `trainer_state.json`; `DIR/latest` names the newest. Each is written to a temporary folder and
//! renamed, so a crash never leaves a half-written checkpoint as `latest`; the two newest are
//! kept, so a damaged newest one falls back to its predecessor. A checkpoint records a
//! fingerprint of what determines the run (base model, data, groups, schedule, seed), and a
//! resume with anything else is refused with the difference named.

use super::config::TrainConfig;
use super::examples::Example;
use super::optim::AdamW;
use super::report::TrainReport;
use crate::error::{Error, Result};
use crate::model::Model;
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What a checkpoint records besides weights and optimizer state.
#[derive(Serialize, Deserialize)]
pub(crate) struct TrainerState {
    pub(crate) report: TrainReport,
    pub(crate) config: TrainConfig,
    /// What the run was started with (absent in checkpoints of older builds).
    #[serde(default)]
    pub(crate) fingerprint: Option<Fingerprint>,
}

/// Everything that determines a run's next step, so a checkpoint is continued only by the run
/// that wrote it. Budgets, the checkpoint folder and its interval are left out: they may change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Fingerprint {
    /// A hash of the starting model: names, shapes, dtypes and a sample of every tensor's values.
    model: String,
    /// A hash of the tokenised examples.
    data: String,
    /// A hash of the LR groups (names, scales, start steps, parameters).
    groups: String,
    lr: f64,
    total_steps: usize,
    batch_size: usize,
    grad_accum: usize,
    warmup_ratio: f64,
    min_lr_ratio: f64,
    weight_decay: f64,
    clip_norm: Option<f64>,
    seed: u64,
}

impl Fingerprint {
    /// The fingerprint of training `model` (as it is now) on `examples` as `cfg` says.
    pub(crate) fn of(model: &Model, examples: &[Example], cfg: &TrainConfig) -> Result<Self> {
        let mut m = Fnv::new();
        for (name, t) in model.weights() {
            m.add(name.as_bytes());
            m.add(format!("{:?}{:?}", t.dims(), t.dtype()).as_bytes());
            for v in sample(t)? {
                m.add(&v.to_bits().to_le_bytes());
            }
        }
        let mut d = Fnv::new();
        for e in examples {
            d.add(&(e.loss_start as u64).to_le_bytes());
            e.ids.iter().for_each(|id| d.add(&id.to_le_bytes()));
        }
        let mut g = Fnv::new();
        g.add(serde_json::to_string(&cfg.groups).expect("groups serialise").as_bytes());
        Ok(Fingerprint {
            model: m.hex(),
            data: d.hex(),
            groups: g.hex(),
            lr: cfg.lr,
            total_steps: cfg.total_steps(examples.len()),
            batch_size: cfg.batch_size,
            grad_accum: cfg.grad_accum,
            warmup_ratio: cfg.warmup_ratio,
            min_lr_ratio: cfg.min_lr_ratio,
            weight_decay: cfg.weight_decay,
            clip_norm: cfg.clip_norm,
            seed: cfg.seed,
        })
    }

    /// What differs from `other`, in words (empty when nothing does).
    fn differences(&self, other: &Fingerprint) -> Vec<String> {
        let mut out: Vec<String> = [
            (self.model != other.model, "the starting model"),
            (self.data != other.data, "the training data"),
            (self.groups != other.groups, "the learning-rate groups"),
        ]
        .into_iter()
        .filter(|(differs, _)| *differs)
        .map(|(_, what)| what.to_string())
        .collect();
        let settings = [
            ("lr", self.lr.to_string(), other.lr.to_string()),
            ("total steps", self.total_steps.to_string(), other.total_steps.to_string()),
            ("batch size", self.batch_size.to_string(), other.batch_size.to_string()),
            ("gradient accumulation", self.grad_accum.to_string(), other.grad_accum.to_string()),
            ("warm-up share", self.warmup_ratio.to_string(), other.warmup_ratio.to_string()),
            ("final LR share", self.min_lr_ratio.to_string(), other.min_lr_ratio.to_string()),
            ("weight decay", self.weight_decay.to_string(), other.weight_decay.to_string()),
            ("clip norm", format!("{:?}", self.clip_norm), format!("{:?}", other.clip_norm)),
            ("seed", self.seed.to_string(), other.seed.to_string()),
        ];
        out.extend(
            settings
                .into_iter()
                .filter(|(_, a, b)| a != b)
                .map(|(what, a, b)| format!("{what} ({a} in the checkpoint, {b} now)")),
        );
        out
    }
}

/// Up to 64 evenly spaced values of `t`, as f32.
fn sample(t: &Tensor) -> Result<Vec<f32>> {
    let flat = t.flatten_all()?;
    let n = flat.elem_count();
    if n == 0 {
        return Ok(vec![]);
    }
    let k = n.min(64);
    let idx: Vec<u32> = (0..k).map(|i| (i * n / k) as u32).collect();
    let idx = Tensor::new(idx.as_slice(), t.device())?;
    Ok(flat.index_select(&idx, 0)?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
}

/// FNV-1a, 64 bits: a stable hash whose value does not depend on a library's version.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn add(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// The newest complete checkpoint in `dir` that `latest` names, if any.
pub fn latest(dir: &Path) -> Option<PathBuf> {
    let name = std::fs::read_to_string(dir.join("latest")).ok()?;
    let p = dir.join(name.trim());
    p.is_dir().then_some(p)
}

/// Every complete `step-N` checkpoint folder in `dir`, newest first.
fn step_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut all: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| Error::Read { path: dir.to_path_buf(), source })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && p.extension().is_none())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("step-")))
        .collect();
    all.sort();
    all.reverse();
    Ok(all)
}

pub(crate) fn save(dir: &Path, model: &Model, opt: &AdamW, state: &TrainerState) -> Result<PathBuf> {
    let name = format!("step-{:06}", state.report.steps);
    let final_dir = dir.join(&name);
    let tmp = dir.join(format!("{name}.tmp"));
    crate::fs::remove_leftover(&tmp)?;
    model.save_dir(&tmp)?;
    crate::model::save_safetensors(&opt.state()?, &tmp.join("optimizer.safetensors"))?;
    crate::fs::write_json(&tmp.join("trainer_state.json"), state)?;
    crate::fs::remove_leftover(&final_dir)?;
    crate::fs::rename(&tmp, &final_dir)?;
    let previous = latest(dir);
    crate::fs::write_atomic(&dir.join("latest"), name.as_bytes())?;
    // Keep the newest two, so a checkpoint that turns out bad still has a predecessor.
    if let Some(prev) = previous {
        for old in step_dirs(dir)?.iter().filter(|p| **p != prev && **p != final_dir) {
            let _ = std::fs::remove_dir_all(old);
        }
    }
    Ok(final_dir)
}

/// Restores the newest readable checkpoint in `dir` into `vars` and `opt`: `latest`'s, or, when
/// that one is missing or damaged, the newest other `step-N` (with a warning). `None` when the
/// folder holds no checkpoint; an error when it holds only damaged ones, or one written by a
/// run with another fingerprint.
pub(crate) fn restore(
    dir: &Path,
    model: &Model,
    opt: &mut AdamW,
    vars: &[(String, candle_core::Var)],
    fingerprint: &Fingerprint,
) -> Result<Option<TrainerState>> {
    let mut candidates: Vec<PathBuf> = latest(dir).into_iter().collect();
    candidates.extend(step_dirs(dir)?.into_iter().filter(|p| Some(p) != latest(dir).as_ref()));
    if candidates.is_empty() {
        if dir.join("latest").exists() {
            return Err(Error::invalid(
                format!("checkpoint dir `{}`", dir.display()),
                "its `latest` names a checkpoint that is not there, and no other is; remove the folder to start over",
            ));
        }
        return Ok(None);
    }
    let mut failures = Vec::new();
    for ckpt in candidates {
        let state = match read_state(&ckpt) {
            Ok(state) => state,
            Err(e) => {
                failures.push(format!("{}: {e}", ckpt.display()));
                continue;
            }
        };
        // A checkpoint of another run is not damage: say so instead of falling back.
        check_fingerprint(&ckpt, &state, fingerprint)?;
        match load_tensors(&ckpt, &state, model, opt, vars) {
            Ok(()) => {
                if !failures.is_empty() {
                    crate::progress::note(
                        "train",
                        &format!(
                            "resuming from `{}`; newer checkpoints were unreadable: {}",
                            ckpt.display(),
                            failures.join("; ")
                        ),
                    );
                }
                return Ok(Some(state));
            }
            Err(e) => failures.push(format!("{}: {e}", ckpt.display())),
        }
    }
    Err(Error::invalid(
        format!("checkpoint dir `{}`", dir.display()),
        format!("no checkpoint in it can be read ({}); remove the folder to start over", failures.join("; ")),
    ))
}

fn read_state(ckpt: &Path) -> Result<TrainerState> {
    crate::fs::read_json(&ckpt.join("trainer_state.json"), "a trainer_state.json written by a training run")
}

fn check_fingerprint(ckpt: &Path, state: &TrainerState, fingerprint: &Fingerprint) -> Result<()> {
    match &state.fingerprint {
        Some(theirs) => {
            let diff = theirs.differences(fingerprint);
            if !diff.is_empty() {
                return Err(Error::invalid(
                    format!("checkpoint `{}`", ckpt.display()),
                    format!(
                        "was written with other {}; resume with the same settings or use another checkpoint dir",
                        diff.join(", ")
                    ),
                ));
            }
        }
        None => crate::progress::note(
            "train",
            &format!("`{}` predates checkpoint fingerprints; resuming without checking its settings", ckpt.display()),
        ),
    }
    Ok(())
}

fn load_tensors(
    ckpt: &Path,
    state: &TrainerState,
    model: &Model,
    opt: &mut AdamW,
    vars: &[(String, candle_core::Var)],
) -> Result<()> {
    let weights = crate::model::load_tensors(&ckpt.join("model.safetensors"), model.device())?;
    let opt_state = crate::model::load_tensors(&ckpt.join("optimizer.safetensors"), model.device())?;
    // Check every tensor before changing any, so a damaged checkpoint leaves the model untouched.
    for (name, _) in vars {
        if !weights.contains_key(name) {
            return Err(Error::MissingTensor {
                name: name.clone(),
                path: ckpt.to_path_buf(),
                hint: "the checkpoint was written by a run training other parameters".into(),
            });
        }
    }
    opt.load_state(&opt_state, state.report.steps)?;
    for (name, var) in vars {
        var.set(&weights[name].to_dtype(var.dtype())?)?;
    }
    Ok(())
}
