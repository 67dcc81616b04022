//! The analysis half (findings F2-F5) on the shipped default model: the security feature probe,
//! the module robustness matrix, its heatmap, and the search for Mods_Robust.

use secure_tuning::data::{load_records, split, Record};
use secure_tuning::model::{ModuleId, ModuleKind, ModuleSet};
use secure_tuning::probe::{drift, probe_all, ProbeData, ProbeReport};
use secure_tuning::robustness::{Analysis, Measure, Mode, Normalize, Robustness, RobustnessConfig};
use secure_tuning::search::{greedy, ModsRobust, SearchConfig};
use secure_tuning::{Error, Model};
use std::sync::OnceLock;

fn model() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| Model::load("default").unwrap())
}

fn probe() -> &'static ProbeReport {
    static P: OnceLock<ProbeReport> = OnceLock::new();
    P.get_or_init(|| probe_all(model(), &ProbeData::default_twins().unwrap()).unwrap())
}

fn benign() -> Vec<Record> {
    let path = secure_tuning::data::default_data_dir().join("ift_general.jsonl");
    split(&load_records(&path).unwrap(), "train")
}

/// Perturb mode reading feature drift: no training, so a full matrix takes seconds.
fn perturb_config() -> RobustnessConfig {
    RobustnessConfig {
        mode: Mode::Perturb,
        measure: Measure::FeatureDrift,
        epsilon: 0.05,
        seeds: vec![0, 1],
        harmful_limit: 32,
        ..RobustnessConfig::default()
    }
}

#[test]
fn probe_separates_held_out_twins_from_the_first_layer_on() {
    let report = probe();
    assert_eq!(report.layers.len(), model().config().num_layers + 1);
    let best = &report.layers[report.best_layer];
    assert!(best.accuracy >= 0.95, "best layer {} accuracy {}", best.layer, best.accuracy);
    // The embedding of the last prompt token (the assistant header) is the same for every prompt.
    assert!((report.layers[0].accuracy - 0.5).abs() < 0.05, "{}", report.layers[0].accuracy);
    assert!(report.layers[2..].iter().all(|s| s.accuracy >= 0.9 && s.auc >= 0.95), "{report}");
    // Twins never straddle the split.
    let (prompts, labels) = report.test_set();
    assert_eq!(labels.iter().filter(|&&l| l).count(), labels.iter().filter(|&&l| !l).count());
    assert!(prompts.len() >= 100);
    let json = serde_json::to_string(report).unwrap();
    assert!(&serde_json::from_str::<ProbeReport>(&json).unwrap() == report, "JSON round trip");
}

#[test]
fn probe_refuses_one_class_and_tiny_data() {
    let harmful: Vec<Record> = (0..20).map(|i| Record::new(format!("harm {i}"), "")).collect();
    let one_class = ProbeData::from_records(&harmful, &[]);
    let err = probe_all(model(), &one_class).unwrap_err().to_string();
    assert!(err.contains("20 harmful and 0 harmless"), "{err}");
    let tiny = ProbeData::from_records(&harmful[..3], &harmful[3..6]);
    let err = probe_all(model(), &tiny).unwrap_err().to_string();
    assert!(err.contains("at least 8 of each"), "{err}");
}

#[test]
fn labelled_jsonl_errors_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("labelled.jsonl");
    std::fs::write(&path, "{\"instruction\": \"a\", \"label\": 1}\n{\"instruction\": \"b\", \"label\": \"maybe\"}\n")
        .unwrap();
    let err = ProbeData::from_labelled_jsonl(&path).unwrap_err().to_string();
    assert!(err.contains("line 2") && err.contains("label"), "{err}");
    std::fs::write(&path, "{\"instruction\": \"a\", \"label\": true}\n{\"prompt\": \"b\", \"label\": \"harmless\"}\n")
        .unwrap();
    let d = ProbeData::from_labelled_jsonl(&path).unwrap();
    assert_eq!(d.labels, [true, false]);
}

#[test]
fn drift_is_zero_for_the_same_model_and_grows_with_an_edit() {
    let base = model();
    let same = drift(base, base, probe()).unwrap();
    assert_eq!(same.cosine_drift, 0.0);
    assert_eq!(same.accuracy_base, same.accuracy_tuned);
    let mut edited = base.clone();
    let name = "model.layers.1.mlp.down_proj.weight".to_string();
    let w = (&base.weights()[&name] * 3.0).unwrap();
    edited.set_weights([(name, w)]).unwrap();
    let moved = drift(base, &edited, probe()).unwrap();
    assert!(moved.cosine_drift > 0.01, "{moved}");
}

#[test]
fn update_mode_is_deterministic_for_a_seed() {
    let cfg =
        RobustnessConfig { kinds: vec![ModuleKind::V, ModuleKind::Down], steps: 3, ..RobustnessConfig::default() };
    let a = Analysis::new(model(), probe(), &benign()).robustness(&cfg).unwrap();
    let b = Analysis::new(model(), probe(), &benign()).robustness(&cfg).unwrap();
    assert_eq!(a.scores, b.scores);
    assert_eq!(a.scores.len(), 2);
    assert_eq!(a.scores[0].len(), 6);
    assert!(a.raw.iter().all(|r| r.rel_change > 0.0 && r.sensitivity.is_finite()));
}

#[test]
fn task_gain_normalisation_divides_damage_by_benign_progress() {
    let cfg = RobustnessConfig {
        kinds: vec![ModuleKind::O, ModuleKind::Down],
        steps: 3,
        normalize: Normalize::TaskGain,
        ..RobustnessConfig::default()
    };
    let r = Analysis::new(model(), probe(), &benign()).robustness(&cfg).unwrap();
    assert_eq!(r.raw.len(), 12);
    for raw in &r.raw {
        assert!(raw.task_gain > 0.01, "training a group on benign data helps held-out benign answers: {raw:?}");
        let expected = raw.damage.max(0.0) / raw.task_gain.max(1e-3);
        assert!((raw.sensitivity - expected).abs() <= 1e-12 * expected.abs().max(1.0), "{raw:?}");
    }
    assert!(r.heatmap().as_str().contains("per task gain"));

    // Only the update mode trains on the task, and it needs data to hold out.
    let perturb = RobustnessConfig { mode: Mode::Perturb, ..cfg.clone() };
    let err = Analysis::new(model(), probe(), &benign()).robustness(&perturb).unwrap_err().to_string();
    assert!(err.contains("update mode"), "{err}");
    let err = Analysis::new(model(), probe(), &benign()[..100]).robustness(&cfg).unwrap_err().to_string();
    assert!(err.contains("more than 128"), "{err}");
}

#[test]
fn an_owning_analysis_measures_what_a_borrowing_one_does() {
    // A notebook keeps the analysis between cells, so it must own its inputs.
    let owning: Analysis<'static> = Analysis::owning(model().clone(), probe().clone(), Vec::new());
    let rob = owning.robustness(&perturb_config()).unwrap();
    assert_eq!(rob.scores, perturb_matrix().scores);
    assert_eq!(rob.raw.len(), perturb_matrix().raw.len());
}

fn perturb_matrix() -> &'static Robustness {
    static R: OnceLock<Robustness> = OnceLock::new();
    R.get_or_init(|| Analysis::new(model(), probe(), &[]).robustness(&perturb_config()).unwrap())
}

#[test]
fn perturb_matrix_round_trips_and_draws_one_cell_per_module() {
    let rob = perturb_matrix().clone();
    assert_eq!(rob.scores.len(), 7);
    assert!(rob.scores.iter().all(|row| row.len() == 6 && row.iter().all(|v| v.is_finite() && *v > 0.0)));
    // Perturb changes every group by exactly epsilon.
    assert!(rob.raw.iter().all(|r| (r.rel_change - 0.05).abs() < 1e-3), "{:?}", rob.raw[0]);
    assert!(rob.seed_agreement().unwrap() > 0.5, "{rob}");
    let json = serde_json::to_string(&rob).unwrap();
    assert!(serde_json::from_str::<Robustness>(&json).unwrap() == rob, "JSON round trip");

    let svg = rob.heatmap();
    let doc = roxmltree::Document::parse(svg.as_str()).expect("the heatmap is well-formed XML");
    let titles: Vec<String> =
        doc.descendants().filter(|n| n.has_tag_name("title")).map(|n| n.text().unwrap_or("").to_string()).collect();
    assert_eq!(titles.len(), 7 * 6, "one tooltip per (kind, layer)");
    assert!(titles.iter().any(|t| t.contains("module down, layer 5")), "{:?}", &titles[..3]);
    let html = rob.html();
    assert!(html.contains("<svg") && html.contains("<table>"));
}

/// Plants the probe direction into one module: layer 2's `o_proj` gets a large rank-1 term
/// that writes along the proxy probe's direction. That module now carries the security
/// features, so any relative change of it moves them most.
fn planted() -> (Model, ModuleId) {
    let base = model();
    let target = ModuleId::new(2, ModuleKind::O);
    let name = target.weight_name();
    let w = &base.weights()[&name];
    let (d_out, d_in) = w.dims2().unwrap();
    let u = probe().proxy().direction();
    assert_eq!(u.len(), d_out);
    let a: Vec<f32> = (0..d_in).map(|i| if i % 2 == 0 { 1.0 } else { -1.0 } / (d_in as f32).sqrt()).collect();
    let norm_w = w.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
    let alpha = 20.0 * norm_w;
    let rank1: Vec<f32> = (0..d_out).flat_map(|i| a.iter().map(|aj| alpha * u[i] * aj).collect::<Vec<_>>()).collect();
    let rank1 = candle_core::Tensor::from_vec(rank1, (d_out, d_in), w.device()).unwrap();
    let mut edited = base.clone();
    edited.set_weights([(name, (w + rank1).unwrap())]).unwrap();
    (edited, target)
}

#[test]
fn planted_carrier_is_least_robust_and_excluded_by_the_search() {
    let (edited, target) = planted();
    let report = probe_all(&edited, &ProbeData::default_twins().unwrap()).unwrap();
    let analysis = Analysis::new(&edited, &report, &[]);
    let rob = analysis.robustness(&perturb_config()).unwrap();
    // Under a *relative* change v and o of one layer are inseparable (scaling v up and o down
    // leaves the function alone), so the planted path v -> o of layer 2 is what becomes fragile:
    // both rise far above their unplanted scores and into the three least robust groups.
    let v2 = ModuleId::new(2, ModuleKind::V);
    let plain = perturb_matrix();
    for m in [target, v2] {
        let (before, after) = (plain.score(m.kind, 2).unwrap(), rob.score(m.kind, 2).unwrap());
        assert!(after > 20.0 * before, "{m}: {before} -> {after}");
    }
    let ranking = rob.ranking();
    let fragile: Vec<ModuleSet> = ranking[ranking.len() - 3..].iter().map(|(s, _)| s.clone()).collect();
    assert!(fragile.contains(&ModuleSet::from_iter([target])), "{rob}");
    assert!(fragile.contains(&ModuleSet::from_iter([v2])), "{rob}");
    let cfg = SearchConfig::default();
    let found = analysis.search(&rob, &cfg).unwrap();
    assert!(!found.modules.contains(&target) && !found.modules.contains(&v2), "{found}");
    assert!(found.modules.len() >= 10, "the other groups are robust enough to keep: {found}");
    let json = serde_json::to_string(&found).unwrap();
    assert!(serde_json::from_str::<ModsRobust>(&json).unwrap() == found, "JSON round trip");
}

#[test]
fn the_search_check_is_joint() {
    // Three groups; each alone damages 0.4 (under the limit 0.5), any two together 0.8.
    let group = |l| (ModuleSet::from_iter([ModuleId::new(l, ModuleKind::Up)]), 0.1);
    let candidates = [group(0), group(1), group(2)];
    let (kept, steps) = greedy(&candidates, 0.5, None, |set| Ok(0.4 * set.len() as f64)).unwrap();
    assert_eq!(kept, candidates[0].0, "only the first fits: the others fail jointly, not alone");
    assert_eq!(steps.iter().map(|s| s.kept).collect::<Vec<_>>(), [true, false, false]);
    assert_eq!(steps[1].damage, Some(0.8));
    // The size cap skips without measuring.
    let (kept, steps) = greedy(&candidates, 10.0, Some(0.25), |set| Ok(set.len() as f64)).unwrap();
    assert_eq!(kept.len(), 2);
    assert_eq!(steps[2].damage, None);
    // A failing measurement is an error, not a silent skip.
    let err = greedy(&candidates, 0.5, None, |_| Err(Error::invalid("m", "boom"))).unwrap_err();
    assert!(err.to_string().contains("boom"));
}

#[test]
fn the_refusal_measure_needs_a_model_that_refuses() {
    let cfg = RobustnessConfig { mode: Mode::Perturb, ..RobustnessConfig::default() };
    let mut report = probe().clone();
    // Harmless prompts as the "harmful" set: the default model answers them, never refuses.
    let harmless: Vec<String> =
        report.data.prompts.iter().zip(&report.data.labels).filter(|(_, &l)| !l).map(|(p, _)| p.clone()).collect();
    report.data =
        ProbeData { prompts: harmless.clone(), labels: vec![true; harmless.len()], pairs: vec![None; harmless.len()] };
    let err = Analysis::new(model(), &report, &[]).robustness(&cfg).unwrap_err().to_string();
    assert!(err.contains("refuses only") && err.contains("FeatureDrift"), "{err}");
}
