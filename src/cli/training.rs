//! Commands that fine-tune: `tune` (one run of any strategy), `align` (teach a model to refuse),
//! `curve` (safety along plain fine-tuning, per LR) and `reproduce` (the whole experiment).

use super::args::{benign_data, benign_tasks, claim, load_set, num, ModelArgs};
use super::print;
use clap::Args;
use secure_tuning::data::{default_data_dir, load_records};
use secure_tuning::experiment::{reproduce as run_experiment, ReproduceConfig};
use secure_tuning::model::ModuleSet;
use secure_tuning::train::TrainConfig;
use secure_tuning::tune::{safety_curve, AlignConfig, Curves, MlLr, PlanFile, SafetyEvalSets, Watch};
use secure_tuning::{Error, Model, Result};
use std::path::PathBuf;

/// What to train at which rate, shared by `tune` and `export-plan`.
#[derive(Args)]
pub struct PlanArgs {
    /// Peak learning rate.
    #[arg(long, value_parser = num::positive, default_value_t = 2e-4)]
    lr: f64,
    /// Passes over the data (ignored with --steps).
    #[arg(long, value_parser = num::positive, default_value_t = 1.0)]
    epochs: f64,
    /// Optimizer steps.
    #[arg(long, value_parser = num::steps)]
    steps: Option<usize>,
    /// Examples per step.
    #[arg(long, value_parser = num::count, default_value_t = 16)]
    batch_size: usize,
    /// Data-order seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Longest sequence in tokens.
    #[arg(long, value_parser = num::count, default_value_t = 256)]
    max_len: usize,
    /// Global gradient-norm clip (0 = off).
    #[arg(long, value_parser = num::non_negative, default_value_t = 1.0)]
    clip_norm: f64,
    /// AdamW's decoupled weight decay (on matrices only).
    #[arg(long, value_parser = num::non_negative, default_value_t = 0.0)]
    weight_decay: f64,
    /// ML-LR: the robust module set, a `search --json` output (or any JSON with a `modules`
    /// list of `{"layer", "kind"}` or `"L3.q"`); it trains at --lr, the rest at --ratio x.
    #[arg(long)]
    robust: Option<PathBuf>,
    /// ML-LR: the rest's LR multiplier (default 0.1 with --robust; 1.0 without).
    #[arg(long, value_parser = num::non_negative)]
    ratio: Option<f64>,
    /// SWAT: train only the robust set for this share of the steps, then everything.
    #[arg(long, value_parser = num::share)]
    swat: Option<f64>,
    /// Train LoRA adapters of this rank (alpha = 2 x rank) on all projections.
    #[arg(long, value_parser = num::count)]
    lora: Option<usize>,
}

impl PlanArgs {
    /// The plan: plain fine-tuning is the ML-LR plan at ratio 1.0. `train` carries the trainer
    /// settings the flags do not set (checkpoints, budgets).
    fn plan(&self, model: &Model, train: TrainConfig) -> Result<MlLr> {
        let train = TrainConfig {
            lr: self.lr,
            epochs: self.epochs,
            max_steps: self.steps,
            batch_size: self.batch_size,
            seed: self.seed,
            clip_norm: (self.clip_norm > 0.0).then_some(self.clip_norm),
            weight_decay: self.weight_decay,
            ..train
        };
        let robust = match &self.robust {
            Some(path) => ModuleSet::read_json(path)?,
            None => ModuleSet::all(model.config().num_layers),
        };
        let default_ratio = if self.robust.is_some() { 0.1 } else { 1.0 };
        let mut plan = MlLr::builder()
            .train_config(train)
            .robust(robust)
            .ratio(self.ratio.unwrap_or(default_ratio))
            .max_len(self.max_len);
        if let Some(share) = self.swat {
            plan = plan.swat(share);
        }
        if let Some(rank) = self.lora {
            plan = plan.lora(rank, 2.0 * rank as f64);
        }
        plan.build()
    }
}

#[derive(Args)]
pub struct TuneArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Training data (JSONL/JSON/CSV with `instruction` and `output`); records with split `eval` are skipped.
    #[arg(long)]
    data: PathBuf,
    /// Where to save the tuned model (a Hugging Face folder; LoRA adapters are merged into it).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    plan: PlanArgs,
    /// Checkpoint folder (resumed from if it holds a checkpoint).
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// Stop (and checkpoint) after this many seconds; run again to resume.
    #[arg(long, value_parser = num::seconds)]
    time_budget: Option<f64>,
    /// With --lora: also write the adapters, unmerged, as a PEFT adapter folder here.
    #[arg(long, requires = "lora")]
    adapters_out: Option<PathBuf>,
    /// Replace other weights the --out folder holds (shards, an index), which would otherwise be
    /// loaded instead of the tuned model; without it such a folder is refused.
    #[arg(long)]
    overwrite: bool,
    /// Print the training report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn tune(args: TuneArgs) -> Result<()> {
    let _out = claim(&args.out)?;
    let model = args.model.load()?;
    let mut records = load_records(&args.data)?;
    records.retain(|r| r.split != "eval");
    if records.iter().all(|r| r.output.is_empty()) {
        return Err(Error::invalid(format!("--data {}", args.data.display()), "no record has an `output` to learn"));
    }
    let train = TrainConfig {
        resume: args.checkpoint_dir.is_some(),
        checkpoint_dir: args.checkpoint_dir.clone(),
        time_budget: args.time_budget.map(std::time::Duration::from_secs_f64),
        ..TrainConfig::default()
    };
    let _adapters = args.adapters_out.as_deref().map(claim).transpose()?;
    let plan = args.plan.plan(&model, train)?;
    if !args.overwrite {
        // Refused now rather than after training: the check save_dir makes.
        secure_tuning::model::check_save_folder(&args.out)?;
    }
    let tuned = plan.fit(&model, &records)?;
    if args.overwrite {
        tuned.model.save_dir_replacing(&args.out)?;
    } else {
        tuned.model.save_dir(&args.out)?;
    }
    if let (Some(dir), Some(adapted)) = (&args.adapters_out, &tuned.adapted) {
        adapted.save_adapters(dir)?;
    }
    print(&tuned.report, args.json)?;
    if !args.json {
        println!("saved to {}", args.out.display());
    }
    Ok(())
}

#[derive(Args)]
pub struct ExportPlanArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    plan: PlanArgs,
    /// The training data, to count the steps of --epochs passes (not needed with --steps).
    #[arg(long)]
    data: Option<PathBuf>,
    /// The plan file to write.
    #[arg(long)]
    out: PathBuf,
    /// Print the plan as JSON instead of a summary.
    #[arg(long)]
    json: bool,
}

pub fn export_plan(args: ExportPlanArgs) -> Result<()> {
    let model = args.model.load()?;
    let plan = args.plan.plan(&model, TrainConfig::default())?;
    let total_steps = match (args.plan.steps, &args.data) {
        (Some(steps), _) => steps,
        (None, Some(data)) => {
            let n = load_records(data)?.iter().filter(|r| r.split != "eval").count();
            plan.train.total_steps(n)
        }
        (None, None) => {
            return Err(Error::invalid("--steps", "give --steps, or --data to count the steps of --epochs passes"))
        }
    };
    let file = PlanFile::export(&plan, &model, total_steps)?;
    file.write(&args.out)?;
    print(&file, args.json)
}

#[derive(Args)]
pub struct AlignArgs {
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
    #[arg(long, value_parser = num::count, default_value_t = 5)]
    holdout_every: usize,
    /// Harmless training twins answered with the model's own greedy reply.
    #[arg(long, value_parser = num::count_or_zero, default_value_t = 200)]
    own_replies: usize,
    /// Token budget of each own reply.
    #[arg(long, value_parser = num::count, default_value_t = 48)]
    reply_tokens: usize,
    /// Optimizer steps (default: one pass over the training set).
    #[arg(long, value_parser = num::steps)]
    steps: Option<usize>,
    /// Examples per step.
    #[arg(long, value_parser = num::count, default_value_t = 8)]
    batch_size: usize,
    /// Peak learning rate.
    #[arg(long, value_parser = num::positive, default_value_t = 1e-4)]
    lr: f64,
    /// Data-order seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

pub fn align(args: AlignArgs) -> Result<()> {
    let _out = claim(&args.out)?;
    let model = args.model.load()?;
    let d = AlignConfig::default();
    let cfg = AlignConfig {
        holdout_every: args.holdout_every,
        own_replies: args.own_replies,
        reply_tokens: args.reply_tokens,
        train: TrainConfig {
            lr: args.lr,
            max_steps: args.steps,
            batch_size: args.batch_size,
            seed: args.seed,
            ..d.train.clone()
        },
        ..d
    };
    let aligned =
        secure_tuning::tune::align(&model, &load_records(&args.harmful)?, &load_records(&args.harmless)?, &cfg)?;
    aligned.write(&args.out)?;
    print(&aligned.summary(), args.json)?;
    if !args.json {
        println!("model in {}, split data in {}", args.out.join("model").display(), args.out.join("data").display());
    }
    Ok(())
}

#[derive(Args)]
pub struct CurveArgs {
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
    #[arg(long, value_parser = num::positive, value_delimiter = ',', default_value = "2e-4")]
    lr: Vec<f64>,
    /// Optimizer steps per curve.
    #[arg(long, value_parser = num::steps, default_value_t = 150)]
    steps: usize,
    /// Evaluate every this many steps.
    #[arg(long, value_parser = num::count, default_value_t = 25)]
    every: usize,
    /// Examples per step.
    #[arg(long, value_parser = num::count, default_value_t = 16)]
    batch_size: usize,
    /// Data-order seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Records per evaluation set.
    #[arg(long, value_parser = num::count, default_value_t = 100)]
    limit: usize,
    /// Folder for curve.json and the SVG charts.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the curves as JSON.
    #[arg(long)]
    json: bool,
}

pub fn curve(args: CurveArgs) -> Result<()> {
    let _out = args.out.as_deref().map(claim).transpose()?;
    let model = args.model.load()?;
    let train_set = benign_data(&args.data)?;
    let mut tasks = benign_tasks(&args.data)?;
    tasks.truncate(args.limit);
    let sets = SafetyEvalSets {
        harmful: load_set(&args.harmful, "harmful.jsonl", None, Some(args.limit))?,
        harmless: load_set(&args.harmless, "harmless.jsonl", None, Some(args.limit))?,
        tasks,
    };
    let watch = Watch { every: args.every, ..Watch::new(sets) };
    let mut curves = Curves::default();
    for &lr in &args.lr {
        let plan =
            MlLr::builder().ratio(1.0).lr(lr).steps(args.steps).batch_size(args.batch_size).seed(args.seed).build()?;
        curves.0.push(safety_curve(&format!("lr {lr:.0e}"), &model, &plan, &train_set, &watch)?);
    }
    if let Some(out) = &args.out {
        curves.write(out)?;
    }
    print(&curves, args.json)
}

#[derive(Args)]
pub struct ReproduceArgs {
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

pub fn reproduce(args: ReproduceArgs) -> Result<()> {
    let _out = claim(&args.out)?;
    let model = Model::load(&args.model)?;
    let cfg = match &args.config {
        Some(path) => ReproduceConfig::from_file(path)?,
        None if args.quick => ReproduceConfig::quick(),
        None => ReproduceConfig::default(),
    };
    let cfg = ReproduceConfig { benign: args.data.clone().unwrap_or(cfg.benign.clone()), ..cfg };
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    let r = run_experiment(&model, &data_dir, &cfg)?;
    r.write(&args.out)?;
    print(&r.summary(), args.json)?;
    if !args.json {
        println!("report: {}", args.out.join("report.html").display());
    }
    Ok(())
}
