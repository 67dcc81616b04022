//! The bad-input suite: every class of hostile or careless input found so far, run against the
//! binary. Each case must end with exit code 2 and one line on stderr (`error: ...`, naming
//! the input), without a panic, within its time limit, under a memory ceiling, and without
//! writing outside its output folder; the few well-formed edge cases (a byte-order mark, an
//! `--overwrite`, a planted link) must succeed. The totals are printed and must all be zero.
//! The policy behind each class is docs/hardening.md.

mod common;

use common::run_binary;
use secure_tuning::model::Model;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Peak resident memory a case may reach (the default model needs about 200 MiB).
const PEAK_LIMIT_KB: i64 = 2 << 20;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama3")
}

/// A copy of the llama3 fixture in `dir`, to spoil.
fn model_copy(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for entry in std::fs::read_dir(fixture()).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
    }
    dir.to_path_buf()
}

fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, serde_json::to_string(&v).unwrap()).unwrap();
}

fn records(dir: &Path, name: &str, lines: &[&str]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, lines.join("\n")).unwrap();
    p.to_str().unwrap().to_string()
}

/// Every file under `root` with its size and modification time, except under `skip`.
fn snapshot(root: &Path, skip: &[PathBuf]) -> BTreeMap<PathBuf, (u64, SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = entry.path();
            if skip.iter().any(|s| p.starts_with(s)) || p.file_name().is_some_and(|n| n == ".stdout" || n == ".stderr")
            {
                continue;
            }
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                stack.push(p);
            } else {
                out.insert(p, (meta.len(), meta.modified().unwrap()));
            }
        }
    }
    out
}

/// One case: how to set it up (returns the arguments), what stderr must say, and whether it
/// must succeed instead.
/// Prepares a case in its sandbox and returns the command's arguments.
type Setup = Box<dyn Fn(&Path) -> Vec<String>>;

struct Case {
    name: &'static str,
    setup: Setup,
    expect: &'static str,
    succeeds: bool,
}

fn fails(name: &'static str, expect: &'static str, setup: impl Fn(&Path) -> Vec<String> + 'static) -> Case {
    Case { name, setup: Box::new(setup), expect, succeeds: false }
}

fn succeeds(name: &'static str, setup: impl Fn(&Path) -> Vec<String> + 'static) -> Case {
    Case { name, setup: Box::new(setup), expect: "", succeeds: true }
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn tune_args(data: &str, extra: &[&str]) -> Vec<String> {
    let fx = fixture();
    let mut a = args(&[
        "tune",
        "--model",
        fx.to_str().unwrap(),
        "--data",
        data,
        "--out",
        "out/tuned",
        "--steps",
        "2",
        "--batch-size",
        "2",
    ]);
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn good_data(dir: &Path) -> String {
    records(
        dir,
        "d.jsonl",
        &[r#"{"instruction": "Say hi", "output": "hi"}"#, r#"{"instruction": "Say bye", "output": "bye"}"#],
    )
}

/// A robustness matrix of the 3-layer fixture, measured once and spoiled by each case.
fn fixture_matrix(dir: &Path) -> PathBuf {
    let out = dir.join("rob");
    let a = args(&[
        "robustness",
        "--model",
        fixture().to_str().unwrap(),
        "--mode",
        "perturb",
        "--measure",
        "feature-drift",
        "--out",
    ]);
    let mut a = a;
    a.push(out.to_str().unwrap().to_string());
    let o = run_binary(dir, &a, Duration::from_secs(120));
    assert_eq!(o.code, Some(0), "measuring the fixture's matrix failed: {}", o.stderr);
    out.join("robustness.json")
}

fn search_from(matrix: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = args(&[
        "search",
        "--model",
        fixture().to_str().unwrap(),
        "--mode",
        "perturb",
        "--measure",
        "feature-drift",
        "--from",
    ]);
    a.push(matrix.to_str().unwrap().to_string());
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn gguf_with_zero_alignment(path: &Path) {
    let mut b = Vec::new();
    b.extend(b"GGUF");
    b.extend(3u32.to_le_bytes()); // version
    b.extend(0u64.to_le_bytes()); // tensors
    b.extend(1u64.to_le_bytes()); // metadata entries
    let key = b"general.alignment";
    b.extend((key.len() as u64).to_le_bytes());
    b.extend(key);
    b.extend(4u32.to_le_bytes()); // u32
    b.extend(0u32.to_le_bytes());
    std::fs::write(path, b).unwrap();
}

fn cases() -> Vec<Case> {
    let fx = || fixture().to_str().unwrap().to_string();
    vec![
        // Panics found before: each now an error naming the input.
        fails("time budget NaN", "--time-budget", |d| tune_args(&good_data(d), &["--time-budget", "NaN"])),
        fails("time budget inf", "--time-budget", |d| tune_args(&good_data(d), &["--time-budget", "inf"])),
        fails("time budget negative", "--time-budget", |d| tune_args(&good_data(d), &["--time-budget=-1"])),
        fails("search matrix missing a row", "matrix", |d| {
            let m = fixture_matrix(d);
            edit_json(&m, |v| {
                v["scores"].as_array_mut().unwrap().pop();
            });
            search_from(&m, &[])
        }),
        fails("search matrix missing a column", "matrix", |d| {
            let m = fixture_matrix(d);
            edit_json(&m, |v| {
                v["scores"][0].as_array_mut().unwrap().pop();
            });
            search_from(&m, &[])
        }),
        fails("GGUF with alignment 0", "GGUF file", |d| {
            gguf_with_zero_alignment(&d.join("in.gguf"));
            args(&["import-gguf", "in.gguf", "--out", "out/imported"])
        }),
        fails("tokenizer regex that backtracks", "tokenizer input", |d| {
            let m = model_copy(&d.join("m"));
            edit_json(&m.join("tokenizer.json"), |v| {
                v["pre_tokenizer"] = serde_json::json!({"type": "Split", "pattern": {"Regex": "(a+)+b"}, "behavior": "Isolated", "invert": false});
            });
            args(&["forward", "--model", "m", "--text", &format!("{}c", "a".repeat(38))])
        }),
        // Hangs and unbounded resources.
        fails("chat template with runaway loops", "chat template", |d| {
            let m = model_copy(&d.join("m"));
            let loops = "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}";
            std::fs::remove_file(m.join("chat_template.jinja")).ok();
            edit_json(&m.join("tokenizer_config.json"), |v| v["chat_template"] = loops.into());
            args(&["chat", "--model", "m", "--prompt", "hi", "--max-new-tokens", "2"])
        }),
        fails("FIFO as config.json", "not a regular file", |d| {
            let m = model_copy(&d.join("m"));
            std::fs::remove_file(m.join("config.json")).unwrap();
            let c = std::ffi::CString::new(m.join("config.json").to_str().unwrap()).unwrap();
            // SAFETY: a valid C string and mode.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
            args(&["forward", "--model", "m", "--text", "hi"])
        }),
        fails("steps 2^64 - 1", "--steps", |d| tune_args(&good_data(d), &["--steps", "18446744073709551615"])),
        fails("epochs inf", "--epochs", |d| {
            let mut a = tune_args(&good_data(d), &["--epochs", "inf"]);
            let at = a.iter().position(|x| x == "--steps").unwrap();
            a.drain(at..at + 2);
            a
        }),
        fails("100k characters to forward", "context", move |_| {
            args(&["forward", "--model", &fx(), "--text", &"word ".repeat(20_000)])
        }),
        fails("a 5 MB instruction", "100000", |d| {
            let big = format!(r#"{{"instruction": "{}"}}"#, "x".repeat(5 << 20));
            let f = records(d, "big.jsonl", &[&big]);
            args(&["eval", "--model", "default", "--harmful", &f, "--limit", "1"])
        }),
        fails("data linked to /dev/zero", "not a regular file", |d| {
            std::os::unix::fs::symlink("/dev/zero", d.join("zero.jsonl")).unwrap();
            tune_args("zero.jsonl", &[])
        }),
        fails("config.json linked to /dev/zero", "not a regular file", |d| {
            let m = model_copy(&d.join("m"));
            std::fs::remove_file(m.join("config.json")).unwrap();
            std::os::unix::fs::symlink("/dev/zero", m.join("config.json")).unwrap();
            args(&["forward", "--model", "m", "--text", "hi"])
        }),
        // Silent wrong results, now errors.
        fails("rms_norm_eps -1", "rms_norm_eps", |d| {
            let m = model_copy(&d.join("m"));
            edit_json(&m.join("config.json"), |v| v["rms_norm_eps"] = (-1.0).into());
            args(&["forward", "--model", "m", "--text", "hi"])
        }),
        fails("rope_theta 0", "rope_theta", |d| {
            let m = model_copy(&d.join("m"));
            edit_json(&m.join("config.json"), |v| v["rope_parameters"]["rope_theta"] = 0.0.into());
            args(&["forward", "--model", "m", "--text", "hi"])
        }),
        fails("NaN weights", "not finite", |d| {
            let mut model = Model::load_dir(fixture()).unwrap();
            let name = "model.layers.1.mlp.down_proj.weight".to_string();
            let nan = (model.weights()[&name].zeros_like().unwrap() + f64::NAN).unwrap();
            model.set_weights([(name, nan)]).unwrap();
            model.save_dir(d.join("m")).unwrap();
            args(&["chat", "--model", "m", "--prompt", "hi", "--max-new-tokens", "3"])
        }),
        fails("config with fewer layers than the weights", "does not describe", |d| {
            let m = model_copy(&d.join("m"));
            edit_json(&m.join("config.json"), |v| v["num_hidden_layers"] = 2.into());
            args(&["forward", "--model", "m", "--text", "hi"])
        }),
        fails("clip norm NaN", "--clip-norm", |d| tune_args(&good_data(d), &["--clip-norm", "NaN"])),
        fails("clip norm negative", "--clip-norm", |d| tune_args(&good_data(d), &["--clip-norm=-1"])),
        fails("epsilon inf", "--epsilon", move |_| {
            args(&["robustness", "--model", &fx(), "--mode", "perturb", "--epsilon", "inf"])
        }),
        fails("max share NaN", "--max-share", |d| search_from(&fixture_matrix(d), &["--max-share", "NaN"])),
        fails("tolerance negative", "--tolerance", |d| search_from(&fixture_matrix(d), &["--tolerance=-1"])),
        fails("max new tokens 0", "--max-new-tokens", |_| {
            args(&["eval", "--model", "default", "--max-new-tokens", "0"])
        }),
        fails("a 6-layer matrix on a 3-layer model", "6-layer", |d| {
            let m = fixture_matrix(d);
            edit_json(&m, |v| v["num_layers"] = 6.into());
            search_from(&m, &[])
        }),
        fails("CSV with an unterminated quote", "never closed", |d| {
            let f = records(d, "d.csv", &["instruction,output", "\"Say hi,hi", "Say bye,bye"]);
            tune_args(&f, &[])
        }),
        fails("invalid UTF-8", "line 2", |d| {
            std::fs::write(
                d.join("bad.jsonl"),
                b"{\"instruction\": \"ok\", \"output\": \"a\"}\n{\"instruction\": \"\xff\xfe\"}\n",
            )
            .unwrap();
            tune_args("bad.jsonl", &[])
        }),
        succeeds("a UTF-8 byte-order mark", |d| {
            std::fs::write(d.join("bom.jsonl"), b"\xEF\xBB\xBF{\"instruction\": \"Say hi\", \"output\": \"hi\"}\n")
                .unwrap();
            tune_args("bom.jsonl", &[])
        }),
        // Lost or misdirected work.
        fails("--out holding a sharded model", "another model's weights", |d| {
            std::fs::create_dir_all(d.join("out/tuned")).unwrap();
            std::fs::write(d.join("out/tuned/model.safetensors.index.json"), "{}").unwrap();
            std::fs::write(d.join("out/tuned/model-00001-of-00002.safetensors"), "").unwrap();
            tune_args(&good_data(d), &[])
        }),
        succeeds("--overwrite replaces a sharded model", |d| {
            std::fs::create_dir_all(d.join("out/tuned")).unwrap();
            std::fs::write(d.join("out/tuned/model.safetensors.index.json"), "{}").unwrap();
            tune_args(&good_data(d), &["--overwrite"])
        }),
        fails("resume with another learning rate", "written with other lr", |d| {
            let data = good_data(d);
            let first = tune_args(&data, &["--checkpoint-dir", "out/ckpt", "--lr", "1e-3"]);
            assert_eq!(run_binary(d, &first, Duration::from_secs(60)).code, Some(0));
            std::fs::remove_dir_all(d.join("out/tuned")).unwrap();
            tune_args(&data, &["--checkpoint-dir", "out/ckpt", "--lr", "2e-3"])
        }),
        fails("a checkpoint dir in use", "another run", |d| {
            std::fs::create_dir_all(d.join("out/ckpt")).unwrap();
            std::fs::write(d.join("out/ckpt/.secure-tuning.lock"), std::process::id().to_string()).unwrap();
            tune_args(&good_data(d), &["--checkpoint-dir", "out/ckpt"])
        }),
        fails("an --out in use", "another run", |d| {
            std::fs::create_dir_all(d.join("out/tuned")).unwrap();
            std::fs::write(d.join("out/tuned/.secure-tuning.lock"), std::process::id().to_string()).unwrap();
            tune_args(&good_data(d), &[])
        }),
        fails("--out is a file", "not a folder", |d| {
            std::fs::create_dir_all(d.join("out")).unwrap();
            std::fs::write(d.join("out/tuned"), "a file").unwrap();
            tune_args(&good_data(d), &[])
        }),
        fails("--out cannot be written", "cannot write", |d| {
            let mut a = tune_args(&good_data(d), &[]);
            let at = a.iter().position(|x| x == "out/tuned").unwrap();
            a[at] = "/proc/secure-tuning-test".into();
            a
        }),
        // Path safety.
        succeeds("a link planted at the temporary name", |d| {
            std::fs::create_dir_all(d.join("out/tuned")).unwrap();
            std::os::unix::fs::symlink(d.join("outside/victim.txt"), d.join("out/tuned/model.safetensors.tmp"))
                .unwrap();
            std::os::unix::fs::symlink(d.join("outside/victim.txt"), d.join("out/tuned/config.json.tmp")).unwrap();
            tune_args(&good_data(d), &[])
        }),
        fails("a revision that leaves the cache", "--revision", |_| {
            args(&["forward", "--model", "org/name", "--revision", "../..", "--text", "hi"])
        }),
        fails("a shard outside the model folder", "not a plain file name", |d| {
            let m = model_copy(&d.join("m"));
            std::fs::write(
                m.join("model.safetensors.index.json"),
                r#"{"weight_map": {"model.norm.weight": "../outside/victim.safetensors"}}"#,
            )
            .unwrap();
            args(&["forward", "--model", "m", "--text", "hi"])
        }),
    ]
}

#[test]
fn hostile_inputs_give_one_clear_line_and_no_panic_hang_blowup_or_stray_write() {
    let mut totals: BTreeMap<&str, usize> = BTreeMap::new();
    let mut problems = Vec::new();
    let cases = cases();
    let mut peak_max = 0;
    for case in &cases {
        let root = tempfile::tempdir().unwrap();
        let outside = root.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("victim.txt"), "untouched").unwrap();
        let sandbox = root.path().join("work");
        std::fs::create_dir_all(sandbox.join("out")).unwrap();
        let a = (case.setup)(&sandbox);
        let before = snapshot(root.path(), &[sandbox.join("out")]);
        let o = run_binary(&sandbox, &a, Duration::from_secs(120));
        let after = snapshot(root.path(), &[sandbox.join("out")]);
        peak_max = peak_max.max(o.peak_kb);
        let lines: Vec<&str> = o.stderr.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('[')).collect();
        let mut bad = |class: &'static str, why: String| {
            *totals.entry(class).or_default() += 1;
            problems.push(format!("{}: {class}: {why}", case.name));
        };
        if o.timed_out {
            bad("hangs", "no answer within 120 s".into());
        } else if o.stderr.contains("panicked") || o.stderr.contains("internal error") || o.code.is_none() {
            bad("panics", o.stderr.clone());
        } else if case.succeeds && o.code != Some(0) {
            bad("wrong refusals", o.stderr.clone());
        } else if !case.succeeds && o.code == Some(0) {
            bad("silent results", format!("exit 0; stdout {}", o.stdout.chars().take(200).collect::<String>()));
        } else if !case.succeeds
            && (o.code != Some(2)
                || lines.len() != 1
                || !lines[0].starts_with("error: ")
                || !lines[0].contains(case.expect))
        {
            bad("unclear errors", format!("exit {:?}, wanted one line naming `{}`: {:?}", o.code, case.expect, lines));
        }
        if lines.iter().any(|l| l.len() > 600) {
            bad("unclear errors", "an error line longer than 600 characters (an input echoed whole?)".into());
        }
        if o.peak_kb > PEAK_LIMIT_KB {
            bad("memory", format!("peak {} MiB", o.peak_kb >> 10));
        }
        if before != after || std::fs::read_to_string(outside.join("victim.txt")).unwrap() != "untouched" {
            let changed: Vec<_> = after.keys().filter(|k| before.get(*k) != after.get(*k)).collect();
            bad("writes outside the output folder", format!("{changed:?}"));
        }
        *totals.entry("cases").or_default() += 1;
    }
    eprintln!("hostile inputs: {totals:?}, largest peak {} MiB", peak_max >> 10);
    assert!(problems.is_empty(), "{} problem(s):\n{}", problems.len(), problems.join("\n"));
    assert_eq!(totals["cases"], cases.len());
}

#[test]
fn reproduce_json_output_is_json_alone() {
    // Progress goes to stderr, so `reproduce --json | jq` works.
    let root = tempfile::tempdir().unwrap();
    let cfg = root.path().join("cfg.json");
    std::fs::write(
        &cfg,
        r#"{"steps": 2, "batch_size": 2, "seeds": [0], "random_sets": 1, "every": 2, "eval_limit": 2, "max_new_tokens": 2,
            "strategies": ["plain"], "robustness": {"mode": "perturb", "measure": "feature-drift", "kinds": ["o"], "harmful_limit": 4}}"#,
    )
    .unwrap();
    let a = args(&["reproduce", "--config", cfg.to_str().unwrap(), "--out", "out/r", "--json"]);
    let o = run_binary(root.path(), &a, Duration::from_secs(300));
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(o.stdout.trim()).expect("stdout is one JSON value");
    assert_eq!(v["strategies"].as_array().unwrap().len(), 2, "base and plain");
    assert!(o.stderr.contains("[reproduce]"), "progress went to stderr");
}
