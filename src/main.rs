//! `secure-tuning`: the command-line face of the library. Each subcommand parses its flags,
//! converts them once into the library's types, calls the same public function a notebook
//! would, and prints a human summary or (`--json`) the serialised result. Errors are one line
//! on stderr and exit code 2.

use candle_core::Tensor;
use clap::{Args, Parser, Subcommand};
use secure_tuning::prelude::*;
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "secure-tuning",
    version,
    about = "Study and prevent the safety loss of benign fine-tuning"
)]
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
}

#[derive(Args)]
struct ModelArgs {
    /// A model folder, a hub id (`org/name`, through the hub cache; HF_HUB_OFFLINE=1 honoured) or `default`.
    #[arg(long)]
    model: String,
    /// Hub revision (branch, tag or commit).
    #[arg(long)]
    revision: Option<String>,
}

impl ModelArgs {
    fn load(&self) -> Result<Model> {
        let opts = LoadOptions {
            revision: self.revision.clone(),
            ..LoadOptions::default()
        };
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
    Ok(t.to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

fn forward(args: ForwardArgs) -> Result<()> {
    if args.text.is_empty() {
        return Err(Error::invalid(
            "--text",
            "the text is empty; pass at least one character",
        ));
    }
    let model = args.model.load()?;
    let ids = model.tokenizer().encode(&args.text, true)?;
    let batch = Batch::single(&ids, model.device())?;
    let acts = model.forward(&batch, &Capture::residual().with_logits(LogitsMode::Last))?;
    let last = ids.len() - 1;
    let last_logits = to_vec1(acts.logits()?)?;
    let hidden = acts
        .hidden_states()?
        .iter()
        .map(|h| to_vec1(&h.get(0)?.get(last)?))
        .collect::<Result<Vec<_>>>()?;
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
        println!(
            "  {i:>3} {:.3}",
            h.iter().map(|x| x * x).sum::<f32>().sqrt()
        );
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
        Some(temperature) => Sampling::TopP {
            temperature,
            top_p: args.top_p,
        },
        None => Sampling::Greedy,
    };
    let opts = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        sampling,
        seed: args.seed,
    };
    println!("{}", model.chat(&messages, &opts)?);
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Forward(a) => forward(a),
        Command::Chat(a) => chat(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
}
