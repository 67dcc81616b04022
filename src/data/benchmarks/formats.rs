//! The file formats benchmarks ship in: pyrit's seed-prompt YAML, plain text (one request a
//! line), JSONL (this crate's records or FastChat's MT-Bench questions) and the original CSVs.

use super::Benchmark;
use crate::data::Record;
use crate::error::{Error, Result};
use std::path::Path;

/// Parses a benchmark file by its extension (and, for JSONL, its fields).
pub(super) fn parse_file(b: Benchmark, path: &Path) -> Result<Vec<Record>> {
    let text = crate::fs::read_file(path, "pass an existing benchmark file")?;
    parse_text(b, &text, path, path)
}

pub(super) fn parse_text(b: Benchmark, text: &str, origin: &Path, name: &Path) -> Result<Vec<Record>> {
    let ext = name.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let records = match ext.as_str() {
        "prompt" | "yaml" | "yml" => parse_seed_prompts(text, origin)?,
        "txt" => text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|l| Record { category: b.name().to_string(), ..Record::new(l, "") })
            .collect(),
        "csv" => parse_benchmark_csv(b, text, origin)?,
        "json" => serde_json::from_str::<Vec<Record>>(text)
            .map_err(|e| Error::malformed(origin, format!("expected a JSON array of records ({e})")))?,
        _ => parse_jsonl(text, origin)?,
    };
    if records.is_empty() {
        return Err(Error::malformed(origin, format!("holds no {} records", b.name())));
    }
    if let Some(i) = records.iter().position(|r| r.instruction.trim().is_empty()) {
        return Err(Error::malformed(origin, format!("record {} has an empty instruction", i + 1)));
    }
    Ok(records)
}

/// One JSON object per line: this crate's records (`instruction` / `goal` / `prompt`), or
/// FastChat's MT-Bench questions (`question_id`, `category`, `turns`, optional `reference`).
pub(super) fn parse_jsonl(text: &str, origin: &Path) -> Result<Vec<Record>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            let bad = |e: String| Error::malformed(origin, format!("line {}: {e}", i + 1));
            let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(format!("not JSON ({e})")))?;
            if let Some(turns) = v.get("turns").and_then(|t| t.as_array()) {
                let first = turns.first().and_then(|t| t.as_str()).ok_or_else(|| bad("`turns` is empty".into()))?;
                let reference = v.get("reference").and_then(|r| r.as_array()?.first()?.as_str()).unwrap_or("");
                let category = v.get("category").and_then(|c| c.as_str()).unwrap_or("").to_string();
                let id = v.get("question_id").map(|q| q.to_string().trim_matches('"').to_string());
                return Ok(Record { category, id, ..Record::new(first, reference) });
            }
            serde_json::from_value::<Record>(v)
                .map_err(|e| bad(format!("{e}; expected an `instruction` (or `goal`, `prompt`) or a `turns` field")))
        })
        .collect()
}

/// A CSV with a header: this crate's columns, AdvBench's `goal,target`, HarmBench's `Behavior`
/// (with `SemanticCategory`; only `FunctionalCategory == standard` rows when that column
/// exists) or Do-Not-Answer's `question` (with `risk_area`).
fn parse_benchmark_csv(b: Benchmark, text: &str, origin: &Path) -> Result<Vec<Record>> {
    let rows = crate::data::csv_rows(text).map_err(|why| Error::malformed(origin, why))?;
    let header = rows.first().ok_or_else(|| Error::malformed(origin, "empty CSV"))?;
    let col = |names: &[&str]| header.iter().position(|h| names.iter().any(|n| h.trim().eq_ignore_ascii_case(n)));
    let text_col = col(&["instruction", "goal", "prompt", "behavior", "question"]).ok_or_else(|| {
        Error::malformed(origin, "the CSV header needs one of `instruction`, `goal`, `prompt`, `Behavior`, `question`")
    })?;
    let out_col = col(&["output", "target", "response"]);
    let cat_col = col(&["category", "semanticcategory", "risk_area"]);
    let functional = col(&["functionalcategory"]);
    let get = |r: &Vec<String>, i: Option<usize>| i.and_then(|i| r.get(i)).cloned().unwrap_or_default();
    Ok(rows[1..]
        .iter()
        .filter(|r| r.iter().any(|f| !f.is_empty()))
        .filter(|r| b != Benchmark::HarmBench || functional.is_none() || get(r, functional) == "standard")
        .map(|r| Record { category: get(r, cat_col), ..Record::new(get(r, Some(text_col)), get(r, out_col)) })
        .collect())
}

/// pyrit's seed-prompt YAML: a `seeds:` list whose items hold `value:` (the prompt) and
/// `harm_categories:` (a list; the first becomes the record's category). Plain, single- and
/// double-quoted scalars are read, with plain scalars continued on more-indented lines.
fn parse_seed_prompts(text: &str, origin: &Path) -> Result<Vec<Record>> {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim_end() == "seeds:")
        .ok_or_else(|| Error::malformed(origin, "no `seeds:` list; expected pyrit's seed-prompt YAML"))?;
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut records: Vec<Record> = Vec::new();
    let mut i = start + 1;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            i += 1;
            continue;
        }
        if indent(line) == 0 && !trimmed.starts_with('-') {
            break; // the next top-level key
        }
        // An item starts with `- key: ...` at the list's indent; later keys are more indented.
        let (key_line, new_item) = match trimmed.strip_prefix("- ") {
            Some(rest) if indent(line) == 0 => (rest, true),
            _ => (trimmed, false),
        };
        if new_item {
            records.push(Record::new("", ""));
        }
        let key_indent = if new_item { 2 } else { indent(line) };
        let Some((key, value)) = key_line.split_once(':') else {
            i += 1;
            continue;
        };
        let record = records.last_mut().ok_or_else(|| Error::malformed(origin, "a key before the first seed"))?;
        match key.trim() {
            "value" => {
                let (v, next) = yaml_scalar(&lines, i, value.trim(), key_indent)
                    .map_err(|e| Error::malformed(origin, format!("line {}: {e}", i + 1)))?;
                record.instruction = v;
                i = next;
                continue;
            }
            "harm_categories" => {
                let mut j = i + 1;
                while j < lines.len() && lines[j].trim_start().starts_with("- ") && indent(lines[j]) >= key_indent {
                    if record.category.is_empty() {
                        record.category = lines[j].trim_start()[2..].trim().trim_matches(['\'', '"']).to_string();
                    }
                    j += 1;
                }
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    Ok(records)
}

/// One YAML scalar starting on line `i` after `key:`; returns it and the next line to read.
fn yaml_scalar(
    lines: &[&str],
    i: usize,
    first: &str,
    key_indent: usize,
) -> std::result::Result<(String, usize), String> {
    let quote = first.chars().next().filter(|c| *c == '\'' || *c == '"');
    if first.starts_with('|') || first.starts_with('>') {
        return Err("block scalars (`|`, `>`) are not supported here".into());
    }
    let mut text = first.to_string();
    let mut next = i + 1;
    // Gather continuation lines: more indented than the key, until the scalar is complete.
    let continues = |l: &str| l.len() - l.trim_start().len() > key_indent || l.trim().is_empty();
    match quote {
        Some(q) => {
            while !quoted_complete(&text, q) {
                let Some(l) = lines.get(next) else { return Err("an unterminated quoted scalar".into()) };
                text.push(' ');
                text.push_str(l.trim());
                next += 1;
            }
            let inner = &text[1..text.rfind(q).unwrap_or(text.len())];
            let v = if q == '\'' { inner.replace("''", "'") } else { unescape_double(inner)? };
            Ok((v, next))
        }
        None => {
            while let Some(l) = lines.get(next) {
                let t = l.trim();
                if t.is_empty() || !continues(l) || t.starts_with("- ") || t.contains(": ") || t.ends_with(':') {
                    break;
                }
                text.push(' ');
                text.push_str(t);
                next += 1;
            }
            let v = match text.find(" #") {
                Some(k) => text[..k].trim_end().to_string(),
                None => text,
            };
            Ok((v, next))
        }
    }
}

fn quoted_complete(text: &str, q: char) -> bool {
    let body: Vec<char> = text.chars().skip(1).collect();
    let mut k = 0;
    while k < body.len() {
        match (q, body[k]) {
            ('\'', '\'') if body.get(k + 1) == Some(&'\'') => k += 2,
            ('"', '\\') => k += 2,
            (_, c) if c == q => return true,
            _ => k += 1,
        }
    }
    false
}

fn unescape_double(s: &str) -> std::result::Result<String, String> {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('"') => out.push('"'),
            Some('\\') => out.push('\\'),
            Some('/') => out.push('/'),
            Some(other) => return Err(format!("the escape `\\{other}` is not supported")),
            None => return Err("a trailing backslash".into()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_yaml_reads_values_and_first_categories() {
        let yaml = "dataset_name: x\ndescription: 'a\n  b'\nseeds:\n- value: Do the first thing\n  data_type: text\n  \
                    harm_categories:\n  - Cat A\n  - Cat B\n- value: 'It''s quoted: yes'\n  harm_categories:\n  - Cat C\n\
                    - value: A plain value\n    continued here # comment\n  data_type: text\nother: 1\n";
        let r = parse_seed_prompts(yaml, Path::new("x.prompt")).unwrap();
        let got: Vec<(&str, &str)> = r.iter().map(|r| (r.instruction.as_str(), r.category.as_str())).collect();
        assert_eq!(
            got,
            [("Do the first thing", "Cat A"), ("It's quoted: yes", "Cat C"), ("A plain value continued here", "")]
        );
    }

    #[test]
    fn mt_bench_lines_keep_first_turn_reference_and_id() {
        let line = r#"{"question_id": 101, "category": "math", "turns": ["Q1", "Q2"], "reference": ["R1", "R2"]}"#;
        let r = parse_jsonl(line, Path::new("q.jsonl")).unwrap();
        assert_eq!((r[0].instruction.as_str(), r[0].output.as_str()), ("Q1", "R1"));
        assert_eq!((r[0].category.as_str(), r[0].id.as_deref()), ("math", Some("101")));
    }

    #[test]
    fn harmbench_csv_keeps_only_standard_behaviours() {
        let csv = "Behavior,FunctionalCategory,SemanticCategory,BehaviorID\nA,standard,chemical,a\nB,contextual,x,b\n";
        let r = parse_benchmark_csv(Benchmark::HarmBench, csv, Path::new("h.csv")).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].instruction.as_str(), r[0].category.as_str()), ("A", "chemical"));
    }
}
