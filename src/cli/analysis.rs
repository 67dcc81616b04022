//! Commands that measure a model: `eval` (refusals and task skill), `probe` (the security
//! feature classifier), `robustness` (the module heatmap) and `search` (Mods_Robust).

use super::args::{benign_data, claim, load_set, num, ModelArgs};
use super::print;
use clap::Args;
use secure_tuning::eval::{evaluate, EvalConfig};
use secure_tuning::probe::{probe_all, ProbeData};
use secure_tuning::robustness::{Analysis, Measure, Mode, Normalize, Robustness, RobustnessConfig};
use secure_tuning::search::SearchConfig;
use secure_tuning::Result;
use std::path::PathBuf;

#[derive(Args)]
pub struct EvalArgs {
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
    #[arg(long, value_parser = num::count)]
    limit: Option<usize>,
    /// Token budget per response.
    #[arg(long, value_parser = num::count, default_value_t = 24)]
    max_new_tokens: usize,
    /// Prompts generated together (the responses do not depend on it; 1 = one at a time).
    #[arg(long, value_parser = num::count, default_value_t = 16)]
    batch_size: usize,
    /// Print the report (rates, counts and the sample responses) as JSON.
    #[arg(long)]
    json: bool,
}

pub fn eval(args: EvalArgs) -> Result<()> {
    let model = args.model.load()?;
    let split = args.split.as_deref();
    let harmful = load_set(&args.harmful, "harmful.jsonl", split, args.limit)?;
    let harmless = load_set(&args.harmless, "harmless.jsonl", split, args.limit)?;
    let tasks = load_set(&args.tasks, "tasks.jsonl", split, args.limit)?;
    let cfg = EvalConfig { max_new_tokens: args.max_new_tokens, batch_size: args.batch_size, ..EvalConfig::default() };
    let report = evaluate(&model, &harmful, &harmless, &tasks, &cfg)?;
    if !args.json {
        println!("{model}");
    }
    print(&report, args.json)
}

#[derive(Args)]
pub struct ProbeArgs {
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

pub fn probe(args: ProbeArgs) -> Result<()> {
    let _out = args.out.as_deref().map(claim).transpose()?;
    let model = args.model.load()?;
    let report = probe_all(&model, &args.data()?)?;
    if let Some(out) = &args.out {
        report.write(out)?;
    }
    print(&report, args.json)
}

#[derive(Args)]
pub struct RobustnessArgs {
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
    #[arg(long, value_parser = num::steps)]
    steps: Option<usize>,
    /// Update / adversarial learning rate.
    #[arg(long, value_parser = num::positive)]
    lr: Option<f64>,
    /// Perturb: relative noise norm.
    #[arg(long, value_parser = num::positive)]
    epsilon: Option<f64>,
    /// Adjacent layers per column (default: 1 up to 16 layers).
    #[arg(long, value_parser = num::count)]
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
            ..d
        }
    }
}

pub fn robustness(args: RobustnessArgs) -> Result<()> {
    let _out = args.probe.out.as_deref().map(claim).transpose()?;
    let model = args.probe.model.load()?;
    let probe = probe_all(&model, &args.probe.data()?)?;
    let benign = benign_data(&args.data)?;
    let rob = Analysis::new(&model, &probe, &benign).robustness(&args.config())?;
    if let Some(out) = &args.probe.out {
        rob.write(out)?;
    }
    print(&rob, args.probe.json)
}

#[derive(Args)]
pub struct SearchArgs {
    #[command(flatten)]
    robustness: RobustnessArgs,
    /// Reuse a matrix written by `robustness --out` (its robustness.json) instead of measuring.
    #[arg(long)]
    from: Option<PathBuf>,
    /// Largest joint damage kept, as a share of the damage when all modules change.
    #[arg(long, value_parser = num::non_negative, default_value_t = 0.3)]
    tolerance: f64,
    /// Largest share of the module parameters in the set.
    #[arg(long, value_parser = num::fraction)]
    max_share: Option<f64>,
}

pub fn search(args: SearchArgs) -> Result<()> {
    let r = &args.robustness;
    let _out = r.probe.out.as_deref().map(claim).transpose()?;
    let model = r.probe.model.load()?;
    let probe = probe_all(&model, &r.probe.data()?)?;
    let benign = benign_data(&r.data)?;
    let analysis = Analysis::new(&model, &probe, &benign);
    let rob = match &args.from {
        Some(path) => Robustness::read_json(path)?,
        None => analysis.robustness(&r.config())?,
    };
    let cfg = SearchConfig { tolerance: args.tolerance, max_share: args.max_share, ..SearchConfig::default() };
    let found = analysis.search(&rob, &cfg)?;
    if let Some(out) = &r.probe.out {
        found.write(out)?;
    }
    print(&found, r.probe.json)
}
