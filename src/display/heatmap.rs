//! A labelled heatmap as SVG, drawn with plotters' SVG backend (no font libraries), with one
//! transparent overlay per cell that carries its value as a tooltip (`<title>`).

use super::{escape_html, Svg};
use plotters::prelude::*;

/// What [`heatmap`] draws: `values[row][col]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Heatmap {
    /// Caption.
    pub title: String,
    /// Row labels, top to bottom.
    pub rows: Vec<String>,
    /// Column labels, left to right.
    pub cols: Vec<String>,
    /// Axis title of the rows.
    pub row_title: String,
    /// Axis title of the columns.
    pub col_title: String,
    /// The matrix.
    pub values: Vec<Vec<f64>>,
    /// Name of the value (tooltips and legend).
    pub value_name: String,
}

const CELL_MIN: i32 = 18;
const LEFT: i32 = 70;
const TOP: i32 = 44;
const BOTTOM: i32 = 50;
const LEGEND: i32 = 110;

/// Draws `map` as an SVG string: cells coloured on a sequential scale (logarithmic when the
/// values span more than a factor of 20), a colour legend, axis labels, and a tooltip
/// per cell.
///
/// ```
/// use secure_tuning::display::{heatmap, Heatmap};
/// let svg = heatmap(&Heatmap {
///     title: "demo".into(),
///     rows: vec!["q".into(), "k".into()],
///     cols: vec!["0".into(), "1".into(), "2".into()],
///     row_title: "module".into(),
///     col_title: "layer".into(),
///     values: vec![vec![1.0, 2.0, 3.0], vec![4.0, 5.0, 6.0]],
///     value_name: "score".into(),
/// });
/// assert_eq!(svg.as_str().matches("<title>").count(), 6);
/// ```
pub fn heatmap(map: &Heatmap) -> Svg {
    let (nr, nc) = (map.rows.len().max(1) as i32, map.cols.len().max(1) as i32);
    let cell_w = (560 / nc).clamp(CELL_MIN, 60);
    let cell_h = (300 / nr).clamp(CELL_MIN, 40);
    let (w, h) = (LEFT + nc * cell_w + LEGEND, TOP + nr * cell_h + BOTTOM);
    let scale = ColorScale::new(map.values.iter().flatten().copied());
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w as u32, h as u32)).into_drawing_area();
        let _ = draw(&root, map, &scale, cell_w, cell_h);
        let _ = root.present();
    }
    // Tooltips: transparent rectangles over the cells, appended last so they are on top.
    let mut tips = String::new();
    for (r, row) in map.values.iter().enumerate() {
        for (c, v) in row.iter().enumerate() {
            let label = format!(
                "{} {}, {} {}: {} = {v:.4}",
                map.row_title,
                map.rows.get(r).map_or("", |s| s.as_str()),
                map.col_title,
                map.cols.get(c).map_or("", |s| s.as_str()),
                map.value_name
            );
            tips.push_str(&format!(
                "<rect x=\"{}\" y=\"{}\" width=\"{cell_w}\" height=\"{cell_h}\" fill=\"white\" fill-opacity=\"0\">\
                 <title>{}</title></rect>\n",
                LEFT + c as i32 * cell_w,
                TOP + r as i32 * cell_h,
                escape_html(&label)
            ));
        }
    }
    match svg.rfind("</svg>") {
        Some(end) => svg.insert_str(end, &tips),
        None => svg.push_str(&tips),
    }
    Svg::new(svg)
}

fn draw(
    root: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    map: &Heatmap,
    scale: &ColorScale,
    cell_w: i32,
    cell_h: i32,
) -> Result<(), Box<dyn std::error::Error>> {
    root.fill(&WHITE)?;
    let font = ("sans-serif", 13).into_font();
    let centered = |f: FontDesc<'static>| {
        f.color(&BLACK).pos(plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Center,
            plotters::style::text_anchor::VPos::Center,
        ))
    };
    root.draw(&Text::new(map.title.clone(), (LEFT, 16), ("sans-serif", 15).into_font().color(&BLACK)))?;
    for (r, row) in map.values.iter().enumerate() {
        for (c, &v) in row.iter().enumerate() {
            let (x, y) = (LEFT + c as i32 * cell_w, TOP + r as i32 * cell_h);
            root.draw(&Rectangle::new([(x, y), (x + cell_w, y + cell_h)], scale.color(v).filled()))?;
        }
    }
    for (r, label) in map.rows.iter().enumerate() {
        let y = TOP + r as i32 * cell_h + cell_h / 2;
        root.draw(&Text::new(label.clone(), (LEFT - 24, y), centered(font.clone())))?;
    }
    let nc = map.cols.len() as i32;
    let stride = (nc / 16).max(1) as usize;
    let y_axis = TOP + map.rows.len() as i32 * cell_h;
    for (c, label) in map.cols.iter().enumerate().step_by(stride) {
        let x = LEFT + c as i32 * cell_w + cell_w / 2;
        root.draw(&Text::new(label.clone(), (x, y_axis + 12), centered(font.clone())))?;
    }
    root.draw(&Text::new(map.col_title.clone(), (LEFT + nc * cell_w / 2, y_axis + 34), centered(font.clone())))?;
    root.draw(&Text::new(map.row_title.clone(), (12, TOP - 12), font.clone().color(&BLACK)))?;
    // Legend: a vertical bar from the lowest (bottom) to the highest (top) value.
    let (lx, ly, lh) = (LEFT + nc * cell_w + 20, TOP, (map.rows.len() as i32 * cell_h).max(80));
    let steps = 40;
    for i in 0..steps {
        let t = 1.0 - (i as f64 + 0.5) / steps as f64;
        let y0 = ly + i * lh / steps;
        let y1 = ly + (i + 1) * lh / steps;
        root.draw(&Rectangle::new([(lx, y0), (lx + 14, y1)], scale.at(t).filled()))?;
    }
    let small = ("sans-serif", 11).into_font().color(&BLACK);
    root.draw(&Text::new(fmt_value(scale.hi), (lx + 18, ly + 4), small.clone()))?;
    root.draw(&Text::new(fmt_value(scale.value_at(0.5)), (lx + 18, ly + lh / 2), small.clone()))?;
    root.draw(&Text::new(fmt_value(scale.lo), (lx + 18, ly + lh - 4), small.clone()))?;
    let note = if scale.log { format!("{} (log)", map.value_name) } else { map.value_name.clone() };
    root.draw(&Text::new(note, (lx - 4, ly + lh + 16), small))?;
    Ok(())
}

fn fmt_value(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Maps values to a sequential palette (dark blue = low, yellow = high).
struct ColorScale {
    lo: f64,
    hi: f64,
    log: bool,
}

const PALETTE: [(f64, f64, f64); 5] =
    [(68.0, 1.0, 84.0), (59.0, 82.0, 139.0), (33.0, 145.0, 140.0), (94.0, 201.0, 98.0), (253.0, 231.0, 37.0)];

impl ColorScale {
    fn new(values: impl Iterator<Item = f64>) -> Self {
        let v: Vec<f64> = values.filter(|x| x.is_finite()).collect();
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let (lo, hi) = if lo.is_finite() && hi > lo { (lo, hi) } else { (0.0, 1.0) };
        // Scores often span orders of magnitude (a few fragile groups, many near zero): use a
        // log scale from the smallest positive value then; values at or below it get the bottom colour.
        let lo_pos = v.iter().copied().filter(|&x| x > 0.0).fold(f64::INFINITY, f64::min);
        if lo_pos.is_finite() && hi / lo_pos > 20.0 {
            ColorScale { lo: lo_pos, hi, log: true }
        } else {
            ColorScale { lo, hi, log: false }
        }
    }

    /// Position in [0, 1] of `v`.
    fn t(&self, v: f64) -> f64 {
        let t = if self.log {
            (v.max(self.lo).ln() - self.lo.ln()) / (self.hi.ln() - self.lo.ln())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        };
        if t.is_finite() {
            t.clamp(0.0, 1.0)
        } else {
            0.0
        }
    }

    fn value_at(&self, t: f64) -> f64 {
        if self.log {
            (self.lo.ln() + t * (self.hi.ln() - self.lo.ln())).exp()
        } else {
            self.lo + t * (self.hi - self.lo)
        }
    }

    fn color(&self, v: f64) -> RGBColor {
        if !v.is_finite() {
            return RGBColor(200, 200, 200);
        }
        self.at(self.t(v))
    }

    fn at(&self, t: f64) -> RGBColor {
        let x = t * (PALETTE.len() - 1) as f64;
        let i = (x.floor() as usize).min(PALETTE.len() - 2);
        let f = x - i as f64;
        let (a, b) = (PALETTE[i], PALETTE[i + 1]);
        let mix = |p: f64, q: f64| (p + (q - p) * f).round() as u8;
        RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
    }
}
