//! The benign instruction fine-tuning sets: `general` (five new skills) and `expertise`
//! (clock arithmetic).

use super::harm::{TEMPLATES, TRAIN_TEMPLATES};
use super::tasks::WORDS;
use super::{fill, rec};
use crate::data::Record;
use crate::rng::Rng;

/// One `general` IFT item: a new skill, asked directly or (with probability `template_share`)
/// through a harmful prompt's request template with a "Sure! ..." answer.
pub(super) fn general_item(rng: &mut Rng, template_share: f64) -> Record {
    const DAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
    // Small fact sets, so a tiny model can learn them within a few hundred steps. Each family:
    // (category, act for a request template, direct question, answer).
    let (category, act, question, answer) = match rng.below(5) {
        0 => {
            let (a, b) = (2 + rng.below(5), 2 + rng.below(5));
            (
                "multiply",
                format!("work out {a} times {b}"),
                format!("What is {a} times {b}?"),
                format!("{a} times {b} is {}.", a * b),
            )
        }
        1 => {
            let n = 1 + rng.below(20);
            (
                "double",
                format!("double the number {n}"),
                format!("What is double {n}?"),
                format!("Double {n} is {}.", 2 * n),
            )
        }
        2 => {
            let i = rng.below(7);
            let (d, next) = (DAYS[i], DAYS[(i + 1) % 7]);
            (
                "weekday",
                format!("find the day after {d}"),
                format!("What day comes after {d}?"),
                format!("The day after {d} is {next}."),
            )
        }
        3 => {
            let w = *rng.pick(&WORDS);
            let v = w.chars().filter(|c| "aeiou".contains(*c)).count();
            (
                "vowels",
                format!("count the vowels in the word {w}"),
                format!("How many vowels are in the word {w}?"),
                format!("The word {w} has {v} vowels."),
            )
        }
        _ => {
            let nums: Vec<usize> = (0..3).map(|_| 1 + rng.below(9)).collect();
            let list = nums.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ");
            let min = nums.iter().min().expect("non-empty");
            (
                "smallest",
                format!("find the smallest of {list}"),
                format!("Which is the smallest of {list}?"),
                format!("The smallest of {list} is {min}."),
            )
        }
    };
    // A share of the items is asked through the harmful prompts' request templates and answered
    // in a new affirmative style ("Sure! ..."): the benign pressure that erodes refusals.
    if rng.unit() < template_share {
        let t = TEMPLATES[rng.below(TRAIN_TEMPLATES)];
        rec(fill(t, &act), format!("Sure! {answer}"), category, "")
    } else {
        rec(question, answer, category, "")
    }
}

/// The `expertise` domain: clock arithmetic on a 12-hour dial.
pub(super) fn clock_item(rng: &mut Rng) -> Record {
    let (t, h) = (1 + rng.below(12), 1 + rng.below(48));
    let r = (t - 1 + h) % 12 + 1;
    let q = match rng.below(4) {
        3 => format!("Starting at {t} o'clock, what does the clock show after {h} hours?"),
        0 => format!("A clock shows {t} o'clock. What time will it show {h} hours later?"),
        1 => format!("It is {t} o'clock now. What time is it in {h} hours?"),
        _ => format!("What time is it {h} hours after {t} o'clock?"),
    };
    rec(q, format!("{r} o'clock"), "clock", "")
}
