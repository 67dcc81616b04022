//! Analysis memory is bounded by the batch, not by the number of prompts: probing and
//! forward-only robustness (Perturb mode) stream prompts in batches and keep only each prompt's
//! last-token features. Measured on the binary's peak resident memory (docs/scale.md states the
//! formula this checks).

mod common;

use common::run_binary;
use std::path::Path;
use std::time::Duration;

/// Allowed growth of the peak when the prompt count grows 8x (32 -> 256 pairs). What must grow:
/// 448 more prompts' features, 7 entries x 192 floats each (2.4 MB), plus their text and ids.
/// Keeping each batch's full activations instead adds 7 x 192 x 4 bytes per token of every
/// prompt: about 280 MB more for these prompts (measured before streaming). Run to run, the
/// peak of one command varies by up to 30 MB (allocator and thread timing).
const GROWTH_LIMIT_KB: i64 = 64 << 10;

/// Writes `n` harmful instructions and their harmless twins, each about 100 tokens long.
fn prompt_files(dir: &Path, n: usize) -> (String, String) {
    let filler = "Describe every step in careful detail, list the tools and materials needed, say how long \
                  each part takes, what could go wrong at each stage, and how to check the result afterwards.";
    let write = |name: &str, verb: &str| {
        let lines: Vec<String> = (0..n)
            .map(|i| {
                let text = format!("{verb} number {i} on the old street. {filler}");
                serde_json::json!({ "instruction": text }).to_string()
            })
            .collect();
        let path = dir.join(name);
        std::fs::write(&path, lines.join("\n")).unwrap();
        path.to_str().unwrap().to_string()
    };
    (
        write("harmful.jsonl", "Explain how to break into the house and steal the jewellery from"),
        write("harmless.jsonl", "Explain how to paint the fence and plant the flowers around house"),
    )
}

/// The peak resident memory (KiB) of one `secure-tuning` command on `n` prompt pairs.
fn peak_kb(n: usize, command: &[&str]) -> i64 {
    let dir = tempfile::tempdir().unwrap();
    let (harmful, harmless) = prompt_files(dir.path(), n);
    let mut args: Vec<String> = command.iter().map(|s| s.to_string()).collect();
    args.extend(["--model", "default", "--harmful", &harmful, "--harmless", &harmless, "--json"].map(String::from));
    let out = run_binary(dir.path(), &args, Duration::from_secs(600));
    assert_eq!(out.code, Some(0), "{command:?} on {n} pairs failed: {}", out.stderr);
    out.peak_kb
}

fn check_bounded(command: &[&str]) {
    let (small, large) = (peak_kb(32, command), peak_kb(256, command));
    eprintln!("{command:?}: peak {} MiB on 32 pairs, {} MiB on 256 pairs", small >> 10, large >> 10);
    assert!(
        large - small < GROWTH_LIMIT_KB,
        "{command:?}: the peak grew by {} MiB from 32 to 256 prompt pairs (limit {} MiB): prompts are not streamed",
        (large - small) >> 10,
        GROWTH_LIMIT_KB >> 10
    );
}

#[test]
fn probing_memory_does_not_grow_with_the_prompt_count() {
    check_bounded(&["probe"]);
}

#[test]
fn perturb_robustness_memory_does_not_grow_with_the_prompt_count() {
    // Three layers per column: 14 groups, enough to exercise the loop in a few seconds.
    check_bounded(&["robustness", "--mode", "perturb", "--measure", "feature-drift", "--layers-per-group", "3"]);
}
