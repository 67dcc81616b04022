//! Plans for PyTorch's trainers: `export-plan`'s file round-trips through the library's types,
//! and three AdamW steps of an exported plan in this crate's trainer give PyTorch's weights
//! (trained by `integrations/torch` on the same plan, data and initial weights) within 1e-5 in
//! f32, for ML-LR, SWAT's late start and a frozen rest, on a Llama, a Qwen2 and a Mistral.
//! The references are made by hand: integrations/torch/scripts/write_fixture_plans.sh, then
//! make_parity_refs.py (tests/fixtures/plans/README.md).

mod common;
use common::max_abs_diff;
use secure_tuning::model::{LoadOptions, ModuleSet};
use secure_tuning::train::{train, Example, TrainConfig};
use secure_tuning::tune::{MlLr, PlanFile};
use secure_tuning::Model;
use std::path::{Path, PathBuf};

const ARCHS: [&str; 3] = ["llama3", "qwen2", "mistral"];
const PLANS: [(&str, &str); 3] = [("plan.json", ""), ("plan_swat.json", "_swat"), ("plan_frozen.json", "_frozen")];

fn plans_dir(arch: &str) -> PathBuf {
    Path::new("tests/fixtures/plans").join(arch)
}

fn fixture(arch: &str) -> Model {
    Model::load_with(
        &format!("tests/fixtures/{arch}"),
        &LoadOptions { device: candle_core::Device::Cpu, ..LoadOptions::default() },
    )
    .unwrap()
}

fn batch(arch: &str) -> Vec<Example> {
    let text = std::fs::read_to_string(plans_dir(arch).join("batch.json")).unwrap();
    let v: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    v.iter()
        .map(|e| Example {
            ids: e["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect(),
            loss_start: e["loss_start"].as_u64().unwrap() as usize,
        })
        .collect()
}

#[test]
fn exported_plans_read_back_and_export_again_identically() {
    for arch in ARCHS {
        for (file, _) in PLANS {
            let path = plans_dir(arch).join(file);
            let committed = PlanFile::read(&path).unwrap();
            let plan: &MlLr = committed.source_plan.as_ref().expect("the library plan is in the file");
            let again = PlanFile::export(plan, &fixture(arch), committed.schedule.total_steps).unwrap();
            assert!(again == committed, "{arch}/{file}: exporting its own plan again gives another file");
            let listed = committed.groups.iter().map(|g| g.params.len()).sum::<usize>() + committed.frozen.len();
            assert_eq!(listed, fixture(arch).weights().len(), "{arch}/{file}: every parameter once");
        }
    }
}

#[test]
fn three_adamw_steps_match_pytorch_on_the_exported_plan() {
    let mut worst = 0f32;
    for arch in ARCHS {
        for (file, suffix) in PLANS {
            let dir = plans_dir(arch);
            let plan_file = PlanFile::read(&dir.join(file)).unwrap();
            let plan = plan_file.source_plan.clone().unwrap();
            let mut model = fixture(arch);
            let initial = model.weights().clone();
            let examples = batch(arch);
            let cfg = TrainConfig { groups: plan.groups(&model, 3).unwrap(), ..plan.train.clone() };
            let report = train(&mut model, &examples, &cfg).unwrap();
            model.freeze_all().unwrap();

            let reference = secure_tuning::model::load_tensors(
                &dir.join(format!("after_3_steps{suffix}.safetensors")),
                &candle_core::Device::Cpu,
            )
            .unwrap();
            let trained: Vec<&String> = plan_file.groups.iter().flat_map(|g| &g.params).collect();
            assert_eq!(reference.len(), trained.len(), "{arch}/{file}: PyTorch trained the plan's tensors");
            for name in trained {
                let diff = max_abs_diff(&model.weights()[name], &reference[name]);
                worst = worst.max(diff);
                assert!(diff <= 1e-5, "{arch}/{file}: `{name}` differs from PyTorch's by {diff:e}");
            }
            for name in &plan_file.frozen {
                assert_eq!(
                    max_abs_diff(&model.weights()[name], &initial[name]),
                    0.0,
                    "{arch}/{file}: `{name}` is frozen"
                );
            }
            let losses: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(dir.join(format!("losses{suffix}.json"))).unwrap())
                    .unwrap();
            for ((_, ours), theirs) in report.losses.iter().zip(losses["losses"].as_array().unwrap()) {
                let theirs = theirs.as_f64().unwrap() as f32;
                assert!((ours - theirs).abs() <= 1e-5, "{arch}/{file}: loss {ours} vs PyTorch's {theirs}");
            }
        }
    }
    eprintln!("largest difference from PyTorch over 9 plans: {worst:e}");
}

#[test]
fn bad_plans_give_the_builders_errors() {
    let model = fixture("llama3");
    let deep: ModuleSet = "L7.q".parse::<secure_tuning::model::ModuleId>().map(|m| ModuleSet::from_iter([m])).unwrap();
    let plan = MlLr::builder().robust(deep).build().unwrap();
    let err = PlanFile::export(&plan, &model, 10).unwrap_err().to_string();
    assert!(err.contains("L7.q") && err.contains("3 layers"), "{err}");
    assert!(MlLr::builder().ratio(-0.5).build().unwrap_err().to_string().contains("LR ratio"));
    let err = MlLr::builder().robust(ModuleSet::new()).ratio(0.0).build().unwrap_err().to_string();
    assert!(err.contains("nothing would train"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.json"), r#"{"format": "other", "version": 1}"#).unwrap();
    assert!(PlanFile::read(&dir.path().join("p.json")).is_err());
}
