//! ML-LR and SWAT on the default model: tests that cannot pass by accident (frozen means
//! bitwise unchanged, the ratio shows in the first Adam step, SWAT switches at its step).

use secure_tuning::data::{load_records, split, Record};
use secure_tuning::model::{Batch, Capture, ModuleId, ModuleKind, ModuleSet};
use secure_tuning::tune::{random_modules, MlLr};
use secure_tuning::Model;
use std::sync::OnceLock;

mod common;
use common::max_abs_diff;

fn model() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| Model::load("default").unwrap())
}

fn data() -> Vec<Record> {
    let path = secure_tuning::data::default_data_dir().join("ift_general.jsonl");
    split(&load_records(&path).unwrap(), "train").into_iter().take(64).collect()
}

fn robust() -> ModuleSet {
    ModuleSet::mlp(6).union(&ModuleSet::layers(3..6))
}

#[test]
fn ratio_zero_leaves_the_rest_bitwise_unchanged() {
    let plan = MlLr::builder().robust(robust()).ratio(0.0).lr(1e-3).steps(3).batch_size(8).build().unwrap();
    let tuned = plan.fit(model(), &data()).unwrap();
    let robust_names = model().param_names(&robust());
    for (name, before) in model().weights() {
        let after = &tuned.model.weights()[name];
        let diff = max_abs_diff(after, before);
        if robust_names.contains(name) {
            assert!(diff > 0.0, "{name} is robust and should have trained");
        } else {
            assert_eq!(diff, 0.0, "{name} is outside the robust set and must not change");
        }
    }
}

#[test]
fn the_first_adam_step_of_the_rest_is_ratio_times_the_robust_one() {
    for ratio in [0.1, 0.25] {
        let plan = MlLr::builder()
            .robust(robust())
            .ratio(ratio)
            .lr(1e-3)
            .steps(2)
            .batch_size(16)
            .clip_norm(None)
            .build()
            .unwrap();
        let report = plan.fit(model(), &data()).unwrap().report;
        // Per-element RMS of the first update: Adam's first step moves every element with a
        // non-zero gradient by lr * scale.
        let rms = |name: &str| {
            let g = report.groups.iter().find(|g| g.name == name).unwrap();
            g.update_norms[0].1 / (g.num_params as f64).sqrt()
        };
        let measured = rms("rest") / rms("robust");
        assert!((measured / ratio - 1.0).abs() < 0.01, "ratio {ratio}: measured {measured}");
    }
}

#[test]
fn swat_switches_at_its_step() {
    let plan = MlLr::builder().robust(robust()).ratio(1.0).swat(0.3).lr(1e-3).steps(10).batch_size(8).build().unwrap();
    let report = plan.fit(model(), &data()).unwrap().report;
    let rest = report.groups.iter().find(|g| g.name == "rest").unwrap();
    assert_eq!(rest.start_step, 3);
    for (&(step, lr), &(_, norm)) in rest.lrs.iter().zip(&rest.update_norms) {
        if step <= 3 {
            assert_eq!((lr, norm), (0.0, 0.0), "step {step}: the rest must not train in the warm-up");
        } else {
            assert!(lr > 0.0 && norm > 0.0, "step {step}: the rest trains after the warm-up");
        }
    }
    let robust = report.groups.iter().find(|g| g.name == "robust").unwrap();
    assert!(robust.update_norms.iter().all(|&(_, n)| n > 0.0));
}

#[test]
fn a_tuned_model_saves_and_loads_back_identically() {
    let plan = MlLr::builder().robust(robust()).steps(2).batch_size(8).build().unwrap();
    let tuned = plan.fit(model(), &data()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    tuned.model.save_dir(dir.path()).unwrap();
    let loaded = Model::load_dir(dir.path()).unwrap();
    let ids = tuned.model.tokenizer().encode("What is double 7?", true).unwrap();
    let batch = Batch::single(&ids, tuned.model.device()).unwrap();
    let a = tuned.model.forward(&batch, &Capture::logits()).unwrap().logits.unwrap();
    let b = loaded.forward(&batch, &Capture::logits()).unwrap().logits.unwrap();
    assert_eq!(max_abs_diff(&a, &b), 0.0);
}

#[test]
fn bad_plans_are_refused_with_a_reason() {
    let err = MlLr::builder().lr(-1e-4).robust(robust()).build().unwrap_err().to_string();
    assert!(err.contains("learning rate") && err.contains("-0.0001"), "{err}");
    let err = MlLr::builder().robust(ModuleSet::new()).ratio(0.0).build().unwrap_err().to_string();
    assert!(err.contains("nothing would train"), "{err}");
    let err = MlLr::builder().robust(robust()).ratio(f64::NAN).build().unwrap_err().to_string();
    assert!(err.contains("LR ratio"), "{err}");
    let err = MlLr::builder().robust(robust()).non_module_ratio(-0.5).build().unwrap_err().to_string();
    assert!(err.contains("non-module"), "{err}");
    let err = MlLr::builder().robust(robust()).swat(1.0).build().unwrap_err().to_string();
    assert!(err.contains("SWAT"), "{err}");
    let unknown = ModuleSet::from_iter([ModuleId::new(9, ModuleKind::Q)]);
    let plan = MlLr::builder().robust(unknown).steps(1).build().unwrap();
    let err = plan.fit(model(), &data()).unwrap_err().to_string();
    assert!(err.contains("L9.q") && err.contains("6 layers"), "{err}");
}

#[test]
fn random_sets_match_the_share_and_depend_on_the_seed() {
    let total = model().num_params_of(&ModuleSet::all(6)) as f64;
    let a = random_modules(model(), 0.4, 1);
    let b = random_modules(model(), 0.4, 2);
    assert_ne!(a, b);
    for set in [&a, &b] {
        let share = model().num_params_of(set) as f64 / total;
        assert!((share - 0.4).abs() < 0.03, "{share}");
    }
}

#[test]
fn groups_partition_every_parameter_and_honour_the_non_module_ratio() {
    let plan = MlLr::builder().robust(robust()).ratio(0.1).non_module_ratio(1.0).build().unwrap();
    let groups = plan.groups(model(), 10).unwrap();
    let names: Vec<&String> = groups.iter().flat_map(|g| &g.params).collect();
    assert_eq!(names.len(), model().weights().len(), "every parameter in exactly one group");
    let scale = |n: &str| groups.iter().find(|g| g.name == n).unwrap().lr_scale;
    assert_eq!((scale("robust"), scale("rest"), scale("non-module")), (1.0, 0.1, 1.0));
    let non_module = &groups.iter().find(|g| g.name == "non-module").unwrap().params;
    assert!(non_module.contains(&"model.embed_tokens.weight".to_string()));
}
