//! What a training run did: [`TrainReport`] with each group's applied LR and update norms.

use crate::display::{emit, escape_html, line_chart, Series};
use serde::{Deserialize, Serialize};

/// One LR group's trace in a [`TrainReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupTrace {
    /// The group's name.
    pub name: String,
    /// Its LR multiplier.
    pub lr_scale: f64,
    /// Its first training step.
    pub start_step: usize,
    /// Number of parameters (elements).
    pub num_params: usize,
    /// `(step, lr)` actually applied to the group, at traced steps.
    pub lrs: Vec<(usize, f64)>,
    /// `(step, ||update||)` over the group's tensors together, at traced steps.
    pub update_norms: Vec<(usize, f64)>,
}

/// What a training run did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    /// Steps completed in total (including before a resume).
    pub steps: usize,
    /// Steps the plan asked for.
    pub total_steps: usize,
    /// `(step, mean response-token loss)` for every step.
    pub losses: Vec<(usize, f32)>,
    /// `(step, lr)` of the base schedule for every step.
    pub lrs: Vec<(usize, f64)>,
    /// Response tokens trained on.
    pub tokens: usize,
    /// Wall seconds spent (this call and before a resume).
    pub seconds: f64,
    /// Whether the plan ran to its last step (false: stopped by a time or step budget).
    pub finished: bool,
    /// Per LR group: applied LR and update norm, at about 100 evenly spaced steps.
    #[serde(default)]
    pub groups: Vec<GroupTrace>,
}

impl TrainReport {
    /// Mean loss over the last `n` steps.
    pub fn recent_loss(&self, n: usize) -> f32 {
        let tail = &self.losses[self.losses.len().saturating_sub(n)..];
        tail.iter().map(|(_, l)| l).sum::<f32>() / tail.len().max(1) as f32
    }
}

impl TrainReport {
    /// Loss per step and the LR each group got, as two charts.
    pub fn html(&self) -> String {
        let loss =
            Series { label: "loss".into(), points: self.losses.iter().map(|&(s, l)| (s as f64, l as f64)).collect() };
        let loss_chart = line_chart("Training loss (response tokens)", "step", "loss", &[loss], None);
        let lrs: Vec<Series> = self
            .groups
            .iter()
            .map(|g| Series {
                label: format!("{} (x{})", g.name, g.lr_scale),
                points: g.lrs.iter().map(|&(s, lr)| (s as f64, lr)).collect(),
            })
            .collect();
        let lr_chart = line_chart("Learning rate per group", "step", "lr", &lrs, None);
        let rows: String = self
            .groups
            .iter()
            .map(|g| {
                let mean_update = g.update_norms.iter().map(|u| u.1).sum::<f64>() / g.update_norms.len().max(1) as f64;
                format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{mean_update:.3e}</td></tr>",
                    escape_html(&g.name),
                    g.lr_scale,
                    g.start_step,
                    g.num_params
                )
            })
            .collect();
        format!(
            "<div>{loss_chart}{lr_chart}<p>{}</p><table><tr><th>group</th><th>lr scale</th><th>starts at step</th>\
             <th>params</th><th>mean update norm</th></tr>{rows}</table></div>",
            escape_html(&self.to_string())
        )
    }

    /// Inline display in evcxr.
    pub fn evcxr_display(&self) {
        emit(&self.html(), &self.to_string())
    }
}

impl std::fmt::Display for TrainReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} steps, final loss {:.4}, {} tokens, {:.0}s",
            self.steps,
            self.total_steps,
            self.recent_loss(10),
            self.tokens,
            self.seconds
        )
    }
}
