//! The measuring bench: what every robustness measurement needs, computed once from the base
//! model (harmful prompts, the model's own refusals to them, features at the proxy layer, benign
//! examples), and the three ways of changing a module group and reading the damage.

use super::analysis::Held;
use super::{Measure, Mode, Normalize, RobustnessConfig};
use crate::data::Record;
use crate::error::{Error, Result};
use crate::eval::RefusalDetector;
use crate::model::{GenerateOptions, Model, ModuleSet};
use crate::probe::{cosine_drift, harmful_share, layer_features, prompt_ids, Probe, ProbeReport};
use crate::rng::Rng;
use crate::train::{encode_examples, response_loss, train, Example, LrGroup, TrainConfig};
use candle_core::{DType, Device, Tensor};

/// What every measurement needs, computed once from the base model: the harmful prompts, the
/// base model's own refusals to them, its features at the proxy layer and the benign examples.
pub(crate) struct Bench<'a> {
    base: Held<'a, Model>,
    config: RobustnessConfig,
    pub(crate) probe: Probe,
    harmful: Vec<String>,
    refusals: Vec<Example>,
    base_logprob: f64,
    base_features: Tensor,
    base_logit: f64,
    base_probe_acc: f64,
    benign: Vec<Example>,
    /// Held-out benign examples whose log-probability gain is the task progress.
    benign_heldout: Vec<Example>,
    base_benign_logprob: f64,
}

/// What one change of a group did.
pub(crate) struct Change {
    pub(crate) damage: f64,
    pub(crate) rel_change: f64,
    pub(crate) task_gain: f64,
}

/// Task gains below this (nats per token) count as no progress: the division stays finite and
/// such groups rank most fragile under [`Normalize::TaskGain`].
pub(crate) const TASK_GAIN_FLOOR: f64 = 1e-3;

/// Benign examples held out of the update mode's training for reading its task progress.
const HELDOUT_BENIGN: usize = 64;

impl<'a> Bench<'a> {
    pub(crate) fn new(
        base: Held<'a, Model>,
        probe: &ProbeReport,
        benign: &[Record],
        config: &RobustnessConfig,
    ) -> Result<Self> {
        validate(config, benign)?;
        let all = probe.data.harmful();
        let n = config.harmful_limit.min(all.len()).max(1);
        let harmful: Vec<String> = (0..n).map(|i| all[i * all.len() / n].clone()).collect();
        let proxy = probe.proxy().clone();
        let base_features = layer_features(&base, &harmful, proxy.layer, 32)?;
        let logits = proxy.logits(&base_features)?;
        let base_probe_acc = harmful_share(&logits);
        let base_logit = mean(&logits);
        let refusals = if config.mode != Mode::Adversarial && config.measure == Measure::RefusalLogProb {
            own_refusals(&base, &harmful, config.reference_tokens)?
        } else {
            vec![]
        };
        let base_logprob = if refusals.is_empty() { 0.0 } else { mean_logprob(&base, &refusals)? };
        let mut benign = if config.mode == Mode::Update { encode_examples(&base, benign, 256)? } else { vec![] };
        // The last examples are held out for the task-progress reading (they are never trained on).
        let benign_heldout = if config.normalize == Normalize::TaskGain && benign.len() > 2 * HELDOUT_BENIGN {
            benign.split_off(benign.len() - HELDOUT_BENIGN)
        } else {
            vec![]
        };
        if config.normalize == Normalize::TaskGain && benign_heldout.is_empty() {
            return Err(Error::invalid(
                "benign data",
                format!(
                    "task-gain normalisation holds out {HELDOUT_BENIGN} benign examples and trains on the rest; \
                     give more than {} (got {})",
                    2 * HELDOUT_BENIGN,
                    benign.len()
                ),
            ));
        }
        let base_benign_logprob = if benign_heldout.is_empty() { 0.0 } else { mean_logprob(&base, &benign_heldout)? };
        Ok(Bench {
            base,
            config: config.clone(),
            probe: proxy,
            harmful,
            refusals,
            base_logprob,
            base_features,
            base_logit,
            base_probe_acc,
            benign,
            benign_heldout,
            base_benign_logprob,
        })
    }

    /// Changes `set` on a copy of the base model with `seed` and reads what the change did.
    pub(crate) fn change_and_read(&self, set: &ModuleSet, seed: u64) -> Result<Change> {
        let names = self.base.param_names(set);
        if names.is_empty() {
            return Err(Error::invalid("module group", format!("{set:?} has no parameters in this model")));
        }
        match self.config.mode {
            Mode::Perturb => {
                let mut model = Model::clone(&self.base);
                let mut rng = Rng::new(seed ^ hash(&names));
                let mut new = Vec::new();
                for name in &names {
                    let w = &self.base.weights()[name];
                    let noise: Vec<f32> = (0..w.elem_count()).map(|_| rng.normal() as f32).collect();
                    let noise = Tensor::from_vec(noise, w.dims(), &Device::Cpu)?.to_device(w.device())?;
                    let scale = self.config.epsilon * norm(w)? / norm(&noise)?.max(1e-12);
                    new.push((name.clone(), (w.to_dtype(DType::F32)? + (noise * scale)?)?));
                }
                model.set_weights(new)?;
                let rel_change = rel_change(&self.base, &model, &names)?;
                Ok(Change { damage: self.read(&model)?, rel_change, task_gain: 0.0 })
            }
            Mode::Update => {
                let mut model = Model::clone(&self.base);
                let cfg = TrainConfig {
                    lr: self.config.lr,
                    max_steps: Some(self.config.steps),
                    batch_size: self.config.batch_size,
                    warmup_ratio: 0.0,
                    min_lr_ratio: 1.0,
                    seed,
                    groups: vec![LrGroup::new("group", names.clone(), 1.0)],
                    ..TrainConfig::default()
                };
                train(&mut model, &self.benign, &cfg)?;
                let rel_change = rel_change(&self.base, &model, &names)?;
                let task_gain = if self.benign_heldout.is_empty() {
                    0.0
                } else {
                    mean_logprob(&model, &self.benign_heldout)? - self.base_benign_logprob
                };
                Ok(Change { damage: self.read(&model)?, rel_change, task_gain })
            }
            Mode::Adversarial => self.adversarial(&names),
        }
    }

    /// The damage of `model` relative to the base, by the configured measure.
    pub(crate) fn read(&self, model: &Model) -> Result<f64> {
        Ok(match self.config.measure {
            Measure::RefusalLogProb => self.base_logprob - mean_logprob(model, &self.refusals)?,
            Measure::FeatureDrift => {
                cosine_drift(&self.base_features, &layer_features(model, &self.harmful, self.probe.layer, 32)?)?
            }
            Measure::ProbeMargin => self.base_logit - mean(&self.probe.logits_of(model, &self.harmful)?),
        })
    }

    /// Gradient steps on `names` that lower the probe's logit on harmful prompts, until the
    /// probe's accuracy on them has dropped by `target_drop` (or the steps run out).
    fn adversarial(&self, names: &[String]) -> Result<Change> {
        crate::kernels::run_on_cpu_pool(self.base.device(), || self.adversarial_here(names))
    }

    fn adversarial_here(&self, names: &[String]) -> Result<Change> {
        let mut model = Model::clone(&self.base);
        let vars = model.make_trainable(names)?;
        let mut opt = crate::train::AdamW::new(&vars, crate::train::AdamWParams::default())?;
        let ids: Vec<Vec<u32>> = self.harmful.iter().map(|p| prompt_ids(&model, p)).collect::<Result<_>>()?;
        let batch = crate::model::Batch::from_sequences(&ids, 0, model.device())?;
        let d = self.probe.weight.len();
        let dev = model.device().clone();
        let w_eff: Vec<f32> = self.probe.weight.iter().zip(&self.probe.scale).map(|(w, s)| w / s).collect();
        let w_eff = Tensor::from_vec(w_eff, (d, 1), &dev)?;
        let mean_t = Tensor::from_slice(&self.probe.mean, (1, d), &dev)?;
        let t = batch.input_ids.dim(1)?;
        let last: Vec<u32> = batch.lengths.iter().enumerate().map(|(r, &len)| (r * t + len - 1) as u32).collect();
        let last = Tensor::new(last.as_slice(), &dev)?;
        let mut drop = 0.0;
        for _ in 0..self.config.steps {
            let acts = model.forward_train(&batch, &crate::model::Capture::residual())?;
            let h = acts.hidden_states()?.swap_remove(self.probe.layer).to_dtype(DType::F32)?;
            let (b, t, dm) = h.dims3()?;
            let feats = h.reshape((b * t, dm))?.index_select(&last, 0)?;
            let logits = (feats.broadcast_sub(&mean_t)?.matmul(&w_eff)? + self.probe.bias as f64)?;
            // softplus(logit): pushes every harmful prompt towards the harmless side.
            let loss = (logits.relu()? + (logits.abs()?.neg()?.exp()? + 1.0)?.log()?)?.mean_all()?;
            let grads = loss.backward()?;
            let mut g = std::collections::BTreeMap::new();
            for (name, var) in &vars {
                if let Some(gv) = grads.get(var.as_tensor()) {
                    g.insert(name.clone(), gv.clone());
                }
            }
            opt.step(&g, |_| self.config.lr)?;
            let z = self.probe.logits_of(&model, &self.harmful)?;
            let acc = harmful_share(&z);
            drop = (self.base_probe_acc - acc).max(0.0);
            if drop >= self.config.target_drop {
                break;
            }
        }
        let rel_change = rel_change(&self.base, &model, names)?;
        Ok(Change { damage: (drop / self.config.target_drop).min(1.0), rel_change, task_gain: 0.0 })
    }
}

fn validate(config: &RobustnessConfig, benign: &[Record]) -> Result<()> {
    if config.seeds.is_empty() {
        return Err(Error::invalid("robustness seeds", "give at least one seed"));
    }
    if config.kinds.is_empty() {
        return Err(Error::invalid("robustness kinds", "give at least one module kind"));
    }
    if config.mode == Mode::Update && benign.is_empty() {
        return Err(Error::invalid("benign data", "the update mode trains on benign IFT data; none was given"));
    }
    if config.mode != Mode::Perturb
        && (config.steps == 0 || config.steps > 100_000 || !(config.lr.is_finite() && config.lr > 0.0))
    {
        return Err(Error::invalid("robustness steps", "need 1 to 100000 steps and a finite positive lr"));
    }
    if config.batch_size == 0 || config.harmful_limit == 0 || config.reference_tokens == 0 {
        return Err(Error::invalid(
            "robustness settings",
            "batch_size, harmful_limit and reference_tokens must be at least 1",
        ));
    }
    if config.layers_per_group == Some(0) {
        return Err(Error::invalid("robustness layers per group", "must be at least 1"));
    }
    if config.normalize == Normalize::TaskGain && config.mode != Mode::Update {
        return Err(Error::invalid(
            "robustness normalisation",
            format!("task-gain needs the update mode (only it trains on the task), not {}", config.mode),
        ));
    }
    if config.mode == Mode::Perturb && !(config.epsilon.is_finite() && config.epsilon > 0.0) {
        return Err(Error::invalid(
            "robustness epsilon",
            format!("{} must be a finite positive relative noise", config.epsilon),
        ));
    }
    if config.mode == Mode::Adversarial && (!(0.0..=1.0).contains(&config.target_drop) || config.target_drop == 0.0) {
        return Err(Error::invalid("robustness target drop", "must be in (0, 1]"));
    }
    Ok(())
}

/// The base model's greedy answers to `prompts`, kept where they are refusals, as
/// teacher-forcing examples.
fn own_refusals(model: &Model, prompts: &[String], tokens: usize) -> Result<Vec<Example>> {
    let detector = RefusalDetector::default();
    let opts = GenerateOptions { max_new_tokens: tokens, ..GenerateOptions::default() };
    let mut out = Vec::new();
    for p in prompts {
        let prompt = prompt_ids(model, p)?;
        let answer = model.generate(&prompt, &opts)?;
        if !answer.is_empty() && detector.is_refusal(&model.tokenizer().decode(&answer)?) {
            let mut ids = prompt.clone();
            ids.extend(answer);
            out.push(Example { ids, loss_start: prompt.len() });
        }
    }
    if out.len() < 4 {
        return Err(Error::invalid(
            "refusal proxy",
            format!(
                "the model refuses only {} of {} harmful prompts; the refusal-log-prob measure needs a model that \
                 refuses (use Measure::FeatureDrift or Mode::Adversarial, or align the model first)",
                out.len(),
                prompts.len()
            ),
        ));
    }
    Ok(out)
}

/// Mean log-probability per token of the examples' responses.
fn mean_logprob(model: &Model, examples: &[Example]) -> Result<f64> {
    let mut total = 0.0;
    let mut tokens = 0;
    for chunk in examples.chunks(32) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let (loss, n) = response_loss(model, &refs, false)?;
        total += loss.to_dtype(DType::F32)?.to_scalar::<f32>()? as f64 * n as f64;
        tokens += n;
    }
    Ok(-total / tokens.max(1) as f64)
}

fn norm(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F32)?.sqr()?.sum_all()?.to_scalar::<f32>()?.sqrt() as f64)
}

/// `||W' - W|| / ||W||` over the named parameters taken together.
pub(crate) fn rel_change(base: &Model, changed: &Model, names: &[String]) -> Result<f64> {
    let (mut diff, mut orig) = (0.0, 0.0);
    for n in names {
        let (a, b) = (&base.weights()[n], &changed.weights()[n]);
        diff += norm(&(b.to_dtype(DType::F32)? - a.to_dtype(DType::F32)?)?)?.powi(2);
        orig += norm(a)?.powi(2);
    }
    Ok((diff / orig.max(1e-30)).sqrt().max(1e-12))
}

fn mean(v: &[f32]) -> f64 {
    v.iter().map(|&x| x as f64).sum::<f64>() / v.len().max(1) as f64
}

fn hash(names: &[String]) -> u64 {
    // FNV-1a: a stable per-group stream, so one seed gives every group its own noise.
    names.iter().flat_map(|n| n.bytes()).fold(0xcbf29ce484222325, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}
