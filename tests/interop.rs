//! What this crate produces loads where users deploy it: a model fine-tuned here (LoRA, merged)
//! saved in the Hugging Face layout gives transformers' logits, and its adapters saved in PEFT's
//! format, loaded onto the base model by peft, give peft's logits, within 1e-4 in f32, for a
//! Llama, a Qwen2 and a Mistral. The folders and the references are made by hand with
//! integrations/torch/scripts/make_interop_refs.sh (transformers 5.24, peft 0.21).

mod common;
use common::max_abs_diff;
use secure_tuning::model::{Batch, Capture, LogitsMode};
use secure_tuning::Model;
use std::path::Path;

/// The reference's token ids and last-position logits.
fn reference(path: &Path) -> (Vec<u32>, Vec<f32>) {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let ids = v["token_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
    let logits = v["logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    (ids, logits)
}

fn last_logits(model: &Model, ids: &[u32]) -> candle_core::Tensor {
    let batch = Batch::single(ids, model.device()).unwrap();
    let acts = model.forward(&batch, &Capture::logits().with_logits(LogitsMode::Last)).unwrap();
    acts.logits().unwrap().flatten_all().unwrap()
}

#[test]
fn saved_models_and_peft_adapters_give_transformers_logits() {
    for arch in ["llama3", "qwen2", "mistral"] {
        let dir = Path::new("tests/fixtures/interop").join(arch);
        let (ids, want) = reference(&dir.join("model_logits.json"));
        let want = candle_core::Tensor::new(want.as_slice(), &candle_core::Device::Cpu).unwrap();
        let tuned = Model::load_dir(dir.join("model")).unwrap();
        let diff = max_abs_diff(&last_logits(&tuned, &ids), &want);
        eprintln!("{arch}: saved model vs transformers {diff:e}");
        assert!(diff < 1e-4, "{arch}: our saved model vs transformers: {diff:e}");

        let (ids, want) = reference(&dir.join("adapter_logits.json"));
        let want = candle_core::Tensor::new(want.as_slice(), &candle_core::Device::Cpu).unwrap();
        let mut adapted = Model::load_dir(format!("tests/fixtures/{arch}")).unwrap();
        adapted.load_adapters(&dir.join("adapter")).unwrap();
        let diff = max_abs_diff(&last_logits(&adapted, &ids), &want);
        eprintln!("{arch}: adapters vs peft {diff:e}");
        assert!(diff < 1e-4, "{arch}: our adapters on the base vs peft: {diff:e}");
    }
}

#[test]
fn adapters_peft_cannot_mean_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir("tests/fixtures/interop/llama3/adapter").unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    let cfg = dir.path().join("adapter_config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    v["use_rslora"] = true.into();
    std::fs::write(&cfg, v.to_string()).unwrap();
    let mut model = Model::load_dir("tests/fixtures/llama3").unwrap();
    let err = model.load_adapters(dir.path()).unwrap_err().to_string();
    assert!(err.contains("use_rslora"), "{err}");
}
