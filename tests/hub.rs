//! The real hub code path (hf-hub's cache layout, HF_HOME, HF_HUB_OFFLINE) against a fake
//! on-disk cache: no network is touched. One test function, because it sets process env vars.

use secure_tuning::prelude::*;
use std::path::Path;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn fake_cache(home: &Path, repo: &str, files_from: &Path) {
    let repo_dir = home.join("hub").join(format!("models--{}", repo.replace('/', "--")));
    let snapshot = repo_dir.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs/main"), COMMIT).unwrap();
    std::fs::write(repo_dir.join("refs/v1"), COMMIT).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "model.safetensors"] {
        std::fs::copy(files_from.join(f), snapshot.join(f)).unwrap();
    }
}

#[test]
fn hub_ids_load_from_the_cache_offline_and_fail_clearly_when_absent() {
    let home = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen2");
    fake_cache(home.path(), "tiny-org/tiny-qwen", &fixture);
    std::env::set_var("HF_HOME", home.path());
    std::env::set_var("HF_HUB_OFFLINE", "1");

    let from_hub = Model::load("tiny-org/tiny-qwen").unwrap();
    let from_dir = Model::load_dir(&fixture).unwrap();
    assert_eq!(from_hub.name(), "tiny-org/tiny-qwen");
    let ids = from_dir.tokenizer().encode("How do plants drink?", false).unwrap();
    let run = |m: &Model| {
        let b = Batch::single(&ids, m.device()).unwrap();
        m.forward(&b, &Capture::logits()).unwrap().logits.unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
    };
    assert_eq!(run(&from_hub), run(&from_dir), "the cached snapshot is the same model");

    for revision in ["v1", COMMIT] {
        let opts = LoadOptions { revision: Some(revision.into()), ..LoadOptions::default() };
        assert!(Model::load_with("tiny-org/tiny-qwen", &opts).is_ok(), "revision {revision}");
    }

    let err = Model::load("tiny-org/not-cached").unwrap_err().to_string();
    assert!(err.contains("tiny-org/not-cached") && err.contains("HF_HUB_OFFLINE=1"), "{err}");
    let opts = LoadOptions { revision: Some("v9".into()), ..LoadOptions::default() };
    let err = Model::load_with("tiny-org/tiny-qwen", &opts).unwrap_err().to_string();
    assert!(err.contains("v9") && err.contains("not in the local cache"), "{err}");
}
