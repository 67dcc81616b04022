//! The `secure-tuning` binary: JSON output shapes and one-line errors with a non-zero exit.

use std::process::Command;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_secure-tuning"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env(
            "HF_HOME",
            std::env::temp_dir().join("secure-tuning-empty-hf-home"),
        )
        .output()
        .unwrap();
    let s = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (
        out.status.code().unwrap_or(-1),
        s(out.stdout),
        s(out.stderr),
    )
}

fn fixture(case: &str) -> String {
    format!("{}/tests/fixtures/{case}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn forward_json_has_ids_logits_and_every_hidden_state() {
    let (code, out, err) = run(&[
        "forward",
        "--model",
        &fixture("mistral"),
        "--text",
        "Hello fox",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let ids = v["token_ids"].as_array().unwrap();
    assert_eq!(ids[0], 1, "the tokenizer's post-processor adds BOS");
    assert_eq!(v["last_logits"].as_array().unwrap().len(), 320);
    let hidden = v["hidden_states"].as_array().unwrap();
    assert_eq!(hidden.len(), 4, "num_layers + 1 entries");
    assert!(hidden.iter().all(|h| h.as_array().unwrap().len() == 32));
}

#[test]
fn chat_prints_a_reply() {
    let (code, out, err) = run(&[
        "chat",
        "--model",
        &fixture("qwen2"),
        "--prompt",
        "Hi",
        "--max-new-tokens",
        "4",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.is_empty());
}

#[test]
fn bad_inputs_give_one_line_and_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let bad_cfg = tmp.path().join("bad");
    std::fs::create_dir(&bad_cfg).unwrap();
    std::fs::write(bad_cfg.join("config.json"), "[1, 2").unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "forward".into(),
                "--model".into(),
                "/no/such/dir".into(),
                "--text".into(),
                "x".into(),
            ],
            "/no/such/dir",
        ),
        (
            vec![
                "forward".into(),
                "--model".into(),
                bad_cfg.display().to_string(),
                "--text".into(),
                "x".into(),
            ],
            "malformed",
        ),
        (
            vec![
                "forward".into(),
                "--model".into(),
                fixture("qwen2"),
                "--text".into(),
                "".into(),
            ],
            "--text",
        ),
        (
            vec![
                "forward".into(),
                "--model".into(),
                "org/absent".into(),
                "--text".into(),
                "x".into(),
            ],
            "HF_HUB_OFFLINE",
        ),
        (
            vec![
                "chat".into(),
                "--model".into(),
                fixture("qwen2"),
                "--prompt".into(),
                " ".into(),
            ],
            "--prompt",
        ),
    ];
    for (args, needle) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, _, err) = run(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains(needle),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}
