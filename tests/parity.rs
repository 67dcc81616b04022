//! Parity with Hugging Face transformers on tiny random-weight models of every supported
//! architecture. Fixtures come from `tests/fixtures/make_fixtures.py` (torch + transformers,
//! run by hand); tolerance 1e-4 in f32.

use candle_core::{Device, Tensor};
use secure_tuning::prelude::*;
use std::collections::HashMap;

const CASES: [&str; 4] = ["llama3", "llama_bias_tied", "qwen2", "mistral"];
const TOL: f32 = 1e-4;

struct Fixture {
    model: Model,
    json: serde_json::Value,
    tensors: HashMap<String, Tensor>,
}

fn fixture(case: &str) -> Fixture {
    let dir = format!("{}/tests/fixtures/{case}", env!("CARGO_MANIFEST_DIR"));
    let model = Model::load_dir(&dir).unwrap();
    let json = serde_json::from_str(&std::fs::read_to_string(format!("{dir}/reference.json")).unwrap()).unwrap();
    let tensors = candle_core::safetensors::load(format!("{dir}/reference.safetensors"), &Device::Cpu).unwrap();
    Fixture { model, json, tensors }
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// Compares logits, every hidden state and every module output; returns the largest difference.
fn forward_parity(case: &str) -> f32 {
    let f = fixture(case);
    let token_ids = f.model.tokenizer().encode(f.json["text"].as_str().unwrap(), true).unwrap();
    assert_eq!(token_ids, ids(&f.json["token_ids"]), "{case}: token ids differ from HF");
    let n = f.model.config().num_layers;
    assert_eq!(f.model.num_params(), f.model.config().num_params(), "{case}: config-implied parameter count");
    let batch = Batch::single(&token_ids, &Device::Cpu).unwrap();
    let acts = f.model.forward(&batch, &Capture::everything(n)).unwrap();
    let mut worst = 0f32;
    let mut check = |name: &str, ours: &Tensor| {
        let d = max_abs_diff(ours, &f.tensors[name]);
        assert!(d < TOL, "{case}: {name} differs from HF by {d}");
        worst = worst.max(d);
    };
    check("logits", &acts.logits().unwrap().squeeze(0).unwrap());
    let hidden = acts.hidden_states().unwrap();
    assert_eq!(hidden.len(), n + 1);
    for (i, h) in hidden.iter().enumerate() {
        check(&format!("hidden.{i}"), &h.squeeze(0).unwrap());
    }
    for m in ModuleSet::all(n).iter() {
        let ours = acts.get(HookPoint::Module(*m)).unwrap().squeeze(0).unwrap();
        check(&format!("module.{}.{}", m.layer, m.kind), &ours);
    }
    eprintln!("{case}: largest |candle - HF| over logits, hidden states, module outputs = {worst:.2e}");
    worst
}

#[test]
fn forward_matches_hf_fixture_llama3_rope_scaling() {
    forward_parity("llama3");
}

#[test]
fn forward_matches_hf_fixture_llama_bias_tied() {
    forward_parity("llama_bias_tied");
}

#[test]
fn forward_matches_hf_fixture_qwen2_bias_tied() {
    forward_parity("qwen2");
}

#[test]
fn forward_matches_hf_fixture_mistral_sliding_window() {
    forward_parity("mistral");
}

#[test]
fn right_padded_batch_matches_hf_on_real_positions() {
    for case in CASES {
        let f = fixture(case);
        let rows: Vec<Vec<u32>> = f.json["batch_token_ids"].as_array().unwrap().iter().map(ids).collect();
        let masks: Vec<Vec<u32>> = f.json["batch_attention_mask"].as_array().unwrap().iter().map(ids).collect();
        let seqs: Vec<Vec<u32>> =
            rows.iter().zip(&masks).map(|(r, m)| r[..m.iter().sum::<u32>() as usize].to_vec()).collect();
        let batch = Batch::from_sequences(&seqs, 0, &Device::Cpu).unwrap();
        let logits = f.model.forward(&batch, &Capture::logits()).unwrap().logits.unwrap();
        for (i, s) in seqs.iter().enumerate() {
            let ours = logits.get(i).unwrap().narrow(0, 0, s.len()).unwrap();
            let theirs = f.tensors["batch_logits"].get(i).unwrap().narrow(0, 0, s.len()).unwrap();
            let d = max_abs_diff(&ours, &theirs);
            assert!(d < TOL, "{case}: padded row {i} differs by {d}");
        }
    }
}

#[test]
fn chat_template_renders_as_transformers_does() {
    for case in CASES {
        let f = fixture(case);
        let messages: Vec<Message> = serde_json::from_value(f.json["messages"].clone()).unwrap();
        let rendered = f.model.tokenizer().render(&messages, true).unwrap();
        assert_eq!(rendered, f.json["chat_rendered"].as_str().unwrap(), "{case}");
        let prompt = f.model.tokenizer().encode_chat(&messages, true).unwrap();
        assert_eq!(prompt, ids(&f.json["chat_prompt_ids"]), "{case}");
    }
}

#[test]
fn greedy_generation_matches_hf_generate() {
    for case in CASES {
        let f = fixture(case);
        let prompt = ids(&f.json["chat_prompt_ids"]);
        let mut expected = ids(&f.json["greedy_new_ids"]);
        if expected.last().is_some_and(|t| f.model.eos_ids().contains(t)) {
            expected.pop(); // we return the continuation without its EOS
        }
        let opts = GenerateOptions { max_new_tokens: 12, ..Default::default() };
        assert_eq!(f.model.generate(&prompt, &opts).unwrap(), expected, "{case}");
    }
}

#[test]
fn cached_and_uncached_logits_agree() {
    for case in CASES {
        let f = fixture(case);
        let ids = f.model.tokenizer().encode(f.json["text"].as_str().unwrap(), true).unwrap();
        let full = f.model.forward(&Batch::single(&ids, &Device::Cpu).unwrap(), &Capture::logits()).unwrap();
        let full = full.logits.unwrap().squeeze(0).unwrap();
        let mut cache = secure_tuning::model::KvCache::new();
        // A prefix of 7 tokens, then one token at a time (crosses Mistral's window of 5).
        let mut start = 0;
        for end in std::iter::once(7).chain(8..=ids.len()) {
            let b = Batch::single(&ids[start..end], &Device::Cpu).unwrap();
            let step = f.model.forward_cached(&b, &Capture::logits(), &mut cache).unwrap();
            let step = step.logits.unwrap().squeeze(0).unwrap();
            let d = max_abs_diff(&step, &full.narrow(0, start, end - start).unwrap());
            assert!(d < TOL, "{case}: cached logits at {start}..{end} differ by {d}");
            start = end;
        }
        assert_eq!(cache.len(), ids.len());
    }
}

#[test]
fn last_logits_mode_picks_each_rows_last_real_token() {
    let f = fixture("qwen2");
    let seqs = vec![vec![5, 6, 7, 8], vec![9, 10]];
    let batch = Batch::from_sequences(&seqs, 0, &Device::Cpu).unwrap();
    let all = f.model.forward(&batch, &Capture::logits()).unwrap().logits.unwrap();
    let last = f.model.forward(&batch, &Capture::logits().with_logits(LogitsMode::Last)).unwrap().logits.unwrap();
    assert_eq!(last.dims(), &[2, 320]);
    assert!(max_abs_diff(&last.get(0).unwrap(), &all.get(0).unwrap().get(3).unwrap()) < 1e-6);
    assert!(max_abs_diff(&last.get(1).unwrap(), &all.get(1).unwrap().get(1).unwrap()) < 1e-6);
}

#[test]
fn batched_generation_gives_each_prompt_its_own_continuation() {
    for case in CASES {
        let f = fixture(case);
        let chat = ids(&f.json["chat_prompt_ids"]);
        let text = f.model.tokenizer().encode(f.json["text"].as_str().unwrap(), true).unwrap();
        // Three lengths, so two rows are left-padded (past Mistral's window of 5 for the short one).
        let prompts = vec![chat.clone(), text[..3].to_vec(), text.clone()];
        let opts = GenerateOptions { max_new_tokens: 12, ..Default::default() };
        let alone: Vec<Vec<u32>> = prompts.iter().map(|p| f.model.generate(p, &opts).unwrap()).collect();
        assert_eq!(f.model.generate_batch(&prompts, &opts).unwrap(), alone, "{case}");

        // The logits themselves, at the prefill and two steps later.
        let longest = prompts.iter().map(Vec::len).max().unwrap();
        let mut cache = secure_tuning::model::KvCache::left_padded(prompts.iter().map(|p| longest - p.len()).collect());
        let padded: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| std::iter::repeat_n(0, longest - p.len()).chain(p.iter().copied()).collect())
            .collect();
        let capture = Capture::logits().with_logits(secure_tuning::model::LogitsMode::Last);
        let first =
            f.model.forward_cached(&Batch::from_sequences(&padded, 0, &Device::Cpu).unwrap(), &capture, &mut cache);
        let first = first.unwrap().logits.unwrap();
        for (i, p) in prompts.iter().enumerate() {
            let single = f.model.forward(&Batch::single(p, &Device::Cpu).unwrap(), &capture).unwrap().logits.unwrap();
            let d = max_abs_diff(&first.get(i).unwrap(), &single.squeeze(0).unwrap());
            assert!(d < TOL, "{case}: row {i}'s logits differ by {d} in a left-padded batch");
        }
        let err =
            f.model.forward_cached(&Batch::single(&chat, &Device::Cpu).unwrap(), &capture, &mut cache).unwrap_err();
        assert!(err.to_string().contains("needs a cache made for that many"), "{err}");
    }
}
