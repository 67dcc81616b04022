//! The security feature classifier: a linear probe per layer that tells
//! harmful from harmless instructions using the hidden state of the chat prompt's last token.
//!
//! Features are read where the model decides how to answer: the instruction rendered with the
//! model's chat template *through the assistant-turn header*, last token, every entry of Hugging
//! Face's `hidden_states` (index 0 = embeddings, `L` = after the final norm). Each layer gets an
//! L2-regularised logistic regression on standardised features (full-batch Adam from zero, so the
//! fit is deterministic); twins stay on the same side of the seeded train/test split, so a test
//! prompt's near-duplicate is never in training.

use crate::data::{load_records, split, Record};
use crate::display::{emit, escape_html, line_chart, Series, Svg};
use crate::error::{Error, Result};
use crate::model::{Batch, Capture, Message, Model};
use crate::rng::Rng;
use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Labelled prompts for the probe: `true` = harmful. Twins share a `pair` key so a split never
/// separates them.
///
/// ```
/// use secure_tuning::probe::ProbeData;
/// let d = ProbeData::default_twins()?;
/// assert_eq!(d.count(true), d.count(false));
/// # Ok::<(), secure_tuning::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ProbeData {
    /// The user instructions.
    pub prompts: Vec<String>,
    /// `true` for harmful.
    pub labels: Vec<bool>,
    /// Group key per prompt (twins share one); `None` = its own group.
    pub pairs: Vec<Option<String>>,
}

impl ProbeData {
    /// Harmful requests and their harmless twins; records with equal `id`s are kept together.
    pub fn from_records(harmful: &[Record], harmless: &[Record]) -> Self {
        let mut d = ProbeData::default();
        for (set, label) in [(harmful, true), (harmless, false)] {
            for r in set {
                d.prompts.push(r.user_text());
                d.labels.push(label);
                d.pairs.push(r.id.clone());
            }
        }
        d
    }

    /// Two files of instructions (JSONL/JSON/CSV with an `instruction`, `goal` or `prompt` field).
    pub fn from_files(harmful: &Path, harmless: &Path) -> Result<Self> {
        Ok(Self::from_records(&load_records(harmful)?, &load_records(harmless)?))
    }

    /// One JSONL file of `{"instruction": ..., "label": ...}` lines; a label is `1`/`0`,
    /// `true`/`false` or `"harmful"`/`"harmless"`; an optional `pair` field groups twins.
    pub fn from_labelled_jsonl(path: &Path) -> Result<Self> {
        let text = crate::fs::read_file(path, "pass a JSONL file of {\"instruction\", \"label\"} lines")?;
        let mut d = ProbeData::default();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let bad = |why: String| Error::malformed(path, format!("line {}: {why}", i + 1));
            let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
            let text = ["instruction", "prompt", "goal"]
                .iter()
                .find_map(|k| v.get(*k).and_then(|x| x.as_str()))
                .ok_or_else(|| bad("no `instruction` field".into()))?;
            let label = match v.get("label") {
                Some(serde_json::Value::Bool(b)) => *b,
                Some(serde_json::Value::Number(n)) if n.as_f64() == Some(1.0) => true,
                Some(serde_json::Value::Number(n)) if n.as_f64() == Some(0.0) => false,
                Some(serde_json::Value::String(s)) if s == "harmful" || s == "1" => true,
                Some(serde_json::Value::String(s)) if s == "harmless" || s == "0" => false,
                other => {
                    return Err(bad(format!("`label` is {other:?}; use 1/0, true/false or \"harmful\"/\"harmless\"")))
                }
            };
            d.prompts.push(text.to_string());
            d.labels.push(label);
            d.pairs.push(v.get("pair").map(|p| p.to_string()));
        }
        Ok(d)
    }

    /// The default model's held-out harmful requests and their harmless twins (`data/`).
    pub fn default_twins() -> Result<Self> {
        Self::twins_in(&crate::data::default_data_dir())
    }

    /// The held-out (`eval` split) pairs of `harmful.jsonl` and `harmless.jsonl` in `dir`, e.g. the
    /// `data/` folder that `secure-tuning align` writes.
    ///
    /// ```
    /// use secure_tuning::probe::ProbeData;
    /// let d = ProbeData::twins_in(&secure_tuning::data::default_data_dir())?;
    /// assert_eq!(d.count(true), d.count(false));
    /// # Ok::<(), secure_tuning::Error>(())
    /// ```
    pub fn twins_in(dir: &Path) -> Result<Self> {
        let harmful = split(&load_records(&dir.join("harmful.jsonl"))?, "eval");
        let harmless = split(&load_records(&dir.join("harmless.jsonl"))?, "eval");
        if harmful.is_empty() || harmless.is_empty() {
            return Err(Error::invalid(
                format!("probe data in `{}`", dir.display()),
                "harmful.jsonl and harmless.jsonl need held-out records (`\"split\": \"eval\"`); `secure-tuning align` writes such a folder",
            ));
        }
        Ok(Self::from_records(&harmful, &harmless))
    }

    /// Number of prompts with this label.
    pub fn count(&self, harmful: bool) -> usize {
        self.labels.iter().filter(|&&l| l == harmful).count()
    }

    /// The harmful prompts, in order.
    pub fn harmful(&self) -> Vec<String> {
        self.prompts.iter().zip(&self.labels).filter(|(_, &l)| l).map(|(p, _)| p.clone()).collect()
    }

    fn check(&self, min_per_class: usize) -> Result<()> {
        let (pos, neg) = (self.count(true), self.count(false));
        if pos < min_per_class || neg < min_per_class {
            return Err(Error::invalid(
                "probe data",
                format!(
                    "{pos} harmful and {neg} harmless prompts; the probe needs at least {min_per_class} of each \
                     (give both a harmful and a harmless file, or labels of both kinds)"
                ),
            ));
        }
        Ok(())
    }
}

/// Settings of [`probe_all_with`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeConfig {
    /// L2 penalty on the weights (on standardised features).
    pub l2: f64,
    /// Full-batch Adam steps.
    pub steps: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// Share of pair groups held out for testing.
    pub test_share: f64,
    /// Seed of the train/test split.
    pub seed: u64,
    /// Prompts per forward pass.
    pub batch_size: usize,
    /// Fewest prompts of each class accepted.
    pub min_per_class: usize,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig { l2: 1e-2, steps: 300, lr: 0.05, test_share: 0.3, seed: 0, batch_size: 32, min_per_class: 8 }
    }
}

/// A fitted linear probe on one layer: `logit = w · (x - mean) / scale + b`, positive = harmful.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    /// Index into Hugging Face's `hidden_states` (0 = embeddings).
    pub layer: usize,
    /// Feature means of the training set.
    pub mean: Vec<f32>,
    /// Feature standard deviations of the training set (floored).
    pub scale: Vec<f32>,
    /// Weights on standardised features.
    pub weight: Vec<f32>,
    /// Bias.
    pub bias: f32,
}

impl Probe {
    /// Logits for features `(n, d)`; positive = harmful.
    pub fn logits(&self, features: &Tensor) -> Result<Vec<f32>> {
        let dev = features.device();
        let d = self.weight.len();
        let mean = Tensor::from_slice(&self.mean, (1, d), dev)?;
        let scale = Tensor::from_slice(&self.scale, (1, d), dev)?;
        let w = Tensor::from_slice(&self.weight, (d, 1), dev)?;
        let x = features.to_dtype(DType::F32)?.broadcast_sub(&mean)?.broadcast_div(&scale)?;
        Ok((x.matmul(&w)? + self.bias as f64)?.squeeze(1)?.to_vec1()?)
    }

    /// Logits of `prompts` under `model`, read at this probe's layer.
    pub fn logits_of(&self, model: &Model, prompts: &[String]) -> Result<Vec<f32>> {
        let feats = layer_features(model, prompts, self.layer, 32)?;
        self.logits(&feats)
    }

    /// The unit direction in the (unstandardised) residual space along which the logit grows.
    pub fn direction(&self) -> Vec<f32> {
        let v: Vec<f32> = self.weight.iter().zip(&self.scale).map(|(w, s)| w / s).collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        v.iter().map(|x| x / n).collect()
    }
}

/// One layer's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerScore {
    /// Index into `hidden_states` (0 = embeddings, `L` = after the final norm).
    pub layer: usize,
    /// Held-out accuracy.
    pub accuracy: f64,
    /// Held-out ROC AUC.
    pub auc: f64,
    /// Training accuracy.
    pub train_accuracy: f64,
}

/// What [`probe_all`] found: per-layer scores, the fitted probes and the data split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeReport {
    /// The model's one-line description.
    pub model: String,
    /// Scores per `hidden_states` entry.
    pub layers: Vec<LayerScore>,
    /// The probe of every entry, in the same order.
    pub probes: Vec<Probe>,
    /// The entry with the best held-out accuracy (the deeper one on ties).
    pub best_layer: usize,
    /// The data the probes were fitted and tested on.
    pub data: ProbeData,
    /// Indices into `data` of the held-out prompts.
    pub test: Vec<usize>,
    /// The settings used.
    pub config: ProbeConfig,
}

impl ProbeReport {
    /// The best layer's probe.
    pub fn best(&self) -> &Probe {
        &self.probes[self.best_layer]
    }

    /// The probe used as the frozen proxy: the deepest layer within 2 points of the best held-out
    /// accuracy. Deeper is better for a proxy, since every module before it can move it.
    pub fn proxy(&self) -> &Probe {
        let best = self.layers[self.best_layer].accuracy;
        let l = self.layers.iter().rev().find(|s| s.accuracy >= best - 0.02).map_or(self.best_layer, |s| s.layer);
        &self.probes[l]
    }

    /// The held-out prompts and labels.
    pub fn test_set(&self) -> (Vec<String>, Vec<bool>) {
        self.test.iter().map(|&i| (self.data.prompts[i].clone(), self.data.labels[i])).unzip()
    }

    /// The accuracy-vs-layer chart as SVG.
    pub fn chart(&self) -> Svg {
        let pts = |f: fn(&LayerScore) -> f64| self.layers.iter().map(|s| (s.layer as f64, f(s))).collect();
        let series = [
            Series { label: "held-out accuracy".into(), points: pts(|s| s.accuracy) },
            Series { label: "held-out AUC".into(), points: pts(|s| s.auc) },
        ];
        line_chart("Security feature classifier per layer", "hidden_states index", "score", &series, Some((0.4, 1.0)))
    }

    /// Chart plus a table, as one HTML block.
    pub fn html(&self) -> String {
        let rows: String = self
            .layers
            .iter()
            .map(|s| {
                let mark = if s.layer == self.best_layer { " style=\"font-weight:bold\"" } else { "" };
                format!(
                    "<tr{mark}><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td></tr>",
                    s.layer, s.accuracy, s.auc, s.train_accuracy
                )
            })
            .collect();
        format!(
            "<div>{}<p>{} &middot; {} train / {} held-out prompts</p><table><tr><th>layer</th><th>accuracy</th>\
             <th>AUC</th><th>train acc.</th></tr>{rows}</table></div>",
            self.chart(),
            escape_html(&self.model),
            self.data.prompts.len() - self.test.len(),
            self.test.len()
        )
    }

    /// Inline display in evcxr: chart + table, with this report's summary as text.
    pub fn evcxr_display(&self) {
        emit(&self.html(), &self.to_string())
    }

    /// Writes `probe.json` (everything, probes included) and `probe_accuracy.svg` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        crate::fs::create_dir_all(dir)?;
        crate::fs::write_json(&dir.join("probe.json"), self)?;
        self.chart().save(&dir.join("probe_accuracy.svg"))
    }
}

impl std::fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = &self.layers[self.best_layer];
        write!(f, "probe: best layer {} accuracy {:.3} AUC {:.3}; per layer", b.layer, b.accuracy, b.auc)?;
        for s in &self.layers {
            write!(f, " {}:{:.2}", s.layer, s.accuracy)?;
        }
        Ok(())
    }
}

/// Fits and tests a probe on every layer with [`ProbeConfig::default`].
///
/// ```no_run
/// use secure_tuning::{Model, probe::{probe_all, ProbeData}};
/// let model = Model::load("default")?;
/// let report = probe_all(&model, &ProbeData::default_twins()?)?;
/// println!("{report}");
/// # Ok::<(), secure_tuning::Error>(())
/// ```
pub fn probe_all(model: &Model, data: &ProbeData) -> Result<ProbeReport> {
    probe_all_with(model, data, &ProbeConfig::default())
}

/// [`probe_all`] with explicit settings.
pub fn probe_all_with(model: &Model, data: &ProbeData, cfg: &ProbeConfig) -> Result<ProbeReport> {
    // The fits are hundreds of small matmuls each: one hand-off to rayon's pool, not one each.
    crate::kernels::run_on_cpu_pool(model.device(), || probe_all_here(model, data, cfg))
}

fn probe_all_here(model: &Model, data: &ProbeData, cfg: &ProbeConfig) -> Result<ProbeReport> {
    data.check(cfg.min_per_class)?;
    if data.prompts.len() != data.labels.len() || data.pairs.len() != data.labels.len() {
        return Err(Error::invalid("probe data", "prompts, labels and pairs must have equal lengths"));
    }
    let (train, test) = split_groups(data, cfg)?;
    let feats = prompt_features(model, &data.prompts, cfg.batch_size)?;
    let y = |idx: &[usize]| idx.iter().map(|&i| data.labels[i]).collect::<Vec<bool>>();
    let (y_train, y_test) = (y(&train), y(&test));
    let mut layers = Vec::new();
    let mut probes = Vec::new();
    for (layer, x) in feats.iter().enumerate() {
        let x_train = x.index_select(&Tensor::new(idx_u32(&train).as_slice(), x.device())?, 0)?;
        let x_test = x.index_select(&Tensor::new(idx_u32(&test).as_slice(), x.device())?, 0)?;
        let probe = fit_probe(layer, &x_train, &y_train, cfg)?;
        let test_logits = probe.logits(&x_test)?;
        layers.push(LayerScore {
            layer,
            accuracy: accuracy(&test_logits, &y_test),
            auc: auc(&test_logits, &y_test),
            train_accuracy: accuracy(&probe.logits(&x_train)?, &y_train),
        });
        probes.push(probe);
    }
    let best_layer = layers
        .iter()
        .max_by(|a, b| a.accuracy.total_cmp(&b.accuracy).then(a.auc.total_cmp(&b.auc)).then(a.layer.cmp(&b.layer)))
        .map_or(0, |s| s.layer);
    Ok(ProbeReport {
        model: model.to_string(),
        layers,
        probes,
        best_layer,
        data: data.clone(),
        test,
        config: cfg.clone(),
    })
}

fn idx_u32(idx: &[usize]) -> Vec<u32> {
    idx.iter().map(|&i| i as u32).collect()
}

/// Seeded split by pair group; both sides must hold both classes.
fn split_groups(data: &ProbeData, cfg: &ProbeConfig) -> Result<(Vec<usize>, Vec<usize>)> {
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, p) in data.pairs.iter().enumerate() {
        groups.entry(p.clone().unwrap_or_else(|| format!("#{i}"))).or_default().push(i);
    }
    let mut keys: Vec<&String> = groups.keys().collect();
    Rng::new(cfg.seed).shuffle(&mut keys);
    let n_test = ((keys.len() as f64 * cfg.test_share).round() as usize).clamp(1, keys.len().saturating_sub(1));
    let mut test: Vec<usize> = keys[..n_test].iter().flat_map(|k| groups[*k].clone()).collect();
    let mut train: Vec<usize> = keys[n_test..].iter().flat_map(|k| groups[*k].clone()).collect();
    test.sort_unstable();
    train.sort_unstable();
    for (name, side) in [("training", &train), ("held-out", &test)] {
        let pos = side.iter().filter(|&&i| data.labels[i]).count();
        if pos == 0 || pos == side.len() {
            return Err(Error::invalid(
                "probe data",
                format!("the {name} split has only one class; add more prompts of both kinds or change test_share"),
            ));
        }
    }
    Ok((train, test))
}

/// Last-token features of the chat-formatted `prompts` at every `hidden_states` entry: one
/// `(n, d)` f32 tensor per entry, rows in prompt order, on the CPU.
pub fn prompt_features(model: &Model, prompts: &[String], batch_size: usize) -> Result<Vec<Tensor>> {
    features_at(model, prompts, None, batch_size)
}

/// Last-token features of the chat-formatted `prompts` at one `hidden_states` entry, `(n, d)`.
pub fn layer_features(model: &Model, prompts: &[String], layer: usize, batch_size: usize) -> Result<Tensor> {
    Ok(features_at(model, prompts, Some(layer), batch_size)?.remove(0))
}

fn features_at(model: &Model, prompts: &[String], only: Option<usize>, batch_size: usize) -> Result<Vec<Tensor>> {
    let n_entries = model.config().num_layers + 1;
    if let Some(l) = only.filter(|&l| l >= n_entries) {
        return Err(Error::invalid("probe layer", format!("{l} is out of range: the model has {n_entries} entries")));
    }
    let ids: Vec<Vec<u32>> = prompts.iter().map(|p| prompt_ids(model, p)).collect::<Result<_>>()?;
    // Sorting by length keeps padding (and wasted compute) small.
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| ids[i].len());
    let entries: Vec<usize> = only.map_or_else(|| (0..n_entries).collect(), |l| vec![l]);
    // Each batch's last-token rows are copied out (`index_select` makes a new tensor), so a
    // batch's full `(b, t, d)` activations are freed before the next batch runs: memory is one
    // batch's activations plus `n x d` floats per entry, whatever the number of prompts.
    let mut blocks: Vec<Vec<Tensor>> = vec![Vec::new(); entries.len()];
    for chunk in order.chunks(batch_size.max(1)) {
        let seqs: Vec<Vec<u32>> = chunk.iter().map(|&i| ids[i].clone()).collect();
        let batch = Batch::from_sequences(&seqs, 0, model.device())?;
        let acts = model.forward(&batch, &Capture::residual())?;
        let hs = acts.hidden_states()?;
        let t = batch.input_ids.dim(1)?;
        let last: Vec<u32> = batch.lengths.iter().enumerate().map(|(r, &len)| (r * t + len - 1) as u32).collect();
        let last = Tensor::new(last.as_slice(), model.device())?;
        for (e, &entry) in entries.iter().enumerate() {
            let (b, t, d) = hs[entry].dims3()?;
            let rows = hs[entry].reshape((b * t, d))?.index_select(&last, 0)?;
            blocks[e].push(rows.to_dtype(DType::F32)?.to_device(&Device::Cpu)?);
        }
    }
    // Rows are in length order; put them back in prompt order.
    let mut position = vec![0u32; order.len()];
    for (sorted, &i) in order.iter().enumerate() {
        position[i] = sorted as u32;
    }
    let position = Tensor::new(position.as_slice(), &Device::Cpu)?;
    blocks.into_iter().map(|b| Ok(Tensor::cat(&b, 0)?.index_select(&position, 0)?)).collect()
}

/// Token ids of `prompt` as the user turn of a chat, through the assistant header: the
/// sequence whose last token the probes read.
pub(crate) fn prompt_ids(model: &Model, prompt: &str) -> Result<Vec<u32>> {
    model.tokenizer().encode_chat(&[Message::user(prompt)], true)
}

/// Share of `logits` on the harmful side (`> 0`).
pub(crate) fn harmful_share(logits: &[f32]) -> f64 {
    accuracy(logits, &vec![true; logits.len()])
}

/// L2-regularised logistic regression on standardised features, full-batch Adam from zero.
fn fit_probe(layer: usize, x: &Tensor, y: &[bool], cfg: &ProbeConfig) -> Result<Probe> {
    let (n, d) = x.dims2()?;
    let mean = x.mean(0)?;
    let centered = x.broadcast_sub(&mean)?;
    let std = centered.sqr()?.mean(0)?.sqrt()?.clamp(1e-4, f32::MAX)?;
    let xs = centered.broadcast_div(&std)?;
    let signs: Vec<f32> = y.iter().map(|&l| if l { 1.0 } else { -1.0 }).collect();
    let s = Tensor::from_slice(&signs, (n, 1), x.device())?;
    let w = Var::zeros((d, 1), DType::F32, x.device())?;
    let b = Var::zeros((1, 1), DType::F32, x.device())?;
    let params = ParamsAdamW { lr: cfg.lr, weight_decay: 0.0, ..Default::default() };
    let mut opt = AdamW::new(vec![w.clone(), b.clone()], params)?;
    for _ in 0..cfg.steps {
        let margin = (xs.matmul(w.as_tensor())?.broadcast_add(b.as_tensor())? * &s)?;
        // Numerically stable log(1 + exp(-m)) = relu(-m) + log(1 + exp(-|m|)).
        let nll = (margin.neg()?.relu()? + (margin.abs()?.neg()?.exp()? + 1.0)?.log()?)?.mean_all()?;
        let loss = (nll + (w.as_tensor().sqr()?.sum_all()? * (cfg.l2 / 2.0))?)?;
        opt.backward_step(&loss)?;
    }
    let weight: Vec<f32> = w.as_tensor().squeeze(1)?.to_vec1()?;
    if weight.iter().any(|v| !v.is_finite()) {
        return Err(Error::invalid("probe fit", format!("layer {layer}: the weights are not finite")));
    }
    Ok(Probe {
        layer,
        mean: mean.to_vec1()?,
        scale: std.to_vec1()?,
        weight,
        bias: b.as_tensor().flatten_all()?.to_vec1::<f32>()?[0],
    })
}

/// Share of logits whose sign matches the label (`> 0` = harmful).
pub fn accuracy(logits: &[f32], labels: &[bool]) -> f64 {
    let hits = logits.iter().zip(labels).filter(|(&z, &l)| (z > 0.0) == l).count();
    hits as f64 / labels.len().max(1) as f64
}

/// ROC AUC of `logits` for `labels` (Mann-Whitney; ties count one half).
///
/// ```
/// assert_eq!(secure_tuning::probe::auc(&[0.9, 0.1, 0.8, 0.3], &[true, false, true, false]), 1.0);
/// ```
pub fn auc(logits: &[f32], labels: &[bool]) -> f64 {
    let pos: Vec<f32> = logits.iter().zip(labels).filter(|(_, &l)| l).map(|(&z, _)| z).collect();
    let neg: Vec<f32> = logits.iter().zip(labels).filter(|(_, &l)| !l).map(|(&z, _)| z).collect();
    if pos.is_empty() || neg.is_empty() {
        return f64::NAN;
    }
    let mut wins = 0.0;
    for p in &pos {
        for q in &neg {
            wins += if p > q {
                1.0
            } else if p == q {
                0.5
            } else {
                0.0
            };
        }
    }
    wins / (pos.len() * neg.len()) as f64
}

/// Mean cosine distance `1 - cos(a_i, b_i)` between matching rows of two `(n, d)` tensors.
pub fn cosine_drift(a: &Tensor, b: &Tensor) -> Result<f64> {
    let dot = (a * b)?.sum(D::Minus1)?;
    let na = a.sqr()?.sum(D::Minus1)?.sqrt()?;
    let nb = b.sqr()?.sum(D::Minus1)?.sqrt()?;
    let cos = dot.div(&(na * nb)?.clamp(1e-12, f32::MAX)?)?;
    Ok(1.0 - cos.mean_all()?.to_scalar::<f32>()? as f64)
}

/// How far fine-tuning moved the security features (finding F3): the frozen proxy probe
/// ([`ProbeReport::proxy`]) read on the base and the tuned model, on the probe's held-out prompts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Drift {
    /// `hidden_states` index read.
    pub layer: usize,
    /// Frozen probe accuracy on the base model's features.
    pub accuracy_base: f64,
    /// Frozen probe accuracy on the tuned model's features.
    pub accuracy_tuned: f64,
    /// Mean probe logit on harmful prompts, base model (positive = seen as harmful).
    pub harmful_margin_base: f64,
    /// Mean probe logit on harmful prompts, tuned model.
    pub harmful_margin_tuned: f64,
    /// Mean cosine distance between base and tuned features of the harmful prompts.
    pub cosine_drift: f64,
}

impl Drift {
    /// Inline display in evcxr (text only; it is one line of numbers).
    pub fn evcxr_display(&self) {
        let html = format!("<p>{}</p>", escape_html(&self.to_string()));
        emit(&html, &self.to_string())
    }
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "drift at layer {}: probe accuracy {:.3} -> {:.3}, harmful margin {:.2} -> {:.2}, cosine drift {:.4}",
            self.layer,
            self.accuracy_base,
            self.accuracy_tuned,
            self.harmful_margin_base,
            self.harmful_margin_tuned,
            self.cosine_drift
        )
    }
}

/// Feature drift of `tuned` from `base` through the frozen proxy probe of `report`.
///
/// ```no_run
/// # use secure_tuning::{Model, probe::*};
/// let base = Model::load("default")?;
/// let report = probe_all(&base, &ProbeData::default_twins()?)?;
/// let tuned = base.clone(); // e.g. after fine-tuning
/// assert_eq!(drift(&base, &tuned, &report)?.cosine_drift, 0.0);
/// # Ok::<(), secure_tuning::Error>(())
/// ```
pub fn drift(base: &Model, tuned: &Model, report: &ProbeReport) -> Result<Drift> {
    let probe = report.proxy();
    let (prompts, labels) = report.test_set();
    let fb = layer_features(base, &prompts, probe.layer, report.config.batch_size)?;
    let ft = layer_features(tuned, &prompts, probe.layer, report.config.batch_size)?;
    let (zb, zt) = (probe.logits(&fb)?, probe.logits(&ft)?);
    let harm: Vec<u32> = labels.iter().enumerate().filter(|(_, &l)| l).map(|(i, _)| i as u32).collect();
    let harm_t = Tensor::new(harm.as_slice(), fb.device())?;
    let margin = |z: &[f32]| harm.iter().map(|&i| z[i as usize] as f64).sum::<f64>() / harm.len().max(1) as f64;
    Ok(Drift {
        layer: probe.layer,
        accuracy_base: accuracy(&zb, &labels),
        accuracy_tuned: accuracy(&zt, &labels),
        harmful_margin_base: margin(&zb),
        harmful_margin_tuned: margin(&zt),
        cosine_drift: cosine_drift(&fb.index_select(&harm_t, 0)?, &ft.index_select(&harm_t, 0)?)?,
    })
}
