//! The presentation toolkit every result type uses to show itself: SVG line charts and
//! heatmaps ([`Svg`] values that render inline in a notebook and save to files), HTML escaping,
//! and [`emit`], the one way a value reaches the notebook. Each result type owns its own
//! `Display`, `html()` and `evcxr_display` in its own module; this module knows none of them.
//!
//! In Jupyter (evcxr kernel) a value displays by emitting one combined `text/html` block and a
//! `text/plain` fallback; evcxr keeps only the last block of each MIME type per cell, so every
//! value emits exactly one of each.

mod chart;
mod heatmap;

pub use chart::{line_chart, Series};
pub use heatmap::{heatmap, Heatmap};

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

/// An SVG image: it renders inline when it is a notebook cell's value, saves to a file, and
/// reads as markup (`to_string`, [`Svg::as_str`], or bytes for `std::fs::write`).
///
/// ```
/// use secure_tuning::display::{line_chart, Series};
/// let svg = line_chart("t", "x", "y", &[Series { label: "a".into(), points: vec![(0.0, 1.0)] }], None);
/// let dir = tempfile::tempdir()?;
/// svg.save(&dir.path().join("a.svg"))?;
/// std::fs::write(dir.path().join("b.svg"), &svg)?;
/// assert!(svg.to_string().starts_with("<svg"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Svg(String);

impl Svg {
    /// Wraps SVG markup.
    pub fn new(markup: String) -> Self {
        Svg(markup)
    }

    /// The markup.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Writes the image to `path` (atomically).
    pub fn save(&self, path: &std::path::Path) -> crate::Result<()> {
        crate::fs::write_atomic(path, self.0.as_bytes())
    }

    /// Inline display in evcxr.
    pub fn evcxr_display(&self) {
        emit(&self.0, "[chart]");
    }
}

impl std::fmt::Display for Svg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<[u8]> for Svg {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}
