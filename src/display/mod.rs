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
