//! How a [`Reproduction`] shows itself: charts, the summary table, the HTML report, the files
//! of a run folder, and reading a finished run back.

use super::{Reproduction, Run, StrategyRow, Summary};
use crate::display::{emit, escape_html, line_chart, Series, Svg};
use crate::error::Result;
use crate::fs::write_atomic;
use crate::tune::{series, Metric, StrategyKind};
use std::path::Path;

impl Reproduction {
    /// Reads a `reproduction.json` that [`Reproduction::write`] wrote, e.g. a committed result to
    /// show again without rerunning it.
    ///
    /// ```
    /// use secure_tuning::experiment::Reproduction;
    /// let err = Reproduction::read_json("no/such/reproduction.json".as_ref()).unwrap_err();
    /// assert!(err.to_string().contains("no/such/reproduction.json"));
    /// ```
    pub fn read_json(path: &Path) -> Result<Self> {
        crate::fs::read_json(path, "a reproduction.json written by `secure-tuning reproduce`")
    }

    /// The headline numbers: one row per strategy and the verdict (`summary.json`, and what the
    /// CLI prints with `--json`).
    pub fn summary(&self) -> Summary {
        Summary { model: self.model.clone(), strategies: self.summary.clone(), verdict: self.verdict.clone() }
    }

    /// The row of a strategy.
    pub fn row(&self, name: &str) -> Option<&StrategyRow> {
        self.summary.iter().find(|r| r.name == name)
    }

    /// The trade-off chart: harmful-refusal rate against task accuracy along every run.
    pub fn tradeoff_chart(&self) -> Svg {
        let shown = [StrategyKind::Plain, StrategyKind::MlLr, StrategyKind::RandomSubset, StrategyKind::Swat];
        let runs: Vec<&Run> = self.runs.iter().filter(|r| shown.contains(&r.strategy)).collect();
        self.chart("Safety-utility trade-off along training", &runs, Metric::TaskAccuracy)
    }

    /// Harmful-refusal rate over training steps, one line per run.
    pub fn refusal_chart(&self) -> Svg {
        let runs: Vec<&Run> = self.runs.iter().collect();
        self.chart("Harmful-refusal rate during fine-tuning", &runs, Metric::Step)
    }

    /// The harmful-refusal rate of `runs` against `x`, one line per run.
    fn chart(&self, title: &str, runs: &[&Run], x: Metric) -> Svg {
        let lines: Vec<Series> =
            runs.iter().map(|r| series(&r.label(), &r.points, x, Metric::HarmfulRefusal)).collect();
        line_chart(title, x.title(), Metric::HarmfulRefusal.title(), &lines, Some((0.0, 1.0)))
    }

    /// The summary table as HTML.
    pub fn summary_html(&self) -> String {
        let rows: String = self
            .summary
            .iter()
            .map(|r| {
                format!(
                    "<tr><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.4}</td><td>{:.0}</td><td>{}</td><td>{:.2}</td></tr>",
                    r.name, r.harmful_refusal_rate, r.harmless_refusal_rate, r.task_accuracy, r.drift, r.train_seconds, r.runs, r.refusal_spread
                )
            })
            .collect();
        format!(
            "<table><tr><th>strategy</th><th>harmful refused</th><th>harmless refused</th><th>task accuracy</th>\
             <th>drift</th><th>train s</th><th>runs</th><th>refusal spread</th></tr>{rows}</table>"
        )
    }

    /// The whole report as one self-contained HTML page (inline SVG, no scripts).
    pub fn html(&self) -> String {
        format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>secure-tuning reproduction</title>\
             <style>body{{font-family:sans-serif;max-width:980px;margin:auto}}td,th{{padding:2px 8px;text-align:right}}</style>\
             </head><body><h1>secure-tuning reproduction</h1><p>{} &middot; {:.0}s</p>\
             <h2>Summary</h2>{}<p>{}</p>\
             <h2>F1, F6, F7: trade-off along training</h2>{}{}\
             <h2>F2: security feature classifier</h2>{}\
             <h2>F4: module robustness</h2>{}\
             <h2>F5: Mods_Robust</h2>{}</body></html>",
            escape_html(&self.model),
            self.seconds,
            self.summary_html(),
            escape_html(&self.verdict),
            self.tradeoff_chart(),
            self.refusal_chart(),
            self.probe.html(),
            self.robustness.html(),
            self.mods_robust.html()
        )
    }

    /// Writes `report.html`, the SVG charts, `summary.json` and `reproduction.json` into `dir`,
    /// as a whole ([`crate::fs::replace_dir`]): a previous report there is replaced only once the
    /// new one is complete.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let files: [(&str, Vec<u8>); 7] = [
            ("report.html", self.html().to_string().into_bytes()),
            ("tradeoff.svg", self.tradeoff_chart().to_string().into_bytes()),
            ("refusal.svg", self.refusal_chart().to_string().into_bytes()),
            ("probe_accuracy.svg", self.probe.chart().to_string().into_bytes()),
            ("robustness_heatmap.svg", self.robustness.heatmap().to_string().into_bytes()),
            ("summary.json", serde_json::to_vec_pretty(&self.summary()).expect("summary serialises")),
            ("reproduction.json", serde_json::to_vec_pretty(self).expect("reproduction serialises")),
        ];
        let names: Vec<&str> = files.iter().map(|(n, _)| *n).collect();
        crate::fs::replace_dir(dir, &names, |staging| {
            for (name, bytes) in &files {
                write_atomic(&staging.join(name), bytes)?;
            }
            Ok(())
        })
    }
}

impl Reproduction {
    /// Inline display in evcxr: the summary table, the verdict and the trade-off chart.
    pub fn evcxr_display(&self) {
        let html =
            format!("<div>{}<p>{}</p>{}</div>", self.summary_html(), escape_html(&self.verdict), self.tradeoff_chart());
        emit(&html, &self.verdict)
    }
}

impl std::fmt::Display for Summary {
    /// The strategy table and the verdict.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "strategy       harmful-refused  harmless-refused  task-accuracy  drift    train-s  runs")?;
        for row in &self.strategies {
            write!(
                f,
                "\n{:<14} {:>15.3}  {:>16.3}  {:>13.3}  {:>7.4}  {:>7.0}  {:>4}",
                row.name,
                row.harmful_refusal_rate,
                row.harmless_refusal_rate,
                row.task_accuracy,
                row.drift,
                row.train_seconds,
                row.runs
            )?;
        }
        write!(f, "\n{}", self.verdict)
    }
}
