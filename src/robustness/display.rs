//! How a robustness matrix shows itself: the heatmap, an HTML table and a text table.

use super::{group_label, Mode, Normalize, Robustness};
use crate::display::{emit, escape_html, heatmap, Heatmap, Svg};

impl Robustness {
    /// Writes `robustness.json` (what `search --from` reads) and `robustness_heatmap.svg` into `dir`.
    pub fn write(&self, dir: &std::path::Path) -> crate::Result<()> {
        crate::fs::create_dir_all(dir)?;
        crate::fs::write_json(&dir.join("robustness.json"), self)?;
        self.heatmap().save(&dir.join("robustness_heatmap.svg"))
    }

    /// Reads a `robustness.json` that [`Robustness::write`] wrote.
    pub fn read_json(path: &std::path::Path) -> crate::Result<Self> {
        crate::fs::read_json(path, "a robustness.json written by `secure-tuning robustness --out`")
    }

    /// The heatmap (kinds x layer groups) as SVG; every cell has its value in a tooltip.
    pub fn heatmap(&self) -> Svg {
        heatmap(&Heatmap {
            title: format!("Module sensitivity ({} mode, {}); low = robust", self.config.mode, self.damage_name()),
            rows: self.kinds.iter().map(|k| k.short().to_string()).collect(),
            cols: self.layer_groups.iter().map(|&g| group_label(g)).collect(),
            row_title: "module".into(),
            col_title: "layer".into(),
            values: self.scores.clone(),
            value_name: "sensitivity".into(),
        })
    }

    fn damage_name(&self) -> String {
        match self.config.mode {
            Mode::Adversarial => "probe crossing".to_string(),
            _ if self.config.normalize == Normalize::TaskGain => format!("{} per task gain", self.config.measure),
            _ => self.config.measure.to_string(),
        }
    }

    /// Heatmap plus a table, as one HTML block.
    pub fn html(&self) -> String {
        let head: String = self.layer_groups.iter().map(|&g| format!("<th>{}</th>", group_label(g))).collect();
        let rows: String = self
            .kinds
            .iter()
            .zip(&self.scores)
            .map(|(k, row)| {
                let cells: String = row.iter().map(|v| format!("<td>{v:.3}</td>")).collect();
                format!("<tr><th>{}</th>{cells}</tr>", k.short())
            })
            .collect();
        let stability =
            self.seed_agreement().map_or(String::new(), |s| format!(" &middot; seed agreement (Spearman) {s:.2}"));
        format!(
            "<div>{}<p>{} &middot; {} mode, {} &middot; {} seed(s), {:.0}s{stability}</p>\
             <table><tr><th>module</th>{head}</tr>{rows}</table></div>",
            self.heatmap(),
            escape_html(&self.model),
            self.config.mode,
            escape_html(&self.damage_name()),
            self.config.seeds.len(),
            self.seconds
        )
    }

    /// Inline display in evcxr: heatmap + table, with a text summary.
    pub fn evcxr_display(&self) {
        emit(&self.html(), &self.to_string())
    }
}

impl std::fmt::Display for Robustness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "sensitivity ({} mode, {}; low = robust)", self.config.mode, self.damage_name())?;
        write!(f, "{:>6}", "")?;
        for &g in &self.layer_groups {
            write!(f, " {:>8}", group_label(g))?;
        }
        for (k, row) in self.kinds.iter().zip(&self.scores) {
            write!(f, "\n{:>6}", k.short())?;
            for v in row {
                write!(f, " {v:>8.3}")?;
            }
        }
        if let Some(s) = self.seed_agreement() {
            write!(f, "\nseed agreement (Spearman): {s:.2}")?;
        }
        Ok(())
    }
}
