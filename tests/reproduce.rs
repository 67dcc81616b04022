//! `reproduce`'s machinery on a tiny configuration: every strategy runs, is evaluated along its
//! trajectory, and lands in summary.json, reproduction.json and the offline report. (The science
//! is in docs/reproduce.md; the notebooks run `--quick`.)

use secure_tuning::data::default_data_dir;
use secure_tuning::experiment::{eval_sets, reproduce, ReproduceConfig, Reproduction};
use secure_tuning::model::ModuleKind;
use secure_tuning::robustness::{Measure, Mode, RobustnessConfig};
use secure_tuning::search::SearchConfig;
use secure_tuning::tune::StrategyKind;
use secure_tuning::Model;

fn tiny(benign: &str) -> ReproduceConfig {
    ReproduceConfig {
        benign: benign.to_string(),
        steps: 4,
        batch_size: 4,
        seeds: vec![0, 1],
        random_sets: 2,
        every: 2,
        eval_limit: 4,
        max_new_tokens: 6,
        robustness: RobustnessConfig {
            mode: Mode::Perturb,
            measure: Measure::FeatureDrift,
            kinds: vec![ModuleKind::O, ModuleKind::Down],
            harmful_limit: 8,
            ..RobustnessConfig::default()
        },
        search: SearchConfig::default(),
        ..ReproduceConfig::default()
    }
}

#[test]
fn every_strategy_is_run_evaluated_along_training_and_written() {
    let model = Model::load("default").unwrap();
    let r = reproduce(&model, &default_data_dir(), &tiny("general")).unwrap();

    let names: Vec<&str> = r.summary.iter().map(|row| row.name.as_str()).collect();
    let mut expected = vec!["base"];
    expected.extend(StrategyKind::ALL.map(|k| k.name()));
    assert_eq!(names, expected);
    // Two seeds for the main strategies (each random subset its own set), one for the others.
    let runs = |s: &str| r.runs.iter().filter(|run| run.strategy.name() == s).count();
    assert_eq!((runs("plain"), runs("ml-lr"), runs("random-subset"), runs("swat")), (2, 2, 2, 1));
    let sets: Vec<Option<usize>> =
        r.runs.iter().filter(|x| x.strategy == StrategyKind::RandomSubset).map(|x| x.set).collect();
    assert_eq!(sets, vec![Some(0), Some(1)]);
    for run in &r.runs {
        let steps: Vec<usize> = run.points.iter().map(|p| p.step).collect();
        assert_eq!(steps, vec![0, 2, 4], "{} evaluated at step 0, every 2 steps and at the end", run.strategy);
        assert_eq!(run.points[0].harmful_refusal, r.runs[0].points[0].harmful_refusal, "step 0 is the base model");
    }
    for row in &r.summary {
        for v in [row.harmful_refusal_rate, row.harmless_refusal_rate, row.task_accuracy] {
            assert!((0.0..=1.0).contains(&v), "{row:?}");
        }
        assert!(row.drift.is_finite() && row.drift >= 0.0, "{row:?}");
    }
    assert_eq!(r.summary[0].drift, 0.0, "the base model has not moved");
    assert!(r.summary[1..].iter().all(|row| row.drift > 0.0), "every strategy changed the model");

    let dir = tempfile::tempdir().unwrap();
    r.write(dir.path()).unwrap();
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("summary.json")).unwrap()).unwrap();
    let rows = summary["strategies"].as_array().unwrap();
    assert_eq!(rows.len(), 8);
    for key in ["name", "harmful_refusal_rate", "harmless_refusal_rate", "task_accuracy", "drift", "train_seconds"] {
        assert!(rows.iter().all(|row| !row[key].is_null()), "every row has {key}");
    }
    let back: Reproduction =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("reproduction.json")).unwrap()).unwrap();
    assert_eq!(back.summary, r.summary);
    let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
    assert!(html.matches("<svg").count() >= 4, "trade-off, refusal, probe and heatmap charts inline");
    assert!(!html.contains("src=\"http"), "the report reads offline");
}

#[test]
fn the_expertise_set_trains_and_evaluates_its_own_tasks() {
    let model = Model::load("default").unwrap();
    let cfg = ReproduceConfig { seeds: vec![0], random_sets: 1, ..tiny("expertise") };
    let sets = eval_sets(&default_data_dir(), "expertise", 4).unwrap();
    assert!(sets.tasks.iter().all(|t| t.instruction.contains("o'clock")), "clock tasks");
    let r = reproduce(&model, &default_data_dir(), &cfg).unwrap();
    assert_eq!(r.config.benign, "expertise");
    let err = eval_sets(&default_data_dir(), "no-such-set.jsonl", 4).unwrap_err();
    assert!(err.to_string().contains("no-such-set.jsonl"), "{err}");
}

#[test]
fn a_data_folder_and_a_strategy_subset_from_a_json_config() {
    // A safety-data folder like the one `secure-tuning align` writes: 24 pairs, 8 held out.
    let all = |file: &str| secure_tuning::data::load_records(&default_data_dir().join(file)).unwrap();
    let (harmful, harmless) = (all("harmful.jsonl"), all("harmless.jsonl"));
    let dir = tempfile::tempdir().unwrap();
    let pick = |records: &[secure_tuning::data::Record], split: &str, n: usize| {
        records.iter().filter(|r| r.split == split).take(n).cloned().collect::<Vec<_>>()
    };
    for (file, records) in [("harmful.jsonl", &harmful), ("harmless.jsonl", &harmless)] {
        let mut subset = pick(records, "train", 16);
        subset.extend(pick(records, "eval", 8));
        secure_tuning::data::save_jsonl(&subset, &dir.path().join(file)).unwrap();
    }
    let cfg: ReproduceConfig = serde_json::from_value(serde_json::json!({
        "steps": 4, "batch_size": 4, "seeds": [0], "random_sets": 1, "every": 4, "eval_limit": 4, "max_new_tokens": 6,
        "strategies": ["plain", "ml-lr"],
        "robustness": {"mode": "perturb", "measure": "feature-drift", "kinds": ["o", "down"], "harmful_limit": 8}
    }))
    .unwrap();
    assert_eq!((cfg.lr, cfg.ratio, cfg.robustness.epsilon), (2e-4, 0.1, 1.0), "missing fields take defaults");
    let model = Model::load("default").unwrap();
    let r = reproduce(&model, dir.path(), &cfg).unwrap();
    assert_eq!((r.probe.data.count(true), r.probe.data.count(false)), (8, 8), "the folder's held-out pairs");
    let names: Vec<&str> = r.summary.iter().map(|row| row.name.as_str()).collect();
    assert_eq!(names, ["base", "plain", "ml-lr"]);
    assert!(r.verdict.contains("plain IFT lost"), "{}", r.verdict);

    let bad = serde_json::from_value::<ReproduceConfig>(serde_json::json!({"strategies": ["plain", "sgd"]}));
    let err = bad.unwrap_err().to_string();
    assert!(err.contains("unknown variant `sgd`") && err.contains("safety-mix"), "{err}");
    let err = reproduce(&model, &dir.path().join("missing"), &cfg).unwrap_err().to_string();
    assert!(err.contains("missing"), "{err}");
}
