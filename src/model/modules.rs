//! Module identities: the seven projection kinds of a decoder layer, a [`ModuleId`] naming one
//! projection in one layer, and [`ModuleSet`], the group type used for robustness analysis,
//! learning-rate groups, perturbation and freezing.
//!
//! One converter between the forms: `layers.3.self_attn.q_proj` (HF segment, also the serde
//! form) and the chart label `L3.q` both parse with [`std::str::FromStr`]; `Display` writes the
//! HF segment and [`ModuleId::label`] the short one.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

/// The projection kinds of a Llama-family decoder layer, in the order charts show them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModuleKind {
    /// `self_attn.q_proj`
    Q,
    /// `self_attn.k_proj`
    K,
    /// `self_attn.v_proj`
    V,
    /// `self_attn.o_proj`
    O,
    /// `mlp.gate_proj`
    Gate,
    /// `mlp.up_proj`
    Up,
    /// `mlp.down_proj`
    Down,
}

impl ModuleKind {
    /// All kinds: q, k, v, o, gate, up, down.
    pub const ALL: [ModuleKind; 7] = [
        ModuleKind::Q,
        ModuleKind::K,
        ModuleKind::V,
        ModuleKind::O,
        ModuleKind::Gate,
        ModuleKind::Up,
        ModuleKind::Down,
    ];

    /// Short name: `q`, `k`, `v`, `o`, `gate`, `up`, `down`.
    pub fn short(self) -> &'static str {
        match self {
            ModuleKind::Q => "q",
            ModuleKind::K => "k",
            ModuleKind::V => "v",
            ModuleKind::O => "o",
            ModuleKind::Gate => "gate",
            ModuleKind::Up => "up",
            ModuleKind::Down => "down",
        }
    }

    /// Hugging Face path segment inside a layer, e.g. `self_attn.q_proj`.
    ///
    /// ```
    /// use secure_tuning::model::ModuleKind;
    /// assert_eq!(ModuleKind::Down.hf_segment(), "mlp.down_proj");
    /// ```
    pub fn hf_segment(self) -> &'static str {
        match self {
            ModuleKind::Q => "self_attn.q_proj",
            ModuleKind::K => "self_attn.k_proj",
            ModuleKind::V => "self_attn.v_proj",
            ModuleKind::O => "self_attn.o_proj",
            ModuleKind::Gate => "mlp.gate_proj",
            ModuleKind::Up => "mlp.up_proj",
            ModuleKind::Down => "mlp.down_proj",
        }
    }

    /// The projection's own name, as PEFT's `target_modules` use it: `q_proj`, `down_proj`.
    ///
    /// ```
    /// assert_eq!(secure_tuning::model::ModuleKind::Down.projection(), "down_proj");
    /// ```
    pub fn projection(self) -> &'static str {
        self.hf_segment().rsplit('.').next().unwrap_or_default()
    }

    /// True for q, k, v and o.
    pub fn is_attention(self) -> bool {
        matches!(self, ModuleKind::Q | ModuleKind::K | ModuleKind::V | ModuleKind::O)
    }
}

impl fmt::Display for ModuleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short())
    }
}

impl FromStr for ModuleKind {
    type Err = Error;
    /// Accepts the short name (`q`, `gate`) or the HF projection name (`q_proj`, `mlp.gate_proj`).
    fn from_str(s: &str) -> Result<Self> {
        let s = s.rsplit('.').next().unwrap_or(s);
        let s = s.strip_suffix("_proj").unwrap_or(s);
        ModuleKind::ALL
            .into_iter()
            .find(|k| k.short() == s)
            .ok_or_else(|| Error::invalid("module kind", format!("`{s}`; expected one of q, k, v, o, gate, up, down")))
    }
}

/// One projection in one layer.
///
/// ```
/// use secure_tuning::model::{ModuleId, ModuleKind};
/// let m: ModuleId = "layers.3.self_attn.q_proj".parse().unwrap();
/// assert_eq!(m, ModuleId::new(3, ModuleKind::Q));
/// assert_eq!(m.label(), "L3.q");
/// assert_eq!("L3.q".parse::<ModuleId>().unwrap(), m);
/// assert_eq!(m.weight_name(), "model.layers.3.self_attn.q_proj.weight");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ModuleId {
    /// Layer index, from 0.
    pub layer: usize,
    /// Projection kind.
    pub kind: ModuleKind,
}

impl ModuleId {
    /// The module `kind` of layer `layer`.
    pub fn new(layer: usize, kind: ModuleKind) -> Self {
        ModuleId { layer, kind }
    }

    /// Chart label, e.g. `L3.q`.
    pub fn label(&self) -> String {
        format!("L{}.{}", self.layer, self.kind.short())
    }

    /// HF prefix of the module's parameters, e.g. `model.layers.3.self_attn.q_proj`.
    pub fn hf_prefix(&self) -> String {
        format!("model.{self}")
    }

    /// Full HF name of the weight matrix.
    pub fn weight_name(&self) -> String {
        format!("{}.weight", self.hf_prefix())
    }

    /// Full HF name of the bias vector (present only for some configs).
    pub fn bias_name(&self) -> String {
        format!("{}.bias", self.hf_prefix())
    }
}

impl fmt::Display for ModuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "layers.{}.{}", self.layer, self.kind.hf_segment())
    }
}

impl FromStr for ModuleId {
    type Err = Error;
    /// Accepts `layers.3.self_attn.q_proj`, `model.layers.3.mlp.up_proj(.weight)` and `L3.q`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::invalid(
                "module id",
                format!("`{s}`; expected `layers.N.self_attn.q_proj` or `LN.q` (kinds: q k v o gate up down)"),
            )
        };
        if let Some(rest) = s.strip_prefix('L') {
            let (layer, kind) = rest.split_once('.').ok_or_else(bad)?;
            return Ok(ModuleId::new(layer.parse().map_err(|_| bad())?, kind.parse().map_err(|_| bad())?));
        }
        let s = s.strip_prefix("model.").unwrap_or(s);
        let s = s.strip_suffix(".weight").or_else(|| s.strip_suffix(".bias")).unwrap_or(s);
        let rest = s.strip_prefix("layers.").ok_or_else(bad)?;
        let (layer, seg) = rest.split_once('.').ok_or_else(bad)?;
        let kind = ModuleKind::ALL.into_iter().find(|k| k.hf_segment() == seg).ok_or_else(bad)?;
        Ok(ModuleId::new(layer.parse().map_err(|_| bad())?, kind))
    }
}

impl Serialize for ModuleId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ModuleId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A set of modules: the unit of every group operation (LR groups, robustness, freezing).
///
/// ```
/// use secure_tuning::model::{ModuleSet, ModuleKind};
/// let attn = ModuleSet::attn(4);
/// assert_eq!(attn.len(), 16);
/// let mid_mlp = ModuleSet::mlp(4).intersect(&ModuleSet::layers(1..3));
/// assert_eq!(mid_mlp.len(), 6);
/// assert!(mid_mlp.iter().all(|m| !m.kind.is_attention()));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ModuleSet(BTreeSet<ModuleId>);

impl ModuleSet {
    /// The `modules` list of a JSON file: the `mods_robust.json` that `search --out` writes, a
    /// `search --json` output, or any object whose `modules` holds `"L3.q"` strings or
    /// `{"layer", "kind"}` objects.
    ///
    /// ```
    /// # use secure_tuning::prelude::ModuleSet;
    /// let path = std::env::temp_dir().join("secure-tuning-doc-modules.json");
    /// std::fs::write(&path, r#"{"modules": ["L1.q", {"layer": 2, "kind": "down"}]}"#).unwrap();
    /// assert_eq!(ModuleSet::read_json(&path).unwrap().len(), 2);
    /// ```
    pub fn read_json(path: &std::path::Path) -> Result<ModuleSet> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read { path: path.to_path_buf(), source })?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::malformed(path, format!("not JSON ({e})")))?;
        let items = json
            .get("modules")
            .and_then(|m| m.as_array())
            .ok_or_else(|| Error::malformed(path, "no `modules` list (expected `search --json` output)"))?;
        items
            .iter()
            .map(|item| match item {
                serde_json::Value::String(s) => s.parse::<ModuleId>(),
                obj => {
                    let layer = obj.get("layer").and_then(|l| l.as_u64());
                    let kind = obj.get("kind").and_then(|k| k.as_str());
                    match (layer, kind) {
                        (Some(l), Some(k)) => Ok(ModuleId::new(l as usize, k.parse::<ModuleKind>()?)),
                        _ => Err(Error::malformed(path, format!("module entry {obj} needs `layer` and `kind`"))),
                    }
                }
            })
            .collect()
    }

    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every module of a model with `num_layers` layers.
    pub fn all(num_layers: usize) -> Self {
        Self::kinds(num_layers, &ModuleKind::ALL)
    }

    /// The given kinds in every layer.
    pub fn kinds(num_layers: usize, kinds: &[ModuleKind]) -> Self {
        (0..num_layers).flat_map(|l| kinds.iter().map(move |&k| ModuleId::new(l, k))).collect()
    }

    /// q, k, v, o of every layer.
    pub fn attn(num_layers: usize) -> Self {
        Self::kinds(num_layers, &ModuleKind::ALL[..4])
    }

    /// gate, up, down of every layer.
    pub fn mlp(num_layers: usize) -> Self {
        Self::kinds(num_layers, &ModuleKind::ALL[4..])
    }

    /// Every kind in the given layers.
    pub fn layers(range: std::ops::Range<usize>) -> Self {
        range.flat_map(|l| ModuleKind::ALL.into_iter().map(move |k| ModuleId::new(l, k))).collect()
    }

    /// Adds one module; returns whether it was new.
    pub fn insert(&mut self, m: ModuleId) -> bool {
        self.0.insert(m)
    }

    /// Whether `m` is in the set.
    pub fn contains(&self, m: &ModuleId) -> bool {
        self.0.contains(m)
    }

    /// Number of modules.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Modules in (layer, kind) order.
    pub fn iter(&self) -> impl Iterator<Item = &ModuleId> {
        self.0.iter()
    }

    /// Modules in both sets.
    pub fn intersect(&self, other: &ModuleSet) -> ModuleSet {
        self.0.intersection(&other.0).copied().collect()
    }

    /// Modules in either set.
    pub fn union(&self, other: &ModuleSet) -> ModuleSet {
        self.0.union(&other.0).copied().collect()
    }

    /// Modules of `self` not in `other`.
    pub fn difference(&self, other: &ModuleSet) -> ModuleSet {
        self.0.difference(&other.0).copied().collect()
    }
}

impl FromIterator<ModuleId> for ModuleSet {
    fn from_iter<I: IntoIterator<Item = ModuleId>>(iter: I) -> Self {
        ModuleSet(iter.into_iter().collect())
    }
}

impl<'a> IntoIterator for &'a ModuleSet {
    type Item = &'a ModuleId;
    type IntoIter = std::collections::btree_set::Iter<'a, ModuleId>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_id_round_trips_through_every_form() {
        for l in [0, 7, 31] {
            for k in ModuleKind::ALL {
                let m = ModuleId::new(l, k);
                assert_eq!(m.to_string().parse::<ModuleId>().unwrap(), m);
                assert_eq!(m.label().parse::<ModuleId>().unwrap(), m);
                assert_eq!(m.weight_name().parse::<ModuleId>().unwrap(), m);
                let json = serde_json::to_string(&m).unwrap();
                assert_eq!(serde_json::from_str::<ModuleId>(&json).unwrap(), m);
            }
        }
    }

    #[test]
    fn bad_module_ids_are_errors_not_panics() {
        for s in ["", "L", "Lx.q", "L3.qq", "layers.3.attn.q", "layers.x.self_attn.q_proj"] {
            assert!(s.parse::<ModuleId>().is_err(), "{s}");
        }
    }

    #[test]
    fn set_algebra() {
        let all = ModuleSet::all(3);
        assert_eq!(all.len(), 21);
        assert_eq!(ModuleSet::attn(3).union(&ModuleSet::mlp(3)), all);
        assert_eq!(all.difference(&ModuleSet::attn(3)), ModuleSet::mlp(3));
    }
}
