//! Speed, measured: the workloads a user of this crate runs most (probe feature extraction, one
//! ML-LR training step with full fine-tuning or LoRA, generation with the KV cache) on a model
//! of a real model's shapes with random weights, so nothing is downloaded. The same workloads
//! in PyTorch + transformers live in `benches/torch_bench.py`; `compare_with_torch` runs it
//! with the same shapes and puts both sides in one table.
//!
//! Timing: `warmup` untimed runs, then `iters` timed runs, each ended by a device
//! synchronisation so queued GPU work is counted; a row is the median run, which a busy host's
//! stray slow run does not move. Results and the machine are in `docs/performance.md`.

use super::args::num;
use candle_core::{DType, Device};
use clap::Args;
use secure_tuning::error::{Error, Result};
use secure_tuning::model::{Batch, Capture, Config, GenerateOptions, LoraConfig, Model, ModuleSet};
use secure_tuning::train::{Example, TrainConfig, TrainStep};
use secure_tuning::tune::MlLr;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Instant;

#[derive(Args)]
pub struct BenchArgs {
    /// default, qwen2.5-0.5b or llama-3.2-1b.
    #[arg(long, default_value = "default")]
    preset: String,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Sequences per batch (default: 8 on a GPU, 4 on the CPU).
    #[arg(long, value_parser = num::count)]
    batch: Option<usize>,
    /// Tokens per sequence (default: 512 on a GPU, 128 on the CPU).
    #[arg(long, value_parser = num::count)]
    seq: Option<usize>,
    /// Timed runs per workload (default: 10 on a GPU, 3 on the CPU).
    #[arg(long, value_parser = num::count)]
    iters: Option<usize>,
    /// Untimed warm-up runs (default: 3 on a GPU, 1 on the CPU).
    #[arg(long, value_parser = num::count_or_zero)]
    warmup: Option<usize>,
    /// Comma-separated subset of forward, full-step, lora-step, generate.
    #[arg(long)]
    workloads: Option<String>,
    /// Peak dense TFLOP/s of the device, for MFU (default 989 on a GPU: H100/H200 SXM bf16).
    #[arg(long, value_parser = num::positive)]
    peak_tflops: Option<f64>,
    /// Also run benches/torch_bench.py with this Python (needs torch and transformers; peft optional).
    #[arg(long)]
    torch: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn bench(args: BenchArgs) -> Result<()> {
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

/// Model shapes to benchmark: the embedded default model's, or a public model's config.json.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Preset {
    /// The embedded default model (docs/default-model.md).
    Default,
    /// Qwen/Qwen2.5-0.5B-Instruct's shapes.
    Qwen25Half,
    /// meta-llama/Llama-3.2-1B-Instruct's shapes.
    Llama32One,
}

impl Preset {
    /// Every preset, by CLI name.
    pub const ALL: [Preset; 3] = [Preset::Default, Preset::Qwen25Half, Preset::Llama32One];

    /// The CLI name.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Default => "default",
            Preset::Qwen25Half => "qwen2.5-0.5b",
            Preset::Llama32One => "llama-3.2-1b",
        }
    }

    /// The preset's config.json text (the public model's, trimmed to what a decoder needs).
    pub fn config_json(self) -> Result<String> {
        match self {
            Preset::Default => {
                let path = secure_tuning::model::default_model_dir().join("config.json");
                secure_tuning::fs::read_file(&path, "the embedded default model is missing")
            }
            Preset::Qwen25Half => Ok(include_str!("../../benches/presets/qwen2.5-0.5b.json").to_string()),
            Preset::Llama32One => Ok(include_str!("../../benches/presets/llama-3.2-1b.json").to_string()),
        }
    }

    /// The settled configuration.
    ///
    /// ```
    /// use secure_tuning::bench::Preset;
    /// let cfg = Preset::Qwen25Half.config().unwrap();
    /// assert_eq!((cfg.num_layers, cfg.hidden_size, cfg.num_kv_heads), (24, 896, 2));
    /// assert_eq!(cfg.num_params(), 494_032_768); // Qwen2.5-0.5B's published size
    /// ```
    pub fn config(self) -> Result<Config> {
        Config::from_json_str(&self.config_json()?, Path::new(self.name()))
    }
}

impl FromStr for Preset {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Preset::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Preset::ALL.iter().map(|p| p.name()).collect();
            Error::invalid("bench preset", format!("`{s}`; expected one of {}", names.join(", ")))
        })
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One benchmarked workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// A forward pass keeping every hidden state, no LM head (probe feature extraction).
    Forward,
    /// One full fine-tuning ML-LR step (attention at the LR, the rest at 0.1x), clipped AdamW.
    FullStep,
    /// One LoRA step (adapters on all seven projection kinds, the same two LR groups).
    LoraStep,
    /// Greedy generation with the KV cache, batch 1.
    Generate,
}

impl Workload {
    /// Every workload, in table order.
    pub const ALL: [Workload; 4] = [Workload::Forward, Workload::FullStep, Workload::LoraStep, Workload::Generate];

    /// The CLI / JSON name.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Forward => "forward",
            Workload::FullStep => "full-step",
            Workload::LoraStep => "lora-step",
            Workload::Generate => "generate",
        }
    }
}

impl FromStr for Workload {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Workload::ALL.into_iter().find(|w| w.name() == s).ok_or_else(|| {
            Error::invalid("workload", format!("`{s}`; expected forward, full-step, lora-step or generate"))
        })
    }
}

/// What to run. `BenchConfig::for_device` picks shapes that suit the device.
///
/// ```
/// use secure_tuning::bench::{BenchConfig, Preset};
/// let cfg = BenchConfig::for_device(Preset::Default, &candle_core::Device::Cpu);
/// assert_eq!((cfg.batch, cfg.seq, cfg.dtype), (4, 128, candle_core::DType::F32));
/// ```
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Model shapes.
    pub preset: Preset,
    /// Where to run.
    pub device: Device,
    /// Weight dtype (adapters, optimizer state and the loss are f32 regardless).
    pub dtype: DType,
    /// Sequences per forward / training batch.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Untimed runs first.
    pub warmup: usize,
    /// Timed runs.
    pub iters: usize,
    /// LoRA rank (alpha = 2 x rank).
    pub lora_rank: usize,
    /// Prompt tokens before generation.
    pub gen_prompt: usize,
    /// New tokens generated.
    pub gen_tokens: usize,
    /// Which workloads.
    pub workloads: Vec<Workload>,
    /// The device's peak dense TFLOP/s in `dtype`, for model FLOP utilisation; `None` = not stated.
    pub peak_tflops: Option<f64>,
}

impl BenchConfig {
    /// GPU: bf16, batch 8 x 512, 3 warm-up and 10 timed runs, peak 989 TFLOP/s (H100/H200 SXM
    /// dense bf16). CPU: f32, batch 4 x 128, 1 warm-up and 3 timed runs.
    pub fn for_device(preset: Preset, device: &Device) -> Self {
        let gpu = !device.is_cpu();
        BenchConfig {
            preset,
            device: device.clone(),
            dtype: if gpu { DType::BF16 } else { DType::F32 },
            batch: if gpu { 8 } else { 4 },
            seq: if gpu { 512 } else { 128 },
            warmup: if gpu { 3 } else { 1 },
            iters: if gpu { 10 } else { 3 },
            lora_rank: 16,
            gen_prompt: 32,
            gen_tokens: 64,
            workloads: Workload::ALL.to_vec(),
            peak_tflops: gpu.then_some(989.0),
        }
    }
}

/// One measured workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchRow {
    /// Which workload ([`Workload::name`]).
    pub workload: String,
    /// Milliseconds per run (the median of the timed runs).
    pub ms: f64,
    /// Tokens per second (processed tokens; new tokens for generation).
    pub tokens_per_s: f64,
    /// Achieved model TFLOP/s (forward and training rows).
    pub tflops: Option<f64>,
    /// Model FLOP utilisation: `tflops / peak` when a peak is stated.
    pub mfu: Option<f64>,
}

/// The measurements of one preset on one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    /// Preset name.
    pub preset: String,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// Weight dtype.
    pub dtype: String,
    /// Sequences per batch.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Model parameters.
    pub params: usize,
    /// One row per workload.
    pub rows: Vec<BenchRow>,
}

fn device_name(dev: &Device) -> String {
    match dev.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// Mean milliseconds of `f` over `iters` runs after `warmup` runs, between device syncs.
fn time_ms(dev: &Device, warmup: usize, iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..warmup {
        f()?;
    }
    dev.synchronize()?;
    let mut runs = Vec::with_capacity(iters.max(1));
    for _ in 0..iters.max(1) {
        let start = Instant::now();
        f()?;
        dev.synchronize()?;
        runs.push(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(&mut runs))
}

/// The median of `xs` (the mean of the middle two for an even count); `xs` is not empty.
fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    let mid = xs.len() / 2;
    if xs.len() % 2 == 1 {
        xs[mid]
    } else {
        (xs[mid - 1] + xs[mid]) / 2.0
    }
}

/// Deterministic token ids in `1..vocab`.
fn token_ids(n: usize, vocab: usize, salt: u64) -> Vec<u32> {
    let mut rng = secure_tuning::rng::Rng::new(salt);
    (0..n).map(|_| 1 + rng.below(vocab - 1) as u32).collect()
}

/// Runs the configured workloads.
///
/// ```
/// use secure_tuning::bench::{run, BenchConfig, Preset, Workload};
/// let mut cfg = BenchConfig::for_device(Preset::Default, &candle_core::Device::Cpu);
/// (cfg.batch, cfg.seq, cfg.iters, cfg.workloads) = (1, 16, 1, vec![Workload::Forward]);
/// let report = run(&cfg).unwrap();
/// assert!(report.rows[0].tokens_per_s > 0.0);
/// ```
pub fn run(cfg: &BenchConfig) -> Result<BenchReport> {
    let config = cfg.preset.config()?;
    if cfg.batch == 0 || cfg.seq < 2 || cfg.gen_prompt == 0 {
        return Err(Error::invalid("bench shapes", "need batch >= 1, seq >= 2 and a non-empty prompt"));
    }
    let tok_dir = secure_tuning::model::default_model_dir();
    let base = Model::random(&config, &tok_dir, &cfg.device, cfg.dtype)?;
    let params = base.num_params();
    let (l, q_dim, d, v) =
        (config.num_layers, config.num_heads * config.head_dim, config.hidden_size, config.vocab_size);
    // Matmul parameters: every weight except the embedding lookup, plus the LM head.
    let head = v * d;
    let body = params - v * d - if config.tie_word_embeddings { 0 } else { head };
    let tokens = cfg.batch * cfg.seq;
    let attn_flops = |passes: f64| passes * 2.0 * l as f64 * cfg.seq as f64 * q_dim as f64 * tokens as f64;
    let forward_flops = 2.0 * body as f64 * tokens as f64 + attn_flops(2.0);
    let train_flops = 6.0 * (body + head) as f64 * tokens as f64 + attn_flops(6.0);
    let row = |w: Workload, ms: f64, n_tokens: usize, flops: Option<f64>| {
        let tflops = flops.map(|f| f / (ms / 1e3) / 1e12);
        BenchRow {
            workload: w.name().into(),
            ms,
            tokens_per_s: n_tokens as f64 / (ms / 1e3),
            tflops,
            mfu: tflops.zip(cfg.peak_tflops).map(|(t, p)| t / p),
        }
    };
    let seqs: Vec<Vec<u32>> = (0..cfg.batch).map(|i| token_ids(cfg.seq, v, i as u64)).collect();
    let examples: Vec<Example> = seqs.iter().map(|ids| Example { ids: ids.clone(), loss_start: 1 }).collect();
    let mut rows = Vec::new();
    for &w in &cfg.workloads {
        match w {
            Workload::Forward => {
                let batch = Batch::from_sequences(&seqs, 0, &cfg.device)?;
                let capture = Capture::residual();
                let ms = time_ms(&cfg.device, cfg.warmup, cfg.iters, || base.forward(&batch, &capture).map(drop))?;
                rows.push(row(w, ms, tokens, Some(forward_flops)));
            }
            Workload::FullStep | Workload::LoraStep => {
                let mut model = base.clone();
                let mut plan = MlLr::builder().robust(ModuleSet::attn(l)).ratio(0.1).lr(1e-5);
                if w == Workload::LoraStep {
                    let lora = LoraConfig::new(cfg.lora_rank, 2.0 * cfg.lora_rank as f64);
                    model.add_lora(&lora)?;
                    plan = plan.lora_config(lora);
                }
                let groups = plan.build()?.groups(&model, 1)?;
                let train = TrainConfig { groups, clip_norm: Some(1.0), ..TrainConfig::default() };
                let mut stepper = TrainStep::new(&mut model, &train)?;
                let batch: Vec<&Example> = examples.iter().collect();
                let micro = [batch];
                let mut step = 0;
                let ms = time_ms(&cfg.device, cfg.warmup, cfg.iters, || {
                    stepper.step(&model, &micro, step, 1e-5, false)?;
                    step += 1;
                    Ok(())
                })?;
                // LoRA skips the weight gradients (a third of the matmul work) but not the rest.
                let flops = if w == Workload::FullStep { Some(train_flops) } else { None };
                rows.push(row(w, ms, tokens, flops));
            }
            Workload::Generate => {
                let prompt = token_ids(cfg.gen_prompt, v, 99);
                let opts = GenerateOptions { max_new_tokens: cfg.gen_tokens, ..GenerateOptions::default() };
                let mut produced = 0;
                let ms = time_ms(&cfg.device, cfg.warmup.min(1), cfg.iters.min(3), || {
                    produced = base.generate(&prompt, &opts)?.len();
                    Ok(())
                })?;
                rows.push(row(w, ms, produced, None));
            }
        }
    }
    Ok(BenchReport {
        preset: cfg.preset.name().into(),
        device: device_name(&cfg.device),
        dtype: cfg.dtype.as_str().into(),
        batch: cfg.batch,
        seq: cfg.seq,
        params,
        rows,
    })
}

impl fmt::Display for BenchReport {
    /// A table: workload, ms, tokens/s, TFLOP/s, MFU.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} ({:.0}M params) on {} {}, batch {} x {} tokens",
            self.preset,
            self.params as f64 / 1e6,
            self.device,
            self.dtype,
            self.batch,
            self.seq
        )?;
        writeln!(f, "{:<10} {:>10} {:>12} {:>8} {:>6}", "workload", "ms", "tokens/s", "TFLOP/s", "MFU")?;
        for r in &self.rows {
            let tf = r.tflops.map_or("-".into(), |t| format!("{t:.1}"));
            let mfu = r.mfu.map_or("-".into(), |m| format!("{:.0}%", m * 100.0));
            writeln!(f, "{:<10} {:>10.1} {:>12.0} {:>8} {:>6}", r.workload, r.ms, r.tokens_per_s, tf, mfu)?;
        }
        Ok(())
    }
}

/// Both sides of one workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComparedRow {
    /// Which workload.
    pub workload: String,
    /// Our milliseconds per run.
    pub candle_ms: f64,
    /// PyTorch's milliseconds per run.
    pub torch_ms: f64,
    /// `candle_ms / torch_ms`: below 1 means faster than PyTorch.
    pub ratio: f64,
}

/// A candle report and PyTorch's numbers for the same workloads and shapes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// Our measurements.
    pub candle: BenchReport,
    /// PyTorch's rows, as the script printed them.
    pub torch: Vec<BenchRow>,
    /// The PyTorch and transformers versions the script reported.
    pub torch_versions: String,
    /// One row per workload both sides ran.
    pub rows: Vec<ComparedRow>,
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.candle)?;
        writeln!(f, "PyTorch ({}), same shapes:", self.torch_versions)?;
        writeln!(f, "{:<10} {:>10} {:>10} {:>12}", "workload", "candle ms", "torch ms", "candle/torch")?;
        for r in &self.rows {
            writeln!(f, "{:<10} {:>10.1} {:>10.1} {:>12.2}", r.workload, r.candle_ms, r.torch_ms, r.ratio)?;
        }
        Ok(())
    }
}

/// The PyTorch side, embedded so an installed binary can run it anywhere.
pub const TORCH_SCRIPT: &str = include_str!("../../benches/torch_bench.py");

/// Runs `benches/torch_bench.py` with `python` on the same preset, shapes, dtype and device as
/// `report`, and pairs the rows.
pub fn compare_with_torch(cfg: &BenchConfig, report: BenchReport, python: &str) -> Result<Comparison> {
    let dir = std::env::temp_dir().join(format!("secure-tuning-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|source| Error::Write { path: dir.clone(), source })?;
    let script = dir.join("torch_bench.py");
    let config = dir.join("config.json");
    secure_tuning::fs::write_atomic(&script, TORCH_SCRIPT.as_bytes())?;
    secure_tuning::fs::write_atomic(&config, cfg.preset.config_json()?.as_bytes())?;
    let workloads: Vec<&str> = cfg.workloads.iter().map(|w| w.name()).collect();
    let options: [(&str, String); 11] = [
        ("--config", config.display().to_string()),
        ("--device", report.device.clone()),
        ("--dtype", report.dtype.clone()),
        ("--batch", cfg.batch.to_string()),
        ("--seq", cfg.seq.to_string()),
        ("--warmup", cfg.warmup.to_string()),
        ("--iters", cfg.iters.to_string()),
        ("--lora-rank", cfg.lora_rank.to_string()),
        ("--gen-prompt", cfg.gen_prompt.to_string()),
        ("--gen-tokens", cfg.gen_tokens.to_string()),
        ("--workloads", workloads.join(",")),
    ];
    let mut args = vec![script.display().to_string()];
    for (flag, value) in options {
        args.extend([flag.to_string(), value]);
    }
    let out = std::process::Command::new(python).args(&args).output().map_err(|e| {
        Error::invalid(
            "python",
            format!("could not run `{python}` ({e}); pass --torch with a Python that has torch and transformers"),
        )
    })?;
    let _ = std::fs::remove_dir_all(&dir);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(8).collect();
        return Err(Error::invalid(
            "PyTorch benchmark",
            format!("`{python}` failed: {}", tail.into_iter().rev().collect::<Vec<_>>().join(" | ")),
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rev().find(|l| l.trim_start().starts_with('{')).unwrap_or("");
    #[derive(Deserialize)]
    struct TorchOut {
        versions: String,
        rows: Vec<BenchRow>,
    }
    let parsed: TorchOut = serde_json::from_str(line).map_err(|e| {
        Error::invalid("PyTorch benchmark", format!("its output is not the expected JSON ({e}): {line}"))
    })?;
    let rows = report
        .rows
        .iter()
        .filter_map(|c| {
            let t = parsed.rows.iter().find(|t| t.workload == c.workload)?;
            Some(ComparedRow { workload: c.workload.clone(), candle_ms: c.ms, torch_ms: t.ms, ratio: c.ms / t.ms })
        })
        .collect();
    Ok(Comparison { candle: report, torch: parsed.rows, torch_versions: parsed.versions, rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_is_the_middle_run_whatever_the_order() {
        assert_eq!(median(&mut [30.0, 10.0, 200.0]), 30.0);
        assert_eq!(median(&mut [40.0, 10.0, 20.0, 900.0]), 30.0);
        assert_eq!(median(&mut [7.5]), 7.5);
    }

    #[test]
    fn presets_have_the_published_parameter_counts() {
        assert_eq!(Preset::Qwen25Half.config().unwrap().num_params(), 494_032_768);
        assert_eq!(Preset::Llama32One.config().unwrap().num_params(), 1_235_814_400);
        let default = Model::load("default").unwrap();
        assert_eq!(Preset::Default.config().unwrap().num_params(), default.num_params());
        assert!("gpt-2".parse::<Preset>().unwrap_err().to_string().contains("qwen2.5-0.5b"));
    }

    #[test]
    fn every_workload_runs_and_reports_consistent_numbers() {
        let mut cfg = BenchConfig::for_device(Preset::Default, &Device::Cpu);
        (cfg.batch, cfg.seq, cfg.warmup, cfg.iters, cfg.gen_tokens) = (2, 16, 0, 1, 8);
        let report = run(&cfg).unwrap();
        let names: Vec<&str> = report.rows.iter().map(|r| r.workload.as_str()).collect();
        assert_eq!(names, Workload::ALL.map(|w| w.name()));
        for r in &report.rows {
            assert!(r.ms > 0.0 && r.ms.is_finite(), "{r:?}");
            let tokens = if r.workload == "generate" { 8.0 } else { 32.0 };
            assert!((r.tokens_per_s * r.ms / 1e3 - tokens).abs() < 1e-6, "{r:?}");
        }
        let full = &report.rows[1];
        assert!(full.tflops.is_some() && full.mfu.is_none(), "no peak is stated on the CPU");
        assert_eq!((report.device.as_str(), report.dtype.as_str()), ("cpu", "f32"));
        assert!(report.to_string().contains("full-step"));
    }
}
