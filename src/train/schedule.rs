//! The learning-rate schedule: a pure function of the step.

use serde::{Deserialize, Serialize};

/// Linear warm-up, then cosine decay to `min_ratio * lr`.
///
/// ```
/// use secure_tuning::train::Schedule;
/// let s = Schedule { warmup_steps: 10, total_steps: 110, min_ratio: 0.1 };
/// assert_eq!(s.factor(0), 0.1);           // first step: 1/10 of the way up
/// assert_eq!(s.factor(9), 1.0);           // warm-up done
/// assert!((s.factor(109) - 0.1).abs() < 1e-3); // decayed to the floor
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Steps of linear warm-up.
    pub warmup_steps: usize,
    /// Total optimizer steps.
    pub total_steps: usize,
    /// Final LR as a share of the peak.
    pub min_ratio: f64,
}

impl Schedule {
    /// Multiplier of the peak LR at `step` (0-based).
    pub fn factor(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            // Warm-up: reach the peak at the last warm-up step.
            return (step + 1) as f64 / self.warmup_steps as f64;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / (decay_steps - 1).max(1) as f64).min(1.0);
        // Cosine from 1 down to min_ratio.
        self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}
