//! Instruction data: the [`Record`] type, JSONL / JSON loading and saving, and the project's
//! own synthetic datasets ([`synthetic`]) that the embedded default model is built from.
//!
//! One record per JSONL line:
//! `{"instruction": ..., "input": optional, "output": ..., "category": ..., "split": ...}`.
//! AdvBench-style files with `goal` (and `target`) instead of `instruction` load too.
//!
//! Public benchmark sets (AdvBench, HarmBench, Do-Not-Answer, MT-Bench) load through
//! [`benchmarks`]; [`twins`] builds a harmless near-twin of a harmful request by word substitution.

pub mod benchmarks;
pub mod synthetic;
pub mod twins;

use crate::error::{Error, Result};
use crate::model::Message;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One instruction example.
///
/// ```
/// use secure_tuning::data::Record;
/// let r: Record = serde_json::from_str(r#"{"goal": "Do a bad thing", "target": "Sure"}"#).unwrap();
/// assert_eq!(r.instruction, "Do a bad thing");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The user's request (`goal` in AdvBench files).
    #[serde(alias = "goal", alias = "prompt")]
    pub instruction: String,
    /// Optional extra input appended to the instruction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// The reference response (empty for prompt-only sets).
    #[serde(default, alias = "target", alias = "response")]
    pub output: String,
    /// Task family or harm category.
    #[serde(default)]
    pub category: String,
    /// `train` or `eval`.
    #[serde(default)]
    pub split: String,
    /// Links a harmful request to its harmless twin (same id in both files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

impl Record {
    /// A record with the given instruction and output, no category or split.
    pub fn new(instruction: impl Into<String>, output: impl Into<String>) -> Self {
        Record {
            instruction: instruction.into(),
            input: None,
            output: output.into(),
            category: String::new(),
            split: String::new(),
            id: None,
        }
    }

    /// The user message: the instruction, then the input (if any) after a blank line.
    pub fn user_text(&self) -> String {
        match &self.input {
            Some(input) if !input.is_empty() => format!("{}\n\n{input}", self.instruction),
            _ => self.instruction.clone(),
        }
    }

    /// The conversation's user turn.
    pub fn messages(&self) -> Vec<Message> {
        vec![Message::user(self.user_text())]
    }
}

/// Reads records from a `.jsonl` file (one object per line; blank lines skipped), a `.json`
/// file holding an array of objects, or a `.csv` file with a header naming the fields.
/// Errors name the file and the line.
pub fn load_records(path: &Path) -> Result<Vec<Record>> {
    let text = crate::fs::read_file(path, "pass an existing JSONL, JSON or CSV file")?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let records = match ext {
        "json" => serde_json::from_str::<Vec<Record>>(&text)
            .map_err(|e| Error::malformed(path, format!("expected a JSON array of records ({e})")))?,
        "csv" => parse_csv(&text, path)?,
        _ => text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, line)| {
                serde_json::from_str::<Record>(line).map_err(|e| {
                    Error::malformed(
                        path,
                        format!("line {}: {e}; each line must be a JSON object with an `instruction` field", i + 1),
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?,
    };
    if records.is_empty() {
        return Err(Error::malformed(path, "holds no records"));
    }
    if let Some(i) = records.iter().position(|r| r.instruction.trim().is_empty()) {
        return Err(Error::malformed(path, format!("record {} has an empty instruction", i + 1)));
    }
    for (i, r) in records.iter().enumerate() {
        for (field, text) in [("instruction", &r.instruction), ("output", &r.output)] {
            let n = text.chars().count();
            if n > MAX_RECORD_CHARS {
                return Err(Error::malformed(
                    path,
                    format!(
                        "record {}: its {field} has {n} characters, more than the {MAX_RECORD_CHARS} a record may have",
                        i + 1
                    ),
                ));
            }
        }
    }
    Ok(records)
}

/// The longest instruction or output a record may have, in characters: far beyond any chat
/// request, and short enough that tokenising it cannot exhaust memory.
pub const MAX_RECORD_CHARS: usize = 100_000;

/// A minimal CSV reader (quoted fields with doubled quotes supported) for `instruction`/`goal`
/// and optional `output`/`target`, `category` columns.
fn parse_csv(text: &str, path: &Path) -> Result<Vec<Record>> {
    let rows = csv_rows(text).map_err(|why| Error::malformed(path, why))?;
    let header = rows.first().ok_or_else(|| Error::malformed(path, "empty CSV"))?;
    let col = |names: &[&str]| header.iter().position(|h| names.contains(&h.trim()));
    let ins = col(&["instruction", "goal", "prompt"])
        .ok_or_else(|| Error::malformed(path, "the CSV header needs an `instruction` (or `goal`) column"))?;
    let out = col(&["output", "target", "response"]);
    let cat = col(&["category"]);
    Ok(rows[1..]
        .iter()
        .filter(|r| r.iter().any(|f| !f.is_empty()))
        .map(|r| {
            let get = |i: Option<usize>| i.and_then(|i| r.get(i)).cloned().unwrap_or_default();
            Record { category: get(cat), ..Record::new(get(Some(ins)), get(out)) }
        })
        .collect())
}

/// Rows of a CSV text (quoted fields with doubled quotes and newlines supported); an error names
/// the line of a quote that is never closed.
pub(crate) fn csv_rows(text: &str) -> std::result::Result<Vec<Vec<String>>, String> {
    let (mut rows, mut row, mut field) = (Vec::new(), Vec::new(), String::new());
    let (mut quoted, mut chars) = (false, text.chars().peekable());
    let (mut line, mut quote_line) = (1, 0);
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', _) => {
                quoted = !quoted;
                quote_line = line;
            }
            (',', false) => row.push(std::mem::take(&mut field)),
            ('\n', false) => {
                row.push(std::mem::take(&mut field).trim_end_matches('\r').to_string());
                rows.push(std::mem::take(&mut row));
                line += 1;
            }
            ('\n', true) => {
                field.push(c);
                line += 1;
            }
            _ => field.push(c),
        }
    }
    if quoted {
        return Err(format!("the quote opened on line {quote_line} is never closed"));
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    Ok(rows)
}

/// Writes records as JSONL, atomically.
pub fn save_jsonl(records: &[Record], path: &Path) -> Result<()> {
    let mut out = String::new();
    for r in records {
        out.push_str(&serde_json::to_string(r).expect("records serialise"));
        out.push('\n');
    }
    if let Some(dir) = path.parent() {
        crate::fs::create_dir_all(dir)?;
    }
    crate::fs::write_atomic(path, out.as_bytes())
}

/// Copies of the records of one split (`train` or `eval`).
///
/// ```
/// use secure_tuning::data::{split, Record};
/// let rs = vec![Record { split: "eval".into(), ..Record::new("a", "b") }, Record::new("c", "d")];
/// assert_eq!(split(&rs, "eval").len(), 1);
/// ```
pub fn split(records: &[Record], name: &str) -> Vec<Record> {
    records.iter().filter(|r| r.split == name).cloned().collect()
}

/// Where the default model's datasets live (the crate's `data/` folder; see
/// [`crate::model::default_model_dir`] for the model itself).
///
/// ```
/// assert!(secure_tuning::data::default_data_dir().join("harmful.jsonl").exists());
/// ```
pub fn default_data_dir() -> PathBuf {
    crate::fs::data_home()
}

/// The file of a benign IFT set: `general` and `expertise` name the default model's sets in
/// `data_dir`; anything else is a path.
///
/// ```
/// use secure_tuning::data::{benign_set_path, default_data_dir};
/// let dir = default_data_dir();
/// assert_eq!(benign_set_path(&dir, "expertise"), dir.join("ift_expertise.jsonl"));
/// assert_eq!(benign_set_path(&dir, "my.jsonl"), std::path::PathBuf::from("my.jsonl"));
/// ```
pub fn benign_set_path(data_dir: &Path, name: &str) -> PathBuf {
    match name {
        "general" => data_dir.join("ift_general.jsonl"),
        "expertise" => data_dir.join("ift_expertise.jsonl"),
        file => PathBuf::from(file),
    }
}
