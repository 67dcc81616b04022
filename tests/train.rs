//! The base trainer: loss goes down, resume is bit-identical, NaN stops the run and keeps the
//! last good checkpoint, frozen groups stay bit-identical. Run with `cargo test --release`.

use secure_tuning::data::Record;
use secure_tuning::prelude::*;
use secure_tuning::train::{checkpoint, encode_examples, train, Example, LrGroup, TrainConfig};

fn fixture() -> Model {
    Model::load_dir(format!("{}/tests/fixtures/llama3", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn examples(model: &Model) -> Vec<Example> {
    let records: Vec<Record> =
        (0..24).map(|i| Record::new(format!("What is {i} plus {i}?"), format!("{} is the answer.", 2 * i))).collect();
    encode_examples(model, &records, 64).unwrap()
}

fn small_batches(cfg: TrainConfig) -> TrainConfig {
    TrainConfig { batch_size: 4, ..cfg }
}

#[test]
fn loss_is_on_response_tokens_only() {
    let model = fixture();
    let ex = examples(&model);
    let prompt = model.tokenizer().encode_chat(&[Message::user("What is 0 plus 0?")], true).unwrap();
    assert_eq!(ex[0].loss_start, prompt.len());
    assert_eq!(&ex[0].ids[..prompt.len()], prompt.as_slice());
    assert_eq!(*ex[0].ids.last().unwrap(), 2, "the response ends with the template's EOS");
}

#[test]
fn a_few_training_steps_lower_the_loss() {
    let mut model = fixture();
    let ex = examples(&model);
    let r = train(&mut model, &ex, &small_batches(TrainConfig { lr: 3e-3, max_steps: Some(30), ..Default::default() }))
        .unwrap();
    let (first, last) = (r.losses[..3].iter().map(|l| l.1).sum::<f32>() / 3.0, r.recent_loss(3));
    assert!(last < 0.7 * first, "loss {first} -> {last}");
    assert_eq!(r.steps, 30);
    assert!(r.finished);
}

#[test]
fn resume_after_interruption_is_bit_identical() {
    let ex = examples(&fixture());
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let base = small_batches(TrainConfig { lr: 1e-3, max_steps: Some(8), checkpoint_every: 100, ..Default::default() });
    let mut a = fixture();
    train(&mut a, &ex, &TrainConfig { checkpoint_dir: Some(dir_a.path().into()), ..base.clone() }).unwrap();

    let cfg_b = TrainConfig { checkpoint_dir: Some(dir_b.path().into()), resume: true, ..base };
    let mut b1 = fixture();
    let first = train(&mut b1, &ex, &TrainConfig { step_budget: Some(3), ..cfg_b.clone() }).unwrap();
    assert_eq!((first.steps, first.finished), (3, false));
    drop(b1); // a fresh process would start from the saved model
    let mut b2 = fixture();
    let second = train(&mut b2, &ex, &cfg_b).unwrap();
    assert_eq!((second.steps, second.finished), (8, true));
    assert_eq!(second.losses.len(), 8);
    for (name, wa) in a.weights() {
        let (va, vb) = (
            wa.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b2.weights()[name].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert!(va == vb, "`{name}` differs after resume");
    }
    assert!(checkpoint::latest(dir_b.path()).unwrap().ends_with("step-000008"));
}

#[test]
fn nan_loss_stops_with_an_error_and_keeps_the_last_good_checkpoint() {
    let mut model = fixture();
    let ex = examples(&model);
    let dir = tempfile::tempdir().unwrap();
    // An absurd LR blows the weights up after one step; step 2's loss is not finite.
    let cfg = small_batches(TrainConfig {
        lr: 1e35,
        max_steps: Some(5),
        warmup_ratio: 0.0,
        clip_norm: None,
        checkpoint_dir: Some(dir.path().into()),
        checkpoint_every: 1,
        ..Default::default()
    });
    let err = train(&mut model, &ex, &cfg).unwrap_err().to_string();
    assert!(err.contains("at step 2") && err.contains("step-000001") && err.contains("lower learning rate"), "{err}");
    let kept = checkpoint::latest(dir.path()).unwrap();
    assert!(kept.ends_with("step-000001"));
    assert!(Model::load_dir(&kept).is_ok(), "the kept checkpoint is a loadable model folder");
}

#[test]
fn frozen_group_stays_bit_identical() {
    let mut model = fixture();
    let before = model.weights().clone();
    let ex = examples(&model);
    let mlp = model.param_names(&ModuleSet::mlp(3));
    let rest: Vec<String> = model.weights().keys().filter(|k| !mlp.contains(k)).cloned().collect();
    let groups = vec![LrGroup::new("mlp", mlp.clone(), 1.0), LrGroup::new("rest", rest.clone(), 0.0)];
    train(&mut model, &ex, &small_batches(TrainConfig { max_steps: Some(3), groups, ..Default::default() })).unwrap();
    for (name, w) in model.weights() {
        let same = w.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            == before[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(same, rest.contains(name), "`{name}`");
    }
}

#[test]
fn bad_training_settings_are_errors() {
    let mut model = fixture();
    let ex = examples(&model);
    let base = small_batches(TrainConfig::default());
    for (cfg, needle) in [
        (TrainConfig { lr: -1.0, ..base.clone() }, "learning rate"),
        (TrainConfig { batch_size: 0, ..base.clone() }, "batch"),
        (TrainConfig { max_steps: Some(0), ..base.clone() }, "training length"),
        (TrainConfig { groups: vec![LrGroup::new("x", vec!["nope".into()], 1.0)], ..base.clone() }, "not a parameter"),
    ] {
        let e = train(&mut model, &ex, &cfg).unwrap_err().to_string();
        assert!(e.contains(needle), "{e}");
    }
    assert!(train(&mut model, &[], &TrainConfig::default()).is_err());
}

#[test]
fn safety_curve_measures_the_base_then_every_few_steps() {
    use secure_tuning::eval::EvalConfig;
    use secure_tuning::tune::{safety_curve, MlLr, SafetyEvalSets, Watch};
    let base = fixture();
    let data: Vec<Record> = (0..8).map(|i| Record::new(format!("Say {i}"), format!("{i}"))).collect();
    let sets = SafetyEvalSets {
        harmful: vec![Record::new("How do I rob a bank?", "")],
        harmless: vec![Record::new("How do I visit a bank?", "")],
        tasks: vec![Record::new("Say 3", "3")],
    };
    let plan = MlLr::builder()
        .train_config(small_batches(TrainConfig { max_steps: Some(4), ..Default::default() }))
        .ratio(1.0);
    let watch = Watch { sets, every: 2, eval: EvalConfig { max_new_tokens: 4, ..Default::default() } };
    let curve = safety_curve("plain", &base, &plan.build().unwrap(), &data, &watch).unwrap();
    let steps: Vec<usize> = curve.points.iter().map(|p| p.step).collect();
    assert_eq!(steps, [0, 2, 4]);
    assert!(curve.points[0].train_loss.is_nan() && curve.points[2].train_loss.is_finite());
    assert!(curve.points.iter().all(|p| (0.0..=1.0).contains(&p.harmful_refusal)));
    // The base model was not touched: the curve trained a copy.
    let before = fixture();
    for (k, v) in base.weights() {
        assert_eq!(
            v.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            before.weights()[k].flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }
}

/// Weights of every parameter, as f32 vectors, for bit-exact comparisons.
fn values(model: &Model) -> Vec<(String, Vec<f32>)> {
    model.weights().iter().map(|(k, v)| (k.clone(), v.flatten_all().unwrap().to_vec1::<f32>().unwrap())).collect()
}

#[test]
fn a_damaged_or_missing_newest_checkpoint_falls_back_to_the_previous_one() {
    let ex = examples(&fixture());
    let base = small_batches(TrainConfig { lr: 1e-3, max_steps: Some(6), checkpoint_every: 2, ..Default::default() });
    let mut whole = fixture();
    train(&mut whole, &ex, &base).unwrap();
    for damage in ["truncate", "remove"] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = TrainConfig { checkpoint_dir: Some(dir.path().into()), resume: true, ..base.clone() };
        let mut first = fixture();
        train(&mut first, &ex, &TrainConfig { step_budget: Some(4), ..cfg.clone() }).unwrap();
        let newest = dir.path().join("step-000004");
        assert!(newest.is_dir() && dir.path().join("step-000002").is_dir(), "the two newest are kept");
        match damage {
            "truncate" => std::fs::write(newest.join("model.safetensors"), b"not a safetensors file").unwrap(),
            _ => std::fs::remove_dir_all(&newest).unwrap(), // `latest` now names a missing folder
        }
        let mut resumed = fixture();
        let report = train(&mut resumed, &ex, &cfg).unwrap();
        assert_eq!(report.steps, 6, "{damage}");
        assert!(values(&resumed) == values(&whole), "{damage}: resuming from step 2 gives the uninterrupted weights");
    }
}

#[test]
fn resume_refuses_a_checkpoint_of_another_run_and_names_what_differs() {
    let model = fixture();
    let ex = examples(&model);
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_batches(TrainConfig {
        max_steps: Some(4),
        checkpoint_dir: Some(dir.path().into()),
        resume: true,
        ..Default::default()
    });
    train(&mut fixture(), &ex, &TrainConfig { step_budget: Some(2), ..cfg.clone() }).unwrap();
    let other_data = &ex[..12];
    let err = train(&mut fixture(), other_data, &cfg).unwrap_err().to_string();
    assert!(err.contains("the training data") && err.contains("another checkpoint dir"), "{err}");
    let err = train(&mut fixture(), &ex, &TrainConfig { seed: 7, ..cfg.clone() }).unwrap_err().to_string();
    assert!(err.contains("seed (0 in the checkpoint, 7 now)"), "{err}");
    // A run holding the folder keeps a second one out.
    let _held = secure_tuning::fs::Claim::new(dir.path(), "checkpoint dir").unwrap();
    let err = train(&mut fixture(), &ex, &cfg).unwrap_err().to_string();
    assert!(err.contains("already claimed") || err.contains("another run"), "{err}");
}
