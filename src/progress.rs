//! Progress of long work (training, robustness, search, `reproduce`), through one process-wide
//! sink: a short line every few seconds with the step, the rate and the time left, never one
//! line per step. The CLI writes to stderr (so `--json` output stays clean), a notebook to its
//! cell's output, a test or a caller that wants silence to nothing; [`set_sink`] chooses, and
//! [`Sink::Custom`] takes any function.
//!
//! Work nests (a `reproduce` run trains many models, a robustness measurement trains one group
//! at a time); only tasks up to [`set_max_depth`] levels deep are reported, the outermost at
//! depth 0, so an inner loop does not drown its caller's lines.
//!
//! ```
//! use secure_tuning::progress::{self, Sink, Task};
//! let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
//! let seen = lines.clone();
//! progress::set_sink(Sink::Custom(std::sync::Arc::new(move |u: &progress::Update| {
//!     seen.lock().unwrap().push(u.to_string());
//! })));
//! let mut task = Task::new("demo", 3);
//! for i in 1..=3 {
//!     task.update(i, || format!("item {i}"));
//! }
//! drop(task);
//! progress::set_sink(Sink::Stderr);
//! assert!(lines.lock().unwrap().last().unwrap().starts_with("[demo] 3/3"));
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Where progress lines go.
#[derive(Clone)]
pub enum Sink {
    /// Standard error (the default: the CLI's stdout is for results).
    Stderr,
    /// Standard output (a notebook cell shows it as it arrives).
    Stdout,
    /// Nowhere.
    Silent,
    /// A function of each update.
    Custom(Arc<dyn Fn(&Update) + Send + Sync>),
}

/// One progress report of a task.
#[derive(Debug, Clone)]
pub struct Update<'a> {
    /// The task's name, e.g. `train` or `robustness`.
    pub task: &'a str,
    /// Units done so far.
    pub done: usize,
    /// Units in all.
    pub total: usize,
    /// Time since the task started.
    pub elapsed: Duration,
    /// How deep the task is nested (0 = outermost).
    pub depth: usize,
    /// What the task says about itself now (loss, current item, ...).
    pub detail: &'a str,
}

impl Update<'_> {
    /// Estimated time left at the rate so far; `None` before the first unit.
    pub fn remaining(&self) -> Option<Duration> {
        (self.done > 0 && self.total >= self.done)
            .then(|| self.elapsed.mul_f64((self.total - self.done) as f64 / self.done as f64))
    }
}

impl std::fmt::Display for Update<'_> {
    /// `[train] 40/150 loss 1.234 | 12s, about 33s left`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {}/{}", self.task, self.done, self.total)?;
        if !self.detail.is_empty() {
            write!(f, " {}", self.detail)?;
        }
        write!(f, " | {:.0}s", self.elapsed.as_secs_f64())?;
        match self.remaining() {
            Some(left) if self.done < self.total => write!(f, ", about {:.0}s left", left.as_secs_f64().ceil()),
            _ => Ok(()),
        }
    }
}

struct Settings {
    sink: Sink,
    every: Duration,
    max_depth: usize,
}

static SETTINGS: RwLock<Settings> =
    RwLock::new(Settings { sink: Sink::Stderr, every: Duration::from_secs(5), max_depth: 1 });

/// Tasks running now; a new task's depth.
static DEPTH: AtomicUsize = AtomicUsize::new(0);

/// Sends every later update to `sink` (process-wide).
pub fn set_sink(sink: Sink) {
    SETTINGS.write().unwrap_or_else(|e| e.into_inner()).sink = sink;
}

/// Reports a running task at most once per `every` (default 5 s); its first and last updates
/// always show.
pub fn set_interval(every: Duration) {
    SETTINGS.write().unwrap_or_else(|e| e.into_inner()).every = every;
}

/// Reports tasks nested at most this deep (default 1: the outermost task and the tasks it runs).
pub fn set_max_depth(depth: usize) {
    SETTINGS.write().unwrap_or_else(|e| e.into_inner()).max_depth = depth;
}

/// Sends a one-off line (not tied to a task's count) through the sink, at the current depth.
pub fn note(task: &str, detail: &str) {
    let update =
        Update { task, done: 0, total: 0, elapsed: Duration::ZERO, depth: DEPTH.load(Ordering::Relaxed), detail };
    emit(&update, true);
}

fn emit(update: &Update, is_note: bool) {
    let settings = SETTINGS.read().unwrap_or_else(|e| e.into_inner());
    if update.depth > settings.max_depth {
        return;
    }
    let line = || if is_note { format!("[{}] {}", update.task, update.detail) } else { update.to_string() };
    match &settings.sink {
        Sink::Stderr => eprintln!("{}", line()),
        Sink::Stdout => println!("{}", line()),
        Sink::Silent => {}
        Sink::Custom(f) => f(update),
    }
}

/// A unit of long work that reports its progress; nested tasks count as deeper while it lives.
pub struct Task {
    name: String,
    total: usize,
    depth: usize,
    start: Instant,
    last: Option<Instant>,
}

impl Task {
    /// Starts a task of `total` units.
    pub fn new(name: impl Into<String>, total: usize) -> Self {
        let depth = DEPTH.fetch_add(1, Ordering::Relaxed);
        Task { name: name.into(), total, depth, start: Instant::now(), last: None }
    }

    /// Records `done` units; reports when the interval has passed, on the first update and on
    /// the last unit. `detail` is only formatted when a line is due.
    pub fn update(&mut self, done: usize, detail: impl FnOnce() -> String) {
        let every = SETTINGS.read().unwrap_or_else(|e| e.into_inner()).every;
        let due = self.last.is_none_or(|t| t.elapsed() >= every) || done >= self.total;
        if !due {
            return;
        }
        self.last = Some(Instant::now());
        let detail = detail();
        let update = Update {
            task: &self.name,
            done,
            total: self.total,
            elapsed: self.start.elapsed(),
            depth: self.depth,
            detail: &detail,
        };
        emit(&update, false);
    }

    /// A line about this task now, whatever the interval (e.g. a result along the way).
    pub fn say(&self, detail: &str) {
        let update =
            Update { task: &self.name, done: 0, total: 0, elapsed: self.start.elapsed(), depth: self.depth, detail };
        emit(&update, true);
    }

    /// Time since the task started.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        DEPTH.fetch_sub(1, Ordering::Relaxed);
    }
}
