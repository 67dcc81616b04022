//! ML-LR's LR-ratio sweep on the default model: for each ratio, fine-tune with the robust set
//! of a finished `reproduce` run and evaluate as `reproduce` does (same data, steps and sets).
//!
//! ```sh
//! cargo run --release -- reproduce --out runs/reproduce
//! cargo run --release --example ratio_sweep -- runs/reproduce/reproduction.json 0.3 0.5 0.1:1.0
//! ```
//!
//! `R:N` sets the rest's ratio to R and the non-module parameters' (embeddings, norms, LM head) to N.
//! `--lr X` and `--steps N` (before the ratios) replace the run's base LR and length, to compare
//! strategies at equal task accuracy rather than at equal steps. `--modules FILE` trains another
//! robust set instead of the run's: the `mods_robust.json` that `secure-tuning search --out DIR` writes
//! (for example with `--mode perturb` or a stricter `--tolerance`).

use secure_tuning::data::benign_set_path;
use secure_tuning::data::{load_records, split};
use secure_tuning::eval::{evaluate, EvalConfig};
use secure_tuning::experiment::{eval_sets, Reproduction};
use secure_tuning::prelude::ModuleSet;
use secure_tuning::tune::MlLr;
use secure_tuning::{Error, Model, Result};

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut lr = None;
    let mut steps = None;
    let mut modules_path = None;
    while args.len() > 2 && args[1].starts_with("--") {
        let value = args.remove(2);
        let flag = args.remove(1);
        let bad = || Error::invalid(flag.as_str(), format!("`{value}` is not a number"));
        match flag.as_str() {
            "--lr" => lr = Some(value.parse::<f64>().map_err(|_| bad())?),
            "--steps" => steps = Some(value.parse::<usize>().map_err(|_| bad())?),
            "--modules" => modules_path = Some(value),
            _ => {
                return Err(Error::invalid("arguments", format!("unknown flag {flag}; use --lr, --steps or --modules")))
            }
        }
    }
    let Some((path, ratios)) = args.split_first() else {
        return Err(Error::invalid(
            "arguments",
            "usage: ratio_sweep REPRODUCTION.json [--lr X] [--steps N] [--modules mods_robust.json] RATIO [RATIO ...]",
        ));
    };
    let repro = Reproduction::read_json(std::path::Path::new(path))?;
    let robust = match &modules_path {
        Some(p) => ModuleSet::read_json(std::path::Path::new(p))?,
        None => repro.mods_robust.modules.clone(),
    };
    println!("robust set: {} modules", robust.len());
    let cfg = &repro.config;
    let model = Model::load("default")?;
    let dir = secure_tuning::data::default_data_dir();
    let benign = split(&load_records(&benign_set_path(&dir, &cfg.benign))?, "train");
    let sets = eval_sets(&dir, &cfg.benign, cfg.eval_limit)?;
    let eval_cfg = EvalConfig { max_new_tokens: cfg.max_new_tokens, ..EvalConfig::default() };
    for r in ratios {
        let parse = |x: &str| x.parse::<f64>().map_err(|_| Error::invalid("ratio", format!("`{x}` is not a number")));
        let (ratio, non_module) = match r.split_once(':') {
            Some((a, b)) => (parse(a)?, Some(parse(b)?)),
            None => (parse(r)?, None),
        };
        let mut builder = MlLr::builder();
        if let Some(n) = non_module {
            builder = builder.non_module_ratio(n);
        }
        let plan = builder
            .robust(robust.clone())
            .ratio(ratio)
            .lr(lr.unwrap_or(cfg.lr))
            .steps(steps.unwrap_or(cfg.steps))
            .batch_size(cfg.batch_size)
            .build()?;
        let tuned = plan.fit(&model, &benign)?;
        let e = evaluate(&tuned.model, &sets.harmful, &sets.harmless, &sets.tasks, &eval_cfg)?;
        println!("ratio {r}: {e} ({:.0}s training)", tuned.report.seconds);
    }
    Ok(())
}
