//! Harmless near-twins of harmful requests, by word substitution: the way Du et al. built the
//! data of their security feature classifier from AdvBench (swap the few words that make a
//! request harmful, keep the rest of the sentence).
//!
//! [`LEXICON`] maps harmful words and phrases to benign ones. [`harmless_twin`] replaces every
//! match, longest phrase first, whole words only, keeping an initial capital; [`check_twin`]
//! then requires that the twin differs from its source in at least one and at most a third of
//! the words ([`max_twin_edits`], never fewer than 2), measured as a word-level edit distance
//! ([`word_edits`]). A request with no lexicon word gets no twin rather than a copy.
//!
//! Coverage (see `docs/real-models.md`): the lexicon was written while reading AdvBench, so it
//! covers all 520 of its behaviours; on HarmBench, which it was not written for, about half.
//! The twins are meant as classifier contrast data, not as fluent prose: a twin may read oddly
//! ("a newsletter email that teaches people ...") while still being a harmless request.
//!
//! ```
//! use secure_tuning::data::twins::{harmless_twin, word_edits};
//! let twin = harmless_twin("Explain how to make a bomb at home").unwrap();
//! assert_eq!(twin, "Explain how to make a cake at home");
//! assert_eq!(word_edits("Explain how to make a bomb at home", &twin), 1);
//! assert!(harmless_twin("Tell me about the weather").is_none());
//! ```

use super::Record;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Harmful word or phrase (lower case, words separated by single spaces) → benign replacement.
/// Inflections are listed separately; phrases take precedence over their words
/// ("commit suicide" over "commit"), so a verb and its object are never both flipped into
/// nonsense.
pub const LEXICON: &[(&str, &str)] = &[
    // Phrases whose parts would flip badly one by one.
    ("commit suicide", "practice self-care"),
    ("commit violence", "prevent violence"),
    ("commit fraud", "prevent fraud"),
    ("commit identity theft", "prevent identity theft"),
    ("commit theft", "prevent theft"),
    ("without getting caught", "without getting lost"),
    ("without their consent", "with their consent"),
    ("without user consent", "with user consent"),
    ("without consent", "with consent"),
    ("have not even used", "have used"),
    ("have not used", "have used"),
    ("unwanted and unsolicited", "welcome and requested"),
    ("interfere with", "improve"),
    ("pick a lock", "change a lock"),
    ("break into", "walk into"),
    ("spy on", "deliver food to"),
    ("hate speech", "kind speech"),
    ("fake news", "local news"),
    ("false information", "accurate information"),
    ("conspiracy theories", "scientific theories"),
    ("conspiracy theory", "scientific theory"),
    ("money laundering", "money saving"),
    ("launder money", "save money"),
    ("illegal drugs", "vitamin supplements"),
    ("eating disorders", "healthy diets"),
    ("eating disorder", "healthy diet"),
    ("explosive devices", "kitchen timers"),
    ("explosive device", "kitchen timer"),
    // Computer misuse.
    ("hack into", "log into"),
    ("hacks into", "logs into"),
    ("hacking into", "logging into"),
    ("hack", "secure"),
    ("hacks", "secures"),
    ("hacking", "securing"),
    ("hacked", "secured"),
    ("hacker", "administrator"),
    ("hackers", "administrators"),
    ("virus", "backup"),
    ("viruses", "backups"),
    ("malware", "antivirus software"),
    ("ransomware", "backup software"),
    ("exploit", "patch"),
    ("exploits", "patches"),
    ("exploiting", "patching"),
    ("exploitation", "support"),
    ("infect", "protect"),
    ("crack", "reset"),
    ("hijack", "repair"),
    ("bypass", "strengthen"),
    ("circumvent", "respect"),
    ("cyberattack", "security audit"),
    ("crash", "restart"),
    ("deletes", "backs up"),
    ("phishing", "newsletter"),
    ("spam", "newsletters"),
    ("pirated", "licensed"),
    ("pirate", "license"),
    // Theft, fraud and deception.
    ("steal", "protect"),
    ("steals", "protects"),
    ("stealing", "protecting"),
    ("stole", "protected"),
    ("stolen", "protected"),
    ("theft", "protection"),
    ("rob", "visit"),
    ("harvest", "protect"),
    ("harvests", "protects"),
    ("divulging", "protecting"),
    ("commit", "prevent"),
    ("commits", "prevents"),
    ("committing", "preventing"),
    ("fraudulent", "legitimate"),
    ("scam", "offer"),
    ("scams", "offers"),
    ("counterfeit", "authentic"),
    ("counterfeiting", "saving"),
    ("falsify", "organize"),
    ("fake", "real"),
    ("trick", "teach"),
    ("tricks", "teaches"),
    ("manipulate", "understand"),
    ("manipulates", "understands"),
    ("manipulating", "understanding"),
    ("manipulation", "understanding"),
    ("mislead", "inform"),
    ("misleads", "informs"),
    ("misleading", "informative"),
    ("misinformation", "facts"),
    ("propaganda", "education"),
    ("hoax", "challenge"),
    ("spread", "share"),
    ("spreads", "shares"),
    ("spreading", "sharing"),
    ("blackmail", "thank"),
    ("extort", "thank"),
    ("bribe", "tip"),
    ("evade", "assist"),
    ("evading", "assisting"),
    ("concealing", "reporting"),
    ("cheat", "study"),
    ("cheating", "studying"),
    ("secretly", "openly"),
    ("unsuspecting", "willing"),
    ("illegal", "legal"),
    ("illegally", "legally"),
    // Violence and weapons.
    ("bomb", "cake"),
    ("bombs", "cakes"),
    ("explosive", "edible"),
    ("explosives", "desserts"),
    ("weapon", "tool"),
    ("weapons", "tools"),
    ("firearm", "camera"),
    ("firearms", "cameras"),
    ("gun", "camera"),
    ("guns", "cameras"),
    ("poison", "feed"),
    ("poisoning", "feeding"),
    ("kill", "help"),
    ("kills", "helps"),
    ("killing", "helping"),
    ("killed", "praised"),
    ("murder", "meet"),
    ("harm", "help"),
    ("harms", "helps"),
    ("harmed", "helped"),
    ("harming", "helping"),
    ("harmful", "helpful"),
    ("attack", "audit"),
    ("attacks", "audits"),
    ("assault", "greet"),
    ("torture", "comfort"),
    ("kidnap", "visit"),
    ("molest", "protect"),
    ("abuse", "support"),
    ("violence", "kindness"),
    ("violent", "peaceful"),
    ("terrorist", "volunteer"),
    ("terrorists", "volunteers"),
    ("terrorism", "volunteering"),
    ("radicalization", "education"),
    ("hit-and-run", "car wash"),
    ("dangerous", "safe"),
    ("deadly", "healthy"),
    ("lethal", "safe"),
    ("reckless", "safe"),
    ("destroy", "restore"),
    ("damage", "repair"),
    ("sabotage", "support"),
    ("sabotaging", "supporting"),
    ("vandalize", "clean"),
    ("disrupt", "improve"),
    ("disrupting", "improving"),
    ("chaos", "joy"),
    ("ruin", "boost"),
    ("smuggle", "ship"),
    ("trafficking", "protecting"),
    ("infiltrate", "tour"),
    ("trespass", "knock"),
    ("escape", "graduate"),
    ("incite", "calm"),
    ("incites", "calms"),
    ("inciting", "calming"),
    ("glorifies", "discourages"),
    // Harassment, hate and exclusion.
    ("harass", "encourage"),
    ("harasses", "encourages"),
    ("harassment", "encouragement"),
    ("cyberbully", "befriend"),
    ("cyberbullies", "befriends"),
    ("cyberbullying", "online kindness"),
    ("bully", "mentor"),
    ("stalk", "congratulate"),
    ("cyberstalk", "compliment"),
    ("spies", "checks"),
    ("threatening", "encouraging"),
    ("insult", "compliment"),
    ("hate", "love"),
    ("hatred", "respect"),
    ("racism", "equality"),
    ("racist", "inclusive"),
    ("sexist", "inclusive"),
    ("discrimination", "inclusion"),
    ("inferior", "equal"),
    ("oppression", "celebration"),
    ("dehumanization", "appreciation"),
    ("inflammatory", "supportive"),
    ("malicious", "helpful"),
    ("denies", "grants"),
    ("deny", "grant"),
    // Self-harm, drugs and sexual exploitation.
    ("self-harm", "self-care"),
    ("suicide", "wellness"),
    ("anorexia", "healthy eating"),
    ("bulimia", "balanced eating"),
    ("drugs", "vitamins"),
    ("drug", "vitamin"),
    ("pornography", "poetry"),
    ("sexual", "friendly"),
    ("solicit", "decline"),
    ("groom", "welcome"),
];

/// Splits text into word tokens (letters, digits, inner `'` and `-`) and the separators
/// between them, so that joining the pieces gives the text back.
fn pieces(text: &str) -> Vec<(&str, bool)> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    // A char belongs to a word if it is alphanumeric, or an inner `'` / `-` between two.
    let in_word = |k: usize| {
        let c = chars[k].1;
        c.is_alphanumeric()
            || ((c == '\'' || c == '-')
                && k > 0
                && chars[k - 1].1.is_alphanumeric()
                && chars.get(k + 1).is_some_and(|(_, n)| n.is_alphanumeric()))
    };
    let mut out = Vec::new();
    let mut start = 0;
    for k in 0..chars.len() {
        if k > 0 && in_word(k) != in_word(k - 1) {
            out.push((&text[chars[start].0..chars[k].0], in_word(k - 1)));
            start = k;
        }
    }
    if !chars.is_empty() {
        out.push((&text[chars[start].0..], in_word(chars.len() - 1)));
    }
    out
}

/// The lexicon as word lists, longest phrase first (stable within a length).
fn entries() -> Vec<(Vec<&'static str>, &'static str)> {
    let mut e: Vec<(Vec<&str>, &str)> = LEXICON.iter().map(|(k, v)| (k.split(' ').collect(), *v)).collect();
    e.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
    e
}

/// The harmless twin of `text` (every [`LEXICON`] match replaced), or `None` when no lexicon
/// word occurs in it.
///
/// ```
/// use secure_tuning::data::twins::harmless_twin;
/// assert_eq!(harmless_twin("Hack into a server").unwrap(), "Log into a server");
/// assert_eq!(harmless_twin("How to commit suicide?").unwrap(), "How to practice self-care?");
/// ```
pub fn harmless_twin(text: &str) -> Option<String> {
    let ps = pieces(text);
    let entries = entries();
    let mut out = String::with_capacity(text.len());
    let mut changed = false;
    let mut i = 0;
    'outer: while i < ps.len() {
        let (piece, is_word) = ps[i];
        if is_word {
            for (words, replacement) in &entries {
                if let Some(end) = match_at(&ps, i, words) {
                    let first_upper = piece.chars().next().is_some_and(char::is_uppercase);
                    if first_upper {
                        let mut cs = replacement.chars();
                        out.extend(cs.next().map(|c| c.to_ascii_uppercase()));
                        out.push_str(cs.as_str());
                    } else {
                        out.push_str(replacement);
                    }
                    changed = true;
                    i = end;
                    continue 'outer;
                }
            }
        }
        out.push_str(piece);
        i += 1;
    }
    changed.then_some(out)
}

/// If the words of `phrase` occur at piece `i` (separated by whitespace only), the index of the
/// piece after the match.
fn match_at(ps: &[(&str, bool)], i: usize, phrase: &[&str]) -> Option<usize> {
    let mut j = i;
    for (k, word) in phrase.iter().enumerate() {
        let (piece, is_word) = ps.get(j)?;
        if !is_word || !piece.eq_ignore_ascii_case(word) {
            return None;
        }
        if k + 1 < phrase.len() {
            let (sep, _) = ps.get(j + 1)?;
            if !sep.chars().all(char::is_whitespace) {
                return None;
            }
            j += 2;
        }
    }
    Some(j + 1)
}

/// Word-level edit distance (insertions, deletions, substitutions of whole words, compared
/// case-insensitively, punctuation attached to words as written).
///
/// ```
/// use secure_tuning::data::twins::word_edits;
/// assert_eq!(word_edits("make a bomb now", "make a cake now"), 1);
/// assert_eq!(word_edits("write malware", "write antivirus software"), 2);
/// ```
pub fn word_edits(a: &str, b: &str) -> usize {
    let a: Vec<String> = a.split_whitespace().map(str::to_lowercase).collect();
    let b: Vec<String> = b.split_whitespace().map(str::to_lowercase).collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, wa) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, wb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(wa != wb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The most word edits a twin of a `words`-word request may have: a third of the words,
/// rounded up, and never fewer than 2.
///
/// ```
/// assert_eq!(secure_tuning::data::twins::max_twin_edits(12), 4);
/// assert_eq!(secure_tuning::data::twins::max_twin_edits(3), 2);
/// ```
pub fn max_twin_edits(words: usize) -> usize {
    words.div_ceil(3).max(2)
}

/// Checks that `twin` differs from `source` in a few words only (1 to [`max_twin_edits`]);
/// returns the number of word edits.
///
/// ```
/// use secure_tuning::data::twins::check_twin;
/// assert_eq!(check_twin("make a bomb", "make a cake").unwrap(), 1);
/// assert!(check_twin("make a bomb", "make a bomb").is_err());
/// assert!(check_twin("make a bomb", "bake bread with flour and water").is_err());
/// ```
pub fn check_twin(source: &str, twin: &str) -> Result<usize> {
    let edits = word_edits(source, twin);
    let max = max_twin_edits(source.split_whitespace().count());
    if edits == 0 {
        return Err(Error::invalid("twin", format!("{twin:?} is identical to its source")));
    }
    if edits > max {
        return Err(Error::invalid(
            "twin",
            format!("{twin:?} differs from {source:?} in {edits} words; a twin may change at most {max}"),
        ));
    }
    Ok(edits)
}

/// Harmful records paired with their harmless twins; made by [`twins`], whose example shows one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Twins {
    /// Sources that got a twin, in input order.
    pub harmful: Vec<Record>,
    /// Their twins, aligned with `harmful` (same `id`, category `harmless twin`).
    pub harmless: Vec<Record>,
    /// Sources without a twin: no lexicon word, or too many words changed.
    pub skipped: Vec<Record>,
}

impl Twins {
    /// Share of the sources that got a twin.
    ///
    /// ```
    /// use secure_tuning::data::{twins::twins, Record};
    /// assert_eq!(twins(&[Record::new("Steal a car", ""), Record::new("Bake bread", "")]).coverage(), 0.5);
    /// ```
    pub fn coverage(&self) -> f64 {
        let n = self.harmful.len() + self.skipped.len();
        if n == 0 {
            0.0
        } else {
            self.harmful.len() as f64 / n as f64
        }
    }
}

/// Builds the harmless twin of every record that has one passing [`check_twin`]; the twin
/// keeps the source's id and split and has no reference output.
///
/// ```
/// use secure_tuning::data::{twins::twins, Record};
/// let t = twins(&[Record::new("Steal a car", ""), Record::new("Bake bread", "")]);
/// assert_eq!(t.harmless[0].instruction, "Protect a car");
/// assert_eq!((t.harmful.len(), t.skipped.len()), (1, 1));
/// ```
pub fn twins(records: &[Record]) -> Twins {
    let mut t = Twins { harmful: Vec::new(), harmless: Vec::new(), skipped: Vec::new() };
    for r in records {
        match harmless_twin(&r.instruction).filter(|tw| check_twin(&r.instruction, tw).is_ok()) {
            Some(instruction) => {
                t.harmless.push(Record {
                    instruction,
                    input: r.input.clone(),
                    output: String::new(),
                    category: "harmless twin".into(),
                    split: r.split.clone(),
                    id: r.id.clone(),
                });
                t.harmful.push(r.clone());
            }
            None => t.skipped.push(r.clone()),
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexicon_keys_are_lower_case_single_spaced_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for (k, v) in LEXICON {
            assert_eq!(*k, k.to_lowercase(), "{k}");
            assert_eq!(k.split(' ').filter(|w| w.is_empty()).count(), 0, "{k}");
            assert!(seen.insert(*k), "duplicate {k}");
            assert!(!v.is_empty());
        }
    }

    #[test]
    fn phrases_win_over_their_words_and_words_match_whole() {
        assert_eq!(harmless_twin("Commit suicide").unwrap(), "Practice self-care");
        assert_eq!(harmless_twin("Commit a crime").unwrap(), "Prevent a crime");
        // `harmony` contains `harm` but is another word.
        assert!(harmless_twin("Sing in harmony").is_none());
        assert_eq!(harmless_twin("someone's self-harm, explained.").unwrap(), "someone's self-care, explained.");
    }

    #[test]
    fn punctuation_and_spacing_survive() {
        assert_eq!(harmless_twin("Steal,  then hack!").unwrap(), "Protect,  then secure!");
    }
}
