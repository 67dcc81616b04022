//! The training path only uses ops with a backward pass: a next-token loss's gradient reaches
//! every parameter tensor of every supported architecture, non-zero and finite.

use candle_core::Device;
use secure_tuning::prelude::*;

mod common;
use common::max_abs_diff;

fn next_token_loss(model: &Model, ids: &[u32]) -> candle_core::Tensor {
    let batch = Batch::single(&ids[..ids.len() - 1], &Device::Cpu).unwrap();
    let logits = model.forward_train(&batch, &Capture::logits()).unwrap().logits.unwrap().squeeze(0).unwrap();
    let targets = candle_core::Tensor::new(&ids[1..], &Device::Cpu).unwrap();
    candle_nn::loss::cross_entropy(&logits, &targets).unwrap()
}

#[test]
fn gradient_reaches_every_parameter_of_every_architecture() {
    for case in ["llama3", "llama_bias_tied", "qwen2", "mistral"] {
        let mut model = Model::load_dir(format!("{}/tests/fixtures/{case}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let names: Vec<String> = model.weights().keys().cloned().collect();
        let vars = model.make_trainable(&names).unwrap();
        assert_eq!(vars.len(), names.len());
        let ids = model.tokenizer().encode("The quick brown fox jumps over the lazy dog, then naps.", true).unwrap();
        let loss = next_token_loss(&model, &ids);
        let grads = loss.backward().unwrap();
        for (name, var) in &vars {
            let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{case}: no gradient reaches `{name}`"));
            let norm = g.sqr().unwrap().sum_all().unwrap().sqrt().unwrap().to_scalar::<f32>().unwrap();
            assert!(norm.is_finite() && norm > 0.0, "{case}: gradient of `{name}` has norm {norm}");
        }
        // The inference path builds no graph: its loss has no gradient to any parameter.
        let frozen_logits =
            model.forward(&Batch::single(&ids, &Device::Cpu).unwrap(), &Capture::logits()).unwrap().logits.unwrap();
        let g = frozen_logits.sum_all().unwrap().backward().unwrap();
        assert!(vars.iter().all(|(_, v)| g.get(v.as_tensor()).is_none()), "{case}: inference path tracked grads");
    }
}

#[test]
fn training_a_module_set_changes_only_its_tensors() {
    let mut model = Model::load_dir(format!("{}/tests/fixtures/qwen2", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let set = ModuleSet::kinds(3, &[ModuleKind::V, ModuleKind::Down]);
    let names = model.param_names(&set);
    assert_eq!(names.len(), 3 * 2 + 3, "v weight+bias and down weight per layer");
    let before = model.weights().clone();
    let vars = model.make_trainable(&names).unwrap();
    let ids = model.tokenizer().encode("Safety features live in the residual stream.", false).unwrap();
    let grads = next_token_loss(&model, &ids).backward().unwrap();
    for (_, var) in &vars {
        let g = grads.get(var.as_tensor()).unwrap();
        var.set(&(var.as_tensor() - (g * 0.1).unwrap()).unwrap()).unwrap();
    }
    for (name, t) in model.weights() {
        let moved = (t - &before[name]).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0;
        assert_eq!(moved, names.contains(name), "`{name}` moved={moved}");
    }
}

#[test]
fn gradients_through_frozen_modules_equal_those_of_a_fully_trainable_model() {
    // Frozen projections and the frozen LM head skip their own weight gradients; the gradient
    // they pass back must be exactly what a trainable one passes.
    for case in ["qwen2", "llama_bias_tied"] {
        let dir = format!("{}/tests/fixtures/{case}", env!("CARGO_MANIFEST_DIR"));
        let mut all = Model::load_dir(&dir).unwrap();
        let mut first_only = Model::load_dir(&dir).unwrap();
        let target = vec!["model.layers.0.self_attn.q_proj.weight".to_string()];
        let names: Vec<String> = all.weights().keys().cloned().collect();
        let all_vars = all.make_trainable(&names).unwrap();
        let few_vars = first_only.make_trainable(&target).unwrap();
        let ids = all.tokenizer().encode("The quick brown fox jumps over the lazy dog.", true).unwrap();
        let g_all = next_token_loss(&all, &ids).backward().unwrap();
        let g_few = next_token_loss(&first_only, &ids).backward().unwrap();
        let var_all = &all_vars.iter().find(|(n, _)| n == &target[0]).unwrap().1;
        let a = g_all.get(var_all.as_tensor()).unwrap();
        let b = g_few.get(few_vars[0].1.as_tensor()).unwrap();
        let diff = max_abs_diff(a, b);
        let scale = a.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff <= 1e-5 * scale.max(1.0), "{case}: {diff} vs gradient scale {scale}");
    }
}
