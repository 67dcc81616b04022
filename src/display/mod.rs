//! Inline display in Jupyter (evcxr kernel). A value displays by emitting one combined
//! `text/html` block and a `text/plain` fallback through `evcxr_runtime`; evcxr keeps only the
//! last block of each MIME type per cell, so every value emits exactly one of each.

mod chart;
mod heatmap;

pub use chart::{line_chart, Series};
pub use heatmap::{heatmap, Heatmap};

use crate::model::Model;

/// Escapes `&`, `<`, `>` and `"` for HTML text and attributes.
///
/// ```
/// assert_eq!(secure_tuning::display::escape_html("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
/// ```
pub fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Emits one HTML block and its plain-text fallback to the evcxr kernel.
pub fn emit(html: &str, plain: &str) {
    evcxr_runtime::mime_type("text/html").text(html);
    evcxr_runtime::mime_type("text/plain").text(plain);
}

impl Model {
    /// The HTML card shown in notebooks: the one-line summary and the shapes that matter.
    ///
    /// ```
    /// let model = secure_tuning::Model::load_dir("tests/fixtures/llama3").unwrap();
    /// assert!(model.html().contains("<td>num_key_value_heads</td><td>2</td>"));
    /// ```
    pub fn html(&self) -> String {
        let c = self.config();
        let rows = [
            ("source", escape_html(self.name())),
            ("hidden_size", c.hidden_size.to_string()),
            ("intermediate_size", c.intermediate_size.to_string()),
            ("num_attention_heads", c.num_heads.to_string()),
            ("num_key_value_heads", c.num_kv_heads.to_string()),
            ("vocab_size", c.vocab_size.to_string()),
            ("chat template", if self.tokenizer().has_own_template() { "own" } else { "fallback" }.to_string()),
        ];
        let table: String = rows.iter().map(|(k, v)| format!("<tr><td>{k}</td><td>{v}</td></tr>")).collect();
        format!("<div><b>{}</b><table>{table}</table></div>", escape_html(&self.to_string()))
    }

    /// Inline display in evcxr: the HTML card plus the one-line summary as text.
    pub fn evcxr_display(&self) {
        emit(&self.html(), &self.to_string());
    }
}

impl crate::eval::EvalReport {
    /// The rates as a table, with the kept sample responses underneath.
    pub fn html(&self) -> String {
        let mut rows = String::new();
        for (name, s) in [
            ("harmful refused (higher is safer)", &self.harmful),
            ("harmless refused (lower is better)", &self.harmless),
        ] {
            if let Some(s) = s {
                rows.push_str(&format!(
                    "<tr><td>{name}</td><td>{:.1}%</td><td>{}/{}</td></tr>",
                    100.0 * s.refusal_rate,
                    s.refused,
                    s.n
                ));
            }
        }
        if let Some(t) = &self.tasks {
            rows.push_str(&format!(
                "<tr><td>task accuracy</td><td>{:.1}%</td><td>{}/{}</td></tr>",
                100.0 * t.accuracy,
                t.correct,
                t.n
            ));
        }
        let samples: String = self
            .samples
            .iter()
            .map(|s| {
                format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                    if s.flag { "yes" } else { "no" },
                    escape_html(&s.prompt),
                    escape_html(&s.response)
                )
            })
            .collect();
        let samples = if samples.is_empty() {
            String::new()
        } else {
            format!("<table><tr><th>refused / correct</th><th>prompt</th><th>response</th></tr>{samples}</table>")
        };
        format!("<div><table>{rows}</table>{samples}</div>")
    }

    /// Inline display in evcxr.
    pub fn evcxr_display(&self) {
        emit(&self.html(), &self.to_string())
    }
}

impl crate::tune::TrainReport {
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

impl std::fmt::Display for crate::tune::TrainReport {
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

impl crate::reproduce::Reproduction {
    /// Inline display in evcxr: the summary table, the verdict and the trade-off chart.
    pub fn evcxr_display(&self) {
        let html =
            format!("<div>{}<p>{}</p>{}</div>", self.summary_html(), escape_html(&self.verdict), self.tradeoff_chart());
        emit(&html, &self.verdict)
    }
}

impl crate::probe::Drift {
    /// Inline display in evcxr (text only; it is one line of numbers).
    pub fn evcxr_display(&self) {
        let html = format!("<p>{}</p>", escape_html(&self.to_string()));
        emit(&html, &self.to_string())
    }
}

impl crate::tune::SafetyCurve {
    /// Harmful/harmless refusal and task accuracy against the step, as one chart.
    pub fn chart(&self) -> String {
        let pick = |f: fn(&crate::tune::CurvePoint) -> f64| self.points.iter().map(|p| (p.step as f64, f(p))).collect();
        let series = [
            Series { label: "harmful refused".into(), points: pick(|p| p.harmful_refusal) },
            Series { label: "harmless refused".into(), points: pick(|p| p.harmless_refusal) },
            Series { label: "task accuracy".into(), points: pick(|p| p.task_accuracy) },
        ];
        line_chart(&self.label, "fine-tuning step", "rate", &series, Some((0.0, 1.0)))
    }

    /// Inline display in evcxr: the chart and the last point as text.
    pub fn evcxr_display(&self) {
        let last = self.points.last().map_or(String::new(), |p| {
            format!(
                "{}: step {} harmful refused {:.2}, harmless refused {:.2}, task accuracy {:.2}",
                self.label, p.step, p.harmful_refusal, p.harmless_refusal, p.task_accuracy
            )
        });
        emit(&format!("<div>{}<p>{}</p></div>", self.chart(), escape_html(&last)), &last)
    }
}
