//! Benchmarks from the Hugging Face hub: parquet-only dataset repos through the dataset
//! viewer's `/rows` API, files of Space repos through hf-hub's cache.

use super::formats::parse_jsonl;
use super::{Benchmark, HubSource, DATASETS_SERVER, DATASETS_SERVER_ENV};
use crate::data::Record;
use crate::error::{Error, Result};

pub(super) fn from_hub(b: Benchmark) -> Result<(Vec<Record>, String)> {
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
            let text = crate::fs::read_file(&path, "")?;
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
    fn viewer_rows_map_to_records() {
        let row = serde_json::json!({"prompt": "P", "target": "T", "category": "c"});
        let r = row_record(&row).unwrap();
        assert_eq!((r.instruction.as_str(), r.output.as_str(), r.category.as_str()), ("P", "T", "c"));
        assert!(row_record(&serde_json::json!({"n": 1})).is_none());
    }
}
