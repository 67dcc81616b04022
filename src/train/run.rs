//! The training loop, read top to bottom: set the LR, draw the micro-batches, take a step,
//! record, checkpoint, report progress, observe.

use super::checkpoint::{self, Fingerprint, TrainerState};
use super::config::{validate, TrainConfig};
use super::examples::{DataOrder, Example};
use super::report::{GroupTrace, TrainReport};
use super::step::TrainStep;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::progress::Task;
use std::path::PathBuf;
use std::time::Instant;

/// Called with the model and the report so far, before step 1 and after every `every` steps
/// (and after the last), e.g. to evaluate along the training trajectory.
pub struct Observer<'a> {
    /// Steps between calls (at least 1).
    pub every: usize,
    /// The call.
    pub observe: &'a mut dyn FnMut(&Model, &TrainReport) -> Result<()>,
}

/// Trains `model` in place on `examples` as `cfg` says and returns the report.
///
/// ```no_run
/// # use secure_tuning::{Model, data::Record, train::{encode_examples, train, TrainConfig}};
/// let mut model = Model::load("default")?;
/// let ex = encode_examples(&model, &[Record::new("What is 2 plus 2?", "4")], 64)?;
/// let report = train(&mut model, &ex, &TrainConfig { max_steps: Some(3), ..Default::default() })?;
/// assert_eq!(report.steps, 3);
/// # Ok::<(), secure_tuning::Error>(())
/// ```
pub fn train(model: &mut Model, examples: &[Example], cfg: &TrainConfig) -> Result<TrainReport> {
    train_observed(model, examples, cfg, None)
}

/// [`train`], with an [`Observer`] called along the way.
pub fn train_observed(
    model: &mut Model,
    examples: &[Example],
    cfg: &TrainConfig,
    mut observer: Option<Observer>,
) -> Result<TrainReport> {
    validate(cfg, examples.len())?;
    if observer.as_ref().is_some_and(|o| o.every == 0) {
        return Err(Error::invalid("observation interval", "must be at least 1 step"));
    }
    // Claimed before anything is computed: a folder another run is using fails at once.
    let _claim = cfg.checkpoint_dir.as_deref().map(|d| crate::fs::Claim::new(d, "checkpoint dir")).transpose()?;
    let fingerprint = Fingerprint::of(model, examples, cfg)?;
    let mut stepper = TrainStep::new(model, cfg)?;
    let groups = stepper.groups().to_vec();

    let total_steps = cfg.total_steps(examples.len());
    let schedule = cfg.schedule(total_steps);
    let traces = groups
        .iter()
        .map(|g| GroupTrace {
            name: g.name.clone(),
            lr_scale: g.lr_scale,
            start_step: g.start_step,
            num_params: g.num_params(model),
            lrs: vec![],
            update_norms: vec![],
        })
        .collect();
    let mut report = TrainReport {
        steps: 0,
        total_steps,
        losses: vec![],
        lrs: vec![],
        tokens: 0,
        seconds: 0.0,
        finished: false,
        groups: traces,
    };
    let mut progress = Task::new("train", total_steps);
    // Before step 1: each group's tensor and parameter count.
    for (g, t) in groups.iter().zip(&report.groups) {
        progress.say(&format!(
            "group {} lr x{}: {} tensors, {} params",
            g.name,
            g.lr_scale,
            g.params.len(),
            t.num_params
        ));
    }
    let trace_every = (total_steps / 100).max(1);
    if cfg.resume {
        if let Some(dir) = &cfg.checkpoint_dir {
            if let Some(state) = checkpoint::restore(dir, model, &mut stepper.opt, &stepper.vars, &fingerprint)? {
                if state.report.total_steps != total_steps {
                    return Err(Error::invalid(
                        "resume",
                        format!(
                            "the checkpoint in `{}` belongs to a {}-step plan, this one has {total_steps} steps; \
                             use the same settings or another checkpoint dir",
                            dir.display(),
                            state.report.total_steps
                        ),
                    ));
                }
                report = state.report;
            }
        }
    }
    if let Some(o) = observer.as_mut().filter(|_| report.steps == 0) {
        (o.observe)(model, &report)?;
    }

    let order = DataOrder::new(examples.len(), cfg.batch_size, cfg.seed);
    let start = Instant::now();
    let seconds_before = report.seconds;
    let mut last_ckpt: Option<PathBuf> = cfg.checkpoint_dir.as_ref().and_then(|d| checkpoint::latest(d));
    let first_step = report.steps;
    while report.steps < total_steps {
        let step = report.steps;
        let lr = cfg.lr * schedule.factor(step);
        let micro: Vec<Vec<&Example>> = (0..cfg.grad_accum)
            .map(|k| order.batch(step * cfg.grad_accum + k).into_iter().map(|i| &examples[i]).collect())
            .collect();
        let traced = step % trace_every == 0 || step + 1 == total_steps;
        let out = stepper.step(model, &micro, step, lr, traced)?;
        if !out.loss.is_finite() {
            let kept = match &last_ckpt {
                Some(p) => format!("last good checkpoint kept at `{}`", p.display()),
                None => "no checkpoint was written (set a checkpoint dir to keep one)".into(),
            };
            return Err(Error::NonFiniteLoss { loss: out.loss, step: step + 1, lr, kept });
        }
        report.tokens += out.tokens;
        if let Some(norms) = out.group_update_norms {
            for ((g, trace), norm) in groups.iter().zip(report.groups.iter_mut()).zip(norms) {
                let active = step >= g.start_step;
                trace.lrs.push((step + 1, if active { lr * g.lr_scale } else { 0.0 }));
                trace.update_norms.push((step + 1, norm));
            }
        }
        report.steps += 1;
        report.losses.push((report.steps, out.loss));
        report.lrs.push((report.steps, lr));
        report.seconds = seconds_before + start.elapsed().as_secs_f64();
        let out_of_time = cfg.time_budget.is_some_and(|b| start.elapsed() >= b)
            || cfg.step_budget.is_some_and(|b| report.steps - first_step >= b);
        let done = report.steps == total_steps;
        report.finished = done;
        if let Some(dir) = &cfg.checkpoint_dir {
            if done || out_of_time || report.steps % cfg.checkpoint_every.max(1) == 0 {
                let state = TrainerState {
                    report: report.clone(),
                    config: cfg.clone(),
                    fingerprint: Some(fingerprint.clone()),
                };
                last_ckpt = Some(checkpoint::save(dir, model, &stepper.opt, &state)?);
            }
        }
        progress.update(report.steps, || {
            let rate = report.tokens as f64 / report.seconds.max(1e-9);
            format!("loss {:.4} lr {lr:.2e} {rate:.0} tok/s", report.recent_loss(10))
        });
        if let Some(o) = observer.as_mut().filter(|o| report.steps % o.every == 0 || done) {
            (o.observe)(model, &report)?;
        }
        if out_of_time && !done {
            break;
        }
    }
    Ok(report)
}
