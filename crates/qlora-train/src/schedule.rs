//! Learning-rate schedules with linear warm-up (as transformers' `get_*_schedule_with_warmup`).

use std::f64::consts::PI;

use serde::{Deserialize, Serialize};

/// The shape of the learning rate after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Constant.
    Constant,
    /// Linear decay to 0 at the last step.
    Linear,
    /// Half a cosine down to 0 at the last step.
    Cosine,
}

impl std::str::FromStr for Schedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "constant" => Schedule::Constant,
            "linear" => Schedule::Linear,
            "cosine" => Schedule::Cosine,
            _ => return Err(format!("unknown schedule `{s}` (constant, linear, cosine)")),
        })
    }
}

impl Schedule {
    /// The learning rate of optimizer step `step` (0-based) of `total`, with `warmup` steps of
    /// linear warm-up from `peak / warmup`.
    pub fn lr(self, peak: f64, step: usize, total: usize, warmup: usize) -> f64 {
        if step < warmup {
            return peak * (step + 1) as f64 / warmup as f64;
        }
        let decay_steps = total.saturating_sub(warmup).max(1) as f64;
        let progress = ((step - warmup) as f64 / decay_steps).min(1.0);
        match self {
            Schedule::Constant => peak,
            Schedule::Linear => peak * (1.0 - progress),
            Schedule::Cosine => peak * 0.5 * (1.0 + (PI * progress).cos()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_shapes() {
        assert_eq!(Schedule::Constant.lr(1.0, 0, 10, 4), 0.25);
        assert_eq!(Schedule::Constant.lr(1.0, 3, 10, 4), 1.0);
        assert_eq!(Schedule::Constant.lr(1.0, 9, 10, 4), 1.0);
        assert_eq!(Schedule::Linear.lr(1.0, 4, 10, 4), 1.0);
        assert!((Schedule::Linear.lr(1.0, 7, 10, 4) - 0.5).abs() < 1e-12);
        assert!((Schedule::Cosine.lr(1.0, 7, 10, 4) - 0.5).abs() < 1e-12);
        assert!(Schedule::Cosine.lr(1.0, 10, 10, 4).abs() < 1e-12);
    }
}
