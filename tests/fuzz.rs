//! Property tests of every parser a user can feed, sized for CI: random JSON built from the
//! field names each format uses, and random damage (flipped, cut, inserted bytes) to valid
//! files. The property is always the same: an `Ok` or a clear `Err`, never a panic or a hang.
//! Set `PROPTEST_CASES` for a longer run.

use proptest::prelude::*;
use secure_tuning::data::load_records;
use secure_tuning::experiment::ReproduceConfig;
use secure_tuning::model::{Config, ModuleSet};
use secure_tuning::robustness::Robustness;
use secure_tuning::search::ModsRobust;
use secure_tuning::tune::PlanFile;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixture(file: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama3").join(file)).unwrap()
}

/// A plan written by `export-plan` (the update-parity fixture).
fn plan_fixture() -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/plans/llama3/plan_swat.json")).unwrap()
}

/// Field names the formats use, so random objects reach past the first check.
const KEYS: &[&str] = &[
    "model_type",
    "llama",
    "qwen2",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "rope_type",
    "factor",
    "max_position_embeddings",
    "instruction",
    "output",
    "goal",
    "split",
    "id",
    "modules",
    "layer",
    "kind",
    "scores",
    "kinds",
    "layer_groups",
    "num_layers",
    "config",
    "mode",
    "seeds",
    "steps",
    "strategies",
    "robustness",
    "weight_map",
    "model",
    "pre_tokenizer",
    "type",
    "added_tokens",
    "vocab",
    "merges",
];

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop_oneof![any::<f64>(), Just(0.0), Just(-1.0), Just(1e300)].prop_map(|x| serde_json::json!(x)),
        (0..6usize).prop_map(Value::from),
        prop::sample::select(KEYS).prop_map(Value::from),
        "[ -~]{0,16}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
        ]
    })
}

/// A valid file with random damage: bytes flipped, ranges cut, junk inserted, the tail dropped.
fn damaged(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let n = valid.len().max(1);
    prop::collection::vec((0..4u8, 0..n, any::<u8>(), 0..64usize), 1..6).prop_map(move |edits| {
        let mut b = valid.clone();
        for (op, at, byte, len) in edits {
            let at = at.min(b.len());
            match op {
                0 if at < b.len() => b[at] ^= byte | 1,
                1 => {
                    let end = (at + len).min(b.len());
                    b.drain(at..end);
                }
                2 => b.splice(at..at, std::iter::repeat_n(byte, len % 8 + 1)).for_each(drop),
                _ => b.truncate(at),
            }
        }
        b
    })
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// 4096 cases per property (about 10 s in all); `PROPTEST_CASES` sets another number.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(4096);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn config_json_parses_or_says_why(v in json(), bytes in damaged(fixture("config.json"))) {
        let _ = Config::from_json_str(&v.to_string(), "config.json".as_ref());
        let _ = Config::from_json_str(&String::from_utf8_lossy(&bytes), "config.json".as_ref());
    }

    #[test]
    fn data_files_parse_or_say_why(v in json(), bytes in damaged(br#"{"instruction": "Say hi", "output": "hi", "split": "eval"}
instruction,output,category
"Say, ""hi""",hi,x
"#.to_vec())) {
        let dir = tempfile::tempdir().unwrap();
        for ext in ["jsonl", "json", "csv"] {
            let _ = load_records(&write(dir.path(), &format!("a.{ext}"), &bytes));
            let _ = load_records(&write(dir.path(), &format!("b.{ext}"), v.to_string().as_bytes()));
        }
    }

    #[test]
    fn result_files_read_or_say_why(v in json()) {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "x.json", v.to_string().as_bytes());
        let _ = ModuleSet::read_json(&p);
        let _ = ReproduceConfig::from_file(&p);
        let _ = secure_tuning::fs::read_json::<ModsRobust>(&p, "a mods_robust.json");
        if let Ok(rob) = Robustness::read_json(&p) {
            let _ = rob.ranking();
        }
    }

    #[test]
    fn tokenizer_files_load_or_say_why(bytes in damaged(fixture("tokenizer.json")), v in json()) {
        let dir = tempfile::tempdir().unwrap();
        for file in ["config.json", "tokenizer_config.json", "chat_template.jinja", "model.safetensors"] {
            write(dir.path(), file, &fixture(file));
        }
        for content in [bytes, v.to_string().into_bytes()] {
            write(dir.path(), "tokenizer.json", &content);
            if let Ok(model) = secure_tuning::Model::load_dir(dir.path()) {
                let _ = model.tokenizer().encode("Hello there, fox.", true);
            }
        }
    }

    #[test]
    fn plan_files_read_or_say_why(bytes in damaged(plan_fixture())) {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "plan.json", &bytes);
        let _ = PlanFile::read(&p);
    }

    #[test]
    fn gguf_files_import_or_say_why(bytes in damaged(small_gguf())) {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "m.gguf", &bytes);
        let _ = secure_tuning::model::import_gguf(&p, &dir.path().join("out"));
    }
}

/// A tiny valid GGUF: two tensors and the metadata an import reads first.
fn small_gguf() -> Vec<u8> {
    use candle_core::quantized::gguf_file::{self, Value as G};
    use candle_core::quantized::QTensor;
    let t = candle_core::Tensor::zeros((4, 8), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    let q = QTensor::quantize(&t, candle_core::quantized::GgmlDType::F32).unwrap();
    let md = [
        ("general.architecture", G::String("llama".into())),
        ("llama.block_count", G::U32(1)),
        ("llama.embedding_length", G::U32(8)),
        ("general.alignment", G::U32(32)),
        ("tokenizer.ggml.model", G::String("gpt2".into())),
    ];
    let refs: Vec<(&str, &G)> = md.iter().map(|(k, v)| (*k, v)).collect();
    let mut out = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut out, &refs, &[("token_embd.weight", &q), ("output_norm.weight", &q)]).unwrap();
    out.into_inner()
}
