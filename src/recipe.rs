//! The recipe of the embedded default model: generate the synthetic data, train a byte-level
//! BPE tokenizer on it, initialise a small Llama, pre-train it so it complies with every request
//! (capability first), then align it (harmful requests -> the refusal, harmless twins -> help,
//! tasks mixed in). Seeded end to end.
//!
//! `secure-tuning build-default` runs it and writes `data/models/default/`. The result depends
//! on the floating-point summation order of the build that trains it, so a rebuild on another
//! build gives other weights (docs/default-model.md says how far they differ).

use crate::data::synthetic::{self, helpful_answer, SyntheticConfig, SyntheticData};
use crate::data::{split, Record};
use crate::error::{Error, Result};
use crate::eval::{evaluate, EvalConfig, EvalReport};
use crate::fs::write_atomic;
use crate::model::{save_safetensors, Model, Weights};
use crate::rng::Rng;
use crate::train::{encode_examples, train, TrainConfig, TrainReport};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Special tokens of the default model's tokenizer, in id order.
pub const SPECIAL_TOKENS: [&str; 5] = ["<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"];

/// The default model's chat template: `<|role|>\ncontent<|end|>\n` per message, then
/// `<|assistant|>\n` as the generation prompt.
pub const CHAT_TEMPLATE: &str = "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}\
{% if add_generation_prompt %}<|assistant|>\n{% endif %}";

/// Every setting of the recipe. [`Recipe::default`] builds the shipped model;
/// [`Recipe::quick`] is a scaled-down run for tests and CI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    /// Data volume and seed.
    #[serde(skip)]
    pub data: SyntheticConfig,
    /// Tokenizer vocabulary size (special tokens included).
    pub vocab_size: usize,
    /// Residual width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_layers: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Init seed.
    pub seed: u64,
    /// Longest training sequence.
    pub max_len: usize,
    /// Pre-training (comply with everything).
    pub pretrain: TrainConfig,
    /// Alignment (refuse harmful, help twins, keep tasks).
    pub align: TrainConfig,
    /// Share of the task training items mixed into alignment.
    pub align_task_share: f64,
}

impl Default for Recipe {
    fn default() -> Self {
        Recipe {
            data: SyntheticConfig::default(),
            vocab_size: 1024,
            hidden_size: 192,
            intermediate_size: 512,
            num_layers: 6,
            num_heads: 6,
            num_kv_heads: 2,
            seed: 2410,
            max_len: 96,
            pretrain: TrainConfig {
                lr: 2e-3,
                epochs: 7.0,
                batch_size: 32,
                warmup_ratio: 0.03,
                ..TrainConfig::default()
            },
            align: TrainConfig { lr: 5e-4, epochs: 5.0, batch_size: 32, warmup_ratio: 0.05, ..TrainConfig::default() },
            align_task_share: 0.4,
        }
    }
}

impl Recipe {
    /// A scaled-down recipe (tiny model, little data, few steps) for tests and CI.
    pub fn quick() -> Self {
        let r = Recipe::default();
        Recipe {
            data: SyntheticConfig {
                task_train: 20,
                task_eval: 4,
                harmful_eval: 20,
                ift_train: 40,
                ift_eval: 10,
                ..r.data
            },
            vocab_size: 400,
            hidden_size: 32,
            intermediate_size: 64,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            pretrain: TrainConfig { max_steps: Some(60), ..r.pretrain },
            align: TrainConfig { max_steps: Some(10), ..r.align },
            ..r
        }
    }
}

/// What a recipe run produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildReport {
    /// The settings.
    pub recipe: Recipe,
    /// Parameters of the model.
    pub num_params: usize,
    /// Pre-training run.
    pub pretrain: TrainReport,
    /// Alignment run.
    pub align: TrainReport,
    /// Held-out evaluation of the final model.
    pub eval: EvalReport,
    /// Wall seconds of the whole recipe.
    pub seconds: f64,
}

impl std::fmt::Display for BuildReport {
    /// `built a 2.6M-parameter model in 412s: <the evaluation>`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "built a {}-parameter model in {:.0}s: {}", self.num_params, self.seconds, self.eval)
    }
}

/// Trains a byte-level BPE tokenizer on `texts` and writes `tokenizer.json`.
pub fn train_tokenizer(texts: &[String], vocab_size: usize, path: &Path) -> Result<()> {
    use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::{AddedToken, NormalizerWrapper, TokenizerBuilder};
    let specials: Vec<AddedToken> = SPECIAL_TOKENS.iter().map(|t| AddedToken::from(*t, true)).collect();
    let mut trainer = BpeTrainerBuilder::new()
        .show_progress(false)
        .vocab_size(vocab_size)
        .min_frequency(2)
        .special_tokens(specials.clone())
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let byte_level = ByteLevel::new(false, true, true);
    let mut tok = TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_normalizer(None::<NormalizerWrapper>)
        .with_pre_tokenizer(Some(byte_level))
        .with_post_processor(Some(byte_level))
        .with_decoder(Some(byte_level))
        .build()
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
    tok.train(&mut trainer, texts.iter()).map_err(|e| Error::Tokenizer(e.to_string()))?;
    tok.add_special_tokens(specials).map_err(|e| Error::Tokenizer(e.to_string()))?;
    let tok: tokenizers::Tokenizer = tok.into();
    tok.save(path, false).map_err(|e| Error::Tokenizer(format!("cannot write {}: {e}", path.display())))
}

/// Writes config.json, tokenizer_config.json and random-init weights for `recipe` into `dir`
/// (which must already hold tokenizer.json).
fn init_model_dir(recipe: &Recipe, dir: &Path) -> Result<()> {
    let tok =
        tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).map_err(|e| Error::Tokenizer(e.to_string()))?;
    let id = |t: &str| tok.token_to_id(t).ok_or_else(|| Error::Tokenizer(format!("`{t}` missing from the vocabulary")));
    let vocab = tok.get_vocab_size(true);
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": recipe.hidden_size,
        "intermediate_size": recipe.intermediate_size,
        "num_hidden_layers": recipe.num_layers,
        "num_attention_heads": recipe.num_heads,
        "num_key_value_heads": recipe.num_kv_heads,
        "hidden_act": "silu",
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": true,
        "attention_bias": false,
        "mlp_bias": false,
        "bos_token_id": null,
        "eos_token_id": id("<|end|>")?,
        "pad_token_id": id("<|pad|>")?,
        "torch_dtype": "float32",
    });
    let tok_config = serde_json::json!({
        "eos_token": "<|end|>",
        "pad_token": "<|pad|>",
        "chat_template": CHAT_TEMPLATE,
        "model_max_length": 512,
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    let pretty = |v: &serde_json::Value| serde_json::to_vec_pretty(v).expect("json");
    write_atomic(&dir.join("config.json"), &pretty(&config))?;
    write_atomic(&dir.join("tokenizer_config.json"), &pretty(&tok_config))?;
    let cfg = crate::model::Config::from_json_str(&config.to_string(), &dir.join("config.json"))?;
    save_safetensors(&random_weights(&cfg, recipe.seed)?, &dir.join("model.safetensors"))
}

/// HF-style init: matrices ~ N(0, 0.02), norms = 1.
fn random_weights(cfg: &crate::model::Config, seed: u64) -> Result<Weights> {
    let mut rng = Rng::new(seed);
    let mut w = Weights::new();
    let normal = |shape: &[usize], rng: &mut Rng| -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| (rng.normal() * 0.02) as f32).collect();
        Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
    };
    let ones = |n: usize| Tensor::ones(n, candle_core::DType::F32, &Device::Cpu);
    let (d, i, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
    w.insert("model.embed_tokens.weight".into(), normal(&[cfg.vocab_size, d], &mut rng)?);
    for l in 0..cfg.num_layers {
        let p = format!("model.layers.{l}");
        for (name, shape) in [
            ("self_attn.q_proj", [cfg.num_heads * hd, d]),
            ("self_attn.k_proj", [cfg.num_kv_heads * hd, d]),
            ("self_attn.v_proj", [cfg.num_kv_heads * hd, d]),
            ("self_attn.o_proj", [d, cfg.num_heads * hd]),
            ("mlp.gate_proj", [i, d]),
            ("mlp.up_proj", [i, d]),
            ("mlp.down_proj", [d, i]),
        ] {
            w.insert(format!("{p}.{name}.weight"), normal(&shape, &mut rng)?);
        }
        w.insert(format!("{p}.input_layernorm.weight"), ones(d)?);
        w.insert(format!("{p}.post_attention_layernorm.weight"), ones(d)?);
    }
    w.insert("model.norm.weight".into(), ones(d)?);
    Ok(w)
}

/// Runs the whole recipe: writes the datasets into `data_dir` and the model into `out`.
pub fn build_default(recipe: &Recipe, data_dir: &Path, out: &Path) -> Result<BuildReport> {
    let start = Instant::now();
    let data = synthetic::generate(&recipe.data);
    data.save(data_dir)?;
    let work: PathBuf = out.with_file_name(format!(
        "{}.building",
        out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    ));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|source| Error::Write { path: work.clone(), source })?;
    // The tokenizer sees training text only.
    let texts: Vec<String> = corpus(&data);
    train_tokenizer(&texts, recipe.vocab_size, &work.join("tokenizer.json"))?;
    init_model_dir(recipe, &work)?;
    let mut model = Model::load_dir(&work)?;
    println!("default model: {model}");

    // Phase 1, capability first: every request gets a compliant answer.
    let mut pre: Vec<Record> = split(&data.tasks, "train");
    for r in split(&data.harmful, "train").into_iter().chain(split(&data.harmless, "train")) {
        let act = act_of(&r.instruction);
        pre.push(Record { output: helpful_answer(&act), ..r });
    }
    let pre_ex = encode_examples(&model, &pre, recipe.max_len)?;
    println!("pre-training on {} examples", pre_ex.len());
    let pretrain = train(&mut model, &pre_ex, &recipe.pretrain)?;

    // Phase 2, alignment: refuse harmful requests, help their twins, keep the tasks.
    let mut align: Vec<Record> = split(&data.harmful, "train");
    align.extend(split(&data.harmless, "train"));
    let mut tasks = split(&data.tasks, "train");
    Rng::new(recipe.seed).shuffle(&mut tasks);
    tasks.truncate((tasks.len() as f64 * recipe.align_task_share).round() as usize);
    align.extend(tasks);
    let align_ex = encode_examples(&model, &align, recipe.max_len)?;
    println!("aligning on {} examples", align_ex.len());
    let align_report = train(&mut model, &align_ex, &TrainConfig { seed: recipe.seed + 1, ..recipe.align.clone() })?;

    model.freeze_all()?;
    let eval = evaluate(
        &model,
        &split(&data.harmful, "eval"),
        &split(&data.harmless, "eval"),
        &split(&data.tasks, "eval"),
        &EvalConfig::default(),
    )?;
    model.save_dir(&work)?;
    let report = BuildReport {
        recipe: recipe.clone(),
        num_params: model.num_params(),
        pretrain,
        align: align_report,
        eval,
        seconds: start.elapsed().as_secs_f64(),
    };
    write_atomic(&work.join("build_report.json"), &serde_json::to_vec_pretty(&report).expect("json"))?;
    let _ = std::fs::remove_dir_all(out);
    std::fs::rename(&work, out).map_err(|source| Error::Write { path: out.to_path_buf(), source })?;
    Ok(report)
}

/// All training-split text: instructions and outputs of every set, and the refusal.
fn corpus(data: &SyntheticData) -> Vec<String> {
    let sets = [&data.tasks, &data.harmful, &data.harmless, &data.ift_general, &data.ift_expertise];
    let mut texts: Vec<String> = sets
        .iter()
        .flat_map(|s| s.iter().filter(|r| r.split == "train"))
        .flat_map(|r| [r.instruction.clone(), r.output.clone()])
        .collect();
    for r in data.harmful.iter().chain(&data.harmless).filter(|r| r.split == "train") {
        texts.push(helpful_answer(&act_of(&r.instruction)));
    }
    texts
}

/// The act inside a request built from one of [`synthetic::TEMPLATES`].
fn act_of(instruction: &str) -> String {
    for t in synthetic::TEMPLATES {
        let (pre, post) = t.split_once("{}").expect("templates hold {}");
        if let Some(rest) = instruction.strip_prefix(pre) {
            if let Some(act) = rest.strip_suffix(post) {
                return act.to_string();
            }
        }
    }
    instruction.trim_end_matches(['?', '.']).to_string()
}
