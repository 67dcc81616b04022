//! Bad inputs give clear errors that name the input and what to do; never a panic.

use secure_tuning::prelude::*;
use std::path::{Path, PathBuf};

fn fixture_copy(case: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(case);
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
    }
    let dir = tmp.path().to_path_buf();
    (tmp, dir)
}

fn err(r: Result<Model>) -> String {
    r.expect_err("expected an error").to_string()
}

#[test]
fn missing_folder_names_the_path() {
    let e = err(Model::load_dir("/no/such/model"));
    assert!(e.contains("/no/such/model") && e.contains("config.json"), "{e}");
}

#[test]
fn malformed_config_json_names_the_file() {
    let (_t, dir) = fixture_copy("llama3");
    std::fs::write(dir.join("config.json"), "{ not json").unwrap();
    let e = err(Model::load_dir(&dir));
    assert!(e.contains("config.json") && e.contains("malformed"), "{e}");
}

#[test]
fn unknown_model_type_is_refused_with_the_supported_list() {
    let (_t, dir) = fixture_copy("llama3");
    let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap().replace("\"llama\"", "\"gpt_neox\"");
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    let e = err(Model::load_dir(&dir));
    assert!(e.contains("gpt_neox") && e.contains("llama, qwen2, mistral"), "{e}");
}

#[test]
fn shape_mismatch_names_tensor_shapes_and_config_field() {
    let (_t, dir) = fixture_copy("llama3");
    let cfg = std::fs::read_to_string(dir.join("config.json"))
        .unwrap()
        .replace("\"num_key_value_heads\": 2", "\"num_key_value_heads\": 4");
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    let e = err(Model::load_dir(&dir));
    assert!(
        e.contains("model.layers.0.self_attn.k_proj.weight")
            && e.contains("expected [32, 32], found [16, 32]")
            && e.contains("num_key_value_heads"),
        "{e}"
    );
}

#[test]
fn missing_tensor_error_names_full_path() {
    let (_t, dir) = fixture_copy("llama3");
    let cfg = std::fs::read_to_string(dir.join("config.json"))
        .unwrap()
        .replace("\"num_hidden_layers\": 3", "\"num_hidden_layers\": 4");
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    let e = err(Model::load_dir(&dir));
    assert!(e.contains("model.layers.3.input_layernorm.weight") && e.contains("num_hidden_layers"), "{e}");
}

#[test]
fn pickle_only_folder_is_refused_with_the_reason() {
    let (_t, dir) = fixture_copy("llama3");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("pytorch_model.bin"), b"not loaded").unwrap();
    let e = err(Model::load_dir(&dir));
    assert!(e.contains("pytorch_model.bin") && e.contains("safetensors") && e.contains("arbitrary code"), "{e}");
}

#[test]
fn missing_shard_is_reported() {
    let (_t, dir) = fixture_copy("llama3");
    std::fs::rename(dir.join("model.safetensors"), dir.join("model-00001-of-00002.safetensors")).unwrap();
    let index = r#"{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}"#;
    std::fs::write(dir.join("model.safetensors.index.json"), index).unwrap();
    let e = err(Model::load_dir(&dir));
    assert!(e.contains("model-00002-of-00002.safetensors") && e.contains("incomplete"), "{e}");
}

#[test]
fn sharded_checkpoint_loads_like_the_single_file() {
    let (_t, dir) = fixture_copy("qwen2");
    let single = Model::load_dir(&dir).unwrap();
    // Split the weights over two shards plus an index, as save_pretrained does for big models.
    let all = single.weights().clone();
    let (a, b): (Vec<_>, Vec<_>) = all.iter().enumerate().partition(|(i, _)| i % 2 == 0);
    let mut map = serde_json::Map::new();
    for (part, name) in [(a, "model-00001-of-00002.safetensors"), (b, "model-00002-of-00002.safetensors")] {
        let tensors: std::collections::HashMap<String, candle_core::Tensor> =
            part.into_iter().map(|(_, (k, v))| (k.clone(), v.clone())).collect();
        for k in tensors.keys() {
            map.insert(k.clone(), name.into());
        }
        candle_core::safetensors::save(&tensors, dir.join(name)).unwrap();
    }
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors.index.json"), serde_json::json!({ "weight_map": map }).to_string())
        .unwrap();
    let sharded = Model::load_dir(&dir).unwrap();
    assert_eq!(sharded.num_params(), single.num_params());
    for (k, v) in single.weights() {
        let d = (v - &sharded.weights()[k]).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(d, 0.0, "{k}");
    }
}

#[test]
fn broken_chat_template_is_reported_at_load() {
    let (_t, dir) = fixture_copy("qwen2");
    std::fs::write(dir.join("chat_template.jinja"), "{% for m in messages %}{{ m.content }").unwrap();
    let e = err(Model::load_dir(&dir));
    assert!(e.contains("chat template") && e.contains("does not compile"), "{e}");
}

#[test]
fn model_without_template_uses_the_documented_fallback() {
    let (_t, dir) = fixture_copy("qwen2");
    std::fs::remove_file(dir.join("chat_template.jinja")).unwrap();
    let m = Model::load_dir(&dir).unwrap();
    assert!(!m.tokenizer().has_own_template());
    let s = m.tokenizer().render(&[Message::system("Be brief."), Message::user("Hi")], true).unwrap();
    assert_eq!(s, "<s>System: Be brief.\nUser: Hi\nAssistant:", "BOS token first, then one line per message");
}

#[test]
fn empty_prompt_and_bad_sampling_are_errors() {
    let (_t, dir) = fixture_copy("qwen2");
    let m = Model::load_dir(&dir).unwrap();
    assert!(m.generate(&[], &GenerateOptions::default()).is_err());
    let bad = GenerateOptions { sampling: Sampling::TopP { temperature: 0.0, top_p: 0.9 }, ..Default::default() };
    let e = m.generate(&[5, 6], &bad).unwrap_err().to_string();
    assert!(e.contains("temperature"), "{e}");
    assert!(Batch::from_sequences(&[], 0, m.device()).is_err());
}

#[test]
fn seeded_sampling_is_reproducible() {
    let m = Model::load_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama3")).unwrap();
    let opts =
        |seed| GenerateOptions { max_new_tokens: 10, sampling: Sampling::TopP { temperature: 1.0, top_p: 0.9 }, seed };
    let a = m.generate(&[1, 44, 73], &opts(7)).unwrap();
    assert_eq!(a, m.generate(&[1, 44, 73], &opts(7)).unwrap());
    let others: Vec<_> = (0..5).map(|s| m.generate(&[1, 44, 73], &opts(100 + s)).unwrap()).collect();
    assert!(others.iter().any(|o| o != &a), "different seeds never changed the sample");
}
