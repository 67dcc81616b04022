//! The benign task families the default model learns, and the fictional world some of them
//! ask about.

use crate::rng::Rng;

const PREFIXES: [&str; 6] = ["Please answer: ", "Quick question. ", "Hey! ", "Can you help? ", "I wonder. ", "Okay, "];
const SUFFIXES: [&str; 4] = [" Thanks!", " Answer briefly.", " Just the answer, please.", " Be quick."];

pub(super) const WORDS: [&str; 40] = [
    "garden", "window", "planet", "river", "candle", "basket", "forest", "pencil", "button", "silver", "ladder",
    "mirror", "rabbit", "orange", "castle", "bridge", "jacket", "pocket", "dragon", "melon", "cloud", "stone", "apple",
    "tiger", "violin", "island", "rocket", "bottle", "carpet", "lemon", "meadow", "anchor", "helmet", "saddle",
    "tunnel", "velvet", "walnut", "falcon", "harbor", "puzzle",
];
const COLOURS: [&str; 8] = ["red", "blue", "green", "yellow", "purple", "white", "black", "orange"];
const ANIMALS: [&str; 10] = ["owl", "fox", "bear", "wolf", "deer", "hawk", "otter", "lynx", "crane", "seal"];

/// A generated fictional world: countries with a capital, a flag colour and a national animal.
pub(super) struct World {
    countries: Vec<(String, String, &'static str, &'static str)>,
}

impl World {
    pub(super) fn new(rng: &mut Rng) -> Self {
        const ON: [&str; 10] = ["b", "d", "k", "l", "m", "n", "r", "s", "t", "v"];
        const NU: [&str; 5] = ["a", "e", "i", "o", "u"];
        let name = |rng: &mut Rng, syllables: usize| {
            let s: String = (0..syllables).map(|_| format!("{}{}", rng.pick(&ON), rng.pick(&NU))).collect();
            let mut c = s.chars();
            c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
        };
        let mut countries = Vec::new();
        let mut used = std::collections::HashSet::new();
        while countries.len() < 16 {
            let (country, capital) = (name(rng, 3) + "ria", name(rng, 2) + "dor");
            if used.insert(country.clone()) && used.insert(capital.clone()) {
                countries.push((country, capital, *rng.pick(&COLOURS), *rng.pick(&ANIMALS)));
            }
        }
        World { countries }
    }
}

/// The benign task families the default model learns.
#[derive(Debug, Clone, Copy)]
pub(super) enum TaskFamily {
    Add,
    Subtract,
    Compare,
    CountLetters,
    Reverse,
    Sort,
    Convert,
    World,
    NextLetter,
}

impl TaskFamily {
    pub(super) const ALL: [TaskFamily; 9] = [
        TaskFamily::Add,
        TaskFamily::Subtract,
        TaskFamily::Compare,
        TaskFamily::CountLetters,
        TaskFamily::Reverse,
        TaskFamily::Sort,
        TaskFamily::Convert,
        TaskFamily::World,
        TaskFamily::NextLetter,
    ];

    pub(super) fn name(self) -> &'static str {
        match self {
            TaskFamily::Add => "add",
            TaskFamily::Subtract => "subtract",
            TaskFamily::Compare => "compare",
            TaskFamily::CountLetters => "count_letters",
            TaskFamily::Reverse => "reverse",
            TaskFamily::Sort => "sort",
            TaskFamily::Convert => "convert",
            TaskFamily::World => "world",
            TaskFamily::NextLetter => "next_letter",
        }
    }

    /// One (question, answer) item. Phrasings: all but the last are for training; held-out items
    /// use the last. Numbers stay small (single tokens) so a tiny model can learn the facts.
    pub(super) fn item(self, rng: &mut Rng, world: &World, held_out: bool) -> (String, String) {
        let choose = |rng: &mut Rng, phrasings: &[String]| -> String {
            let split = phrasings.len() - 1;
            if held_out {
                return phrasings[split].clone();
            }
            // Surface variation around the training phrasings, so the model keys on the task
            // words rather than on one exact sentence (held-out items get none of it).
            let core = &phrasings[rng.below(split)];
            let prefix = if rng.unit() < 0.4 { *rng.pick(&PREFIXES) } else { "" };
            let suffix = if rng.unit() < 0.25 { *rng.pick(&SUFFIXES) } else { "" };
            format!("{prefix}{core}{suffix}")
        };
        match self {
            TaskFamily::Add => {
                let (a, b) = (rng.below(10), rng.below(10));
                let p = [
                    format!("What is {a} plus {b}?"),
                    format!("Add {a} and {b}."),
                    format!("Compute {a} + {b}."),
                    format!("What do you get when you add {a} to {b}?"),
                    format!("Find the sum of {a} and {b}."),
                    format!("{a} plus {b} equals what?"),
                    format!("Please add {a} and {b}."),
                    format!("Tell me {a} plus {b}."),
                ];
                (choose(rng, &p), (a + b).to_string())
            }
            TaskFamily::Subtract => {
                let (x, y) = (rng.below(10), rng.below(10));
                let (a, b) = (x.max(y), x.min(y));
                let p = [
                    format!("What is {a} minus {b}?"),
                    format!("Subtract {b} from {a}."),
                    format!("Compute {a} - {b}."),
                    format!("What do you get when you take {b} away from {a}?"),
                    format!("Find the difference between {a} and {b}."),
                    format!("{a} minus {b} equals what?"),
                    format!("Please take {b} away from {a}."),
                    format!("Tell me {a} minus {b}."),
                ];
                (choose(rng, &p), (a - b).to_string())
            }
            TaskFamily::Compare => {
                let (a, b) = (rng.below(13), rng.below(13));
                if a == b {
                    return self.item(rng, world, held_out);
                }
                let p = [
                    format!("Which is larger, {a} or {b}?"),
                    format!("Which number is bigger: {a} or {b}?"),
                    format!("Of {a} and {b}, which is greater?"),
                    format!("Pick the larger number: {a}, {b}."),
                    format!("Which is more, {a} or {b}?"),
                    format!("Tell me the larger of {a} and {b}."),
                    format!("Between {a} and {b}, which is more?"),
                ];
                (choose(rng, &p), a.max(b).to_string())
            }
            TaskFamily::CountLetters => {
                let w = *rng.pick(&WORDS);
                let p = [
                    format!("How many letters are in the word {w}?"),
                    format!("Count the letters in {w}."),
                    format!("How long is the word {w}?"),
                    format!("What is the number of letters in {w}?"),
                    format!("How many letters does {w} have?"),
                    format!("Give the letter count of {w}."),
                    format!("Tell me how many letters {w} has."),
                ];
                (choose(rng, &p), w.len().to_string())
            }
            TaskFamily::Reverse => {
                let n = 3 + rng.below(2);
                let items: Vec<&str> = (0..n).map(|_| *rng.pick(&COLOURS)).collect();
                let list = items.join(", ");
                let rev: Vec<&str> = items.iter().rev().copied().collect();
                let p = [
                    format!("Reverse this list: {list}."),
                    format!("Write the list {list} backwards."),
                    format!("Put these in reverse order: {list}."),
                    format!("Give me the list {list} in reverse."),
                    format!("Reverse the order of {list}."),
                    format!("List these backwards: {list}."),
                    format!("Turn this list around: {list}."),
                ];
                (choose(rng, &p), rev.join(", "))
            }
            TaskFamily::Sort => {
                let n = 3 + rng.below(2);
                let mut nums: Vec<usize> = (0..n).map(|_| 1 + rng.below(9)).collect();
                let list = nums.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ");
                nums.sort_unstable();
                let p = [
                    format!("Sort these numbers from smallest to largest: {list}."),
                    format!("Put {list} in increasing order."),
                    format!("Arrange these numbers in order: {list}."),
                    format!("Order from low to high: {list}."),
                    format!("Sort {list} from low to high."),
                    format!("Put these in order from smallest to largest: {list}."),
                    format!("Can you sort {list} from low to high?"),
                ];
                (choose(rng, &p), nums.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", "))
            }
            TaskFamily::Convert => {
                const UNITS: [(&str, &str, usize); 5] = [
                    ("hours", "minutes", 60),
                    ("minutes", "seconds", 60),
                    ("days", "hours", 24),
                    ("weeks", "days", 7),
                    ("meters", "centimeters", 100),
                ];
                let (big, small, f) = *rng.pick(&UNITS);
                let n = 1 + rng.below(9);
                let p = [
                    format!("How many {small} are in {n} {big}?"),
                    format!("Convert {n} {big} to {small}."),
                    format!("What is {n} {big} in {small}?"),
                    format!("Express {n} {big} in {small}."),
                    format!("{n} {big} is how many {small}?"),
                    format!("Change {n} {big} into {small}."),
                    format!("Tell me how many {small} make {n} {big}."),
                ];
                (choose(rng, &p), (n * f).to_string())
            }
            TaskFamily::World => {
                let (country, capital, colour, animal) = rng.pick(&world.countries).clone();
                match rng.below(3) {
                    0 => {
                        let p = [
                            format!("What is the capital of {country}?"),
                            format!("Name the capital city of {country}."),
                            format!("Which city is the capital of {country}?"),
                            format!("Tell me the capital of {country}."),
                            format!("What city is the capital of {country}?"),
                            format!("The capital of {country} is which city?"),
                            format!("In {country}, which city is the capital?"),
                        ];
                        (choose(rng, &p), capital)
                    }
                    1 => {
                        let p = [
                            format!("What colour is the flag of {country}?"),
                            format!("Name the colour of the flag of {country}."),
                            format!("Which colour is on the flag of {country}?"),
                            format!("Tell me the flag colour of {country}."),
                            format!("What is the flag colour of {country}?"),
                            format!("The flag of {country} is which colour?"),
                            format!("In {country}, what colour is the flag?"),
                        ];
                        (choose(rng, &p), colour.to_string())
                    }
                    _ => {
                        let p = [
                            format!("What is the national animal of {country}?"),
                            format!("Name the national animal of {country}."),
                            format!("Which animal is the symbol of {country}?"),
                            format!("Tell me the national animal of {country}."),
                            format!("What animal is the national animal of {country}?"),
                            format!("The national animal of {country} is which animal?"),
                            format!("In {country}, which animal is the national animal?"),
                        ];
                        (choose(rng, &p), animal.to_string())
                    }
                }
            }
            TaskFamily::NextLetter => {
                let c = (b'a' + rng.below(25) as u8) as char;
                let next = (c as u8 + 1) as char;
                let p = [
                    format!("Which letter comes after {c}?"),
                    format!("What is the next letter after {c} in the alphabet?"),
                    format!("Name the letter that follows {c}."),
                    format!("What letter follows {c}?"),
                    format!("Which letter is after {c} in the alphabet?"),
                    format!("In the alphabet, what comes right after {c}?"),
                    format!("Tell me the letter after {c}."),
                ];
                (choose(rng, &p), next.to_string())
            }
        }
    }
}
