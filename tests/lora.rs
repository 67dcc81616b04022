//! LoRA: zero-initialised adapters change nothing, training touches only adapter tensors, the
//! merged model is exactly base + scale * B @ A, and ML-LR with LoRA gives each adapter its
//! module's learning rate.

use candle_core::{DType, Tensor};
use secure_tuning::data::Record;
use secure_tuning::model::{lora_names, Batch, Capture, LoraConfig, ModuleId, ModuleKind, ModuleSet};
use secure_tuning::train::{encode_examples, train, TrainConfig};
use secure_tuning::tune::MlLr;
use secure_tuning::Model;

mod common;
use common::max_abs_diff;

fn fixture() -> Model {
    Model::load_dir("tests/fixtures/qwen2").unwrap()
}

fn records() -> Vec<Record> {
    (0..12).map(|i| Record::new(format!("What is {i} plus {i}?"), format!("{}", 2 * i))).collect()
}

fn logits(model: &Model) -> Tensor {
    let ids = model.tokenizer().encode("The quick brown fox", false).unwrap();
    model.forward(&Batch::single(&ids, model.device()).unwrap(), &Capture::logits()).unwrap().logits().unwrap().clone()
}

#[test]
fn fresh_adapters_leave_the_output_unchanged() {
    let base = fixture();
    let mut adapted = base.clone();
    adapted.add_lora(&LoraConfig::new(4, 8.0)).unwrap();
    assert_eq!(max_abs_diff(&logits(&base), &logits(&adapted)), 0.0);
}

#[test]
fn training_with_lora_changes_only_adapters_and_merging_is_base_plus_scaled_ba() {
    let base = fixture();
    let mut model = base.clone();
    let cfg = LoraConfig { kinds: vec![ModuleKind::Q, ModuleKind::Down], ..LoraConfig::new(4, 16.0) };
    let adapters = model.add_lora(&cfg).unwrap();
    let layers = model.config().num_layers;
    assert_eq!(adapters.len(), 2 * 2 * layers);
    let examples = encode_examples(&model, &records(), 64).unwrap();
    let report = train(
        &mut model,
        &examples,
        &TrainConfig { lr: 1e-2, max_steps: Some(5), batch_size: 4, ..Default::default() },
    )
    .unwrap();
    assert!(report.recent_loss(1) < report.losses[0].1, "the adapters should learn: {:?}", report.losses);
    model.freeze_all().unwrap();
    for (name, before) in base.weights() {
        assert_eq!(max_abs_diff(before, &model.weights()[name]), 0.0, "{name} is a base weight and must not change");
    }
    for name in &adapters {
        assert_eq!(model.weights()[name].dtype(), DType::F32, "adapters train in f32");
    }
    let changed_b = adapters.iter().filter(|n| n.contains("lora_B")).all(|n| {
        let b = &model.weights()[n];
        max_abs_diff(b, &b.zeros_like().unwrap()) > 0.0
    });
    assert!(changed_b, "every B should have left zero");

    let before_merge = logits(&model);
    let mut merged = model.clone();
    merged.merge_lora().unwrap();
    assert!(merged.lora().is_none());
    assert!(merged.weights().keys().all(|n| !n.contains("lora_")));
    for m in cfg.modules(layers).iter() {
        let (a, b) = lora_names(m);
        let expected = (base.weights()[&m.weight_name()].clone()
            + (model.weights()[&b].matmul(&model.weights()[&a]).unwrap() * cfg.scale()).unwrap())
        .unwrap();
        assert!(max_abs_diff(&merged.weights()[&m.weight_name()], &expected) < 1e-6, "{}", m.label());
    }
    let untouched = ModuleId::new(0, ModuleKind::Up).weight_name();
    assert_eq!(max_abs_diff(&merged.weights()[&untouched], &base.weights()[&untouched]), 0.0);
    assert!(max_abs_diff(&before_merge, &logits(&merged)) < 1e-4, "merged model computes what the adapted one did");

    // Saving an adapted model writes the merged weights: a plain Hugging Face folder.
    let dir = tempfile::tempdir().unwrap();
    model.save_dir(dir.path()).unwrap();
    let reloaded = Model::load_dir(dir.path()).unwrap();
    assert!(reloaded.weights().keys().all(|n| !n.contains("lora_")));
    assert!(max_abs_diff(&before_merge, &logits(&reloaded)) < 1e-4);
}

#[test]
fn mllr_with_lora_scales_each_adapter_by_its_module_and_freezes_the_base() {
    let model = fixture();
    let layers = model.config().num_layers;
    let robust = ModuleSet::attn(layers);
    let plan = MlLr::builder()
        .robust(robust.clone())
        .ratio(0.1)
        .lora(4, 8.0)
        .lr(1e-3)
        .steps(2)
        .batch_size(4)
        .clip_norm(None)
        .build()
        .unwrap();
    let mut adapted = model.clone();
    adapted.add_lora(plan.lora.as_ref().unwrap()).unwrap();
    let groups = plan.groups(&adapted, 2).unwrap();
    let names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["rest", "robust"], "no non-module group: the base is frozen");
    for g in &groups {
        assert!(g.params.iter().all(|p| p.contains(".lora_")), "{} trains only adapters", g.name);
    }
    let robust_group = groups.iter().find(|g| g.name == "robust").unwrap();
    assert_eq!(robust_group.params.len(), 2 * robust.len());

    let tuned = plan.fit(&model, &records()).unwrap();
    assert!(tuned.model.lora().is_none(), "fit returns the merged model");
    // Adam's first step moves each element by about lr * scale, so the per-element RMS of the
    // groups' first updates stands in the ratio (B starts at zero, A's gradient is zero then:
    // only B moves in step one, in both groups alike).
    let rms = |name: &str| {
        let g = tuned.report.groups.iter().find(|g| g.name == name).unwrap();
        g.update_norms[0].1
    };
    let b_elems = |set: &ModuleSet| -> f64 {
        set.iter().map(|m| adapted.weights()[&lora_names(m).1].elem_count() as f64).sum::<f64>()
    };
    let rest = ModuleSet::all(layers).difference(&robust);
    let measured = (rms("rest") / b_elems(&rest).sqrt()) / (rms("robust") / b_elems(&robust).sqrt());
    assert!((measured / 0.1 - 1.0).abs() < 0.02, "measured ratio {measured}");
}

#[test]
fn bad_lora_settings_are_clear_errors() {
    let mut model = fixture();
    let e = model.add_lora(&LoraConfig::new(0, 8.0)).unwrap_err().to_string();
    assert!(e.contains("rank"), "{e}");
    let e = model.add_lora(&LoraConfig::new(10_000, 8.0)).unwrap_err().to_string();
    assert!(e.contains("exceeds"), "{e}");
    model.add_lora(&LoraConfig::new(2, 4.0)).unwrap();
    let e = model.add_lora(&LoraConfig::new(2, 4.0)).unwrap_err().to_string();
    assert!(e.contains("merge"), "{e}");
    let e = MlLr::builder().lora(4, f64::NAN).build().unwrap_err().to_string();
    assert!(e.contains("alpha"), "{e}");
}
