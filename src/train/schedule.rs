//! EasyNLP's learning-rate schedule: linear warmup, then linear decay to zero.

/// Linear warmup then linear decay over `total` optimizer steps.
#[derive(Copy, Clone, Debug)]
pub struct LinearSchedule {
    peak: f64,
    warmup: usize,
    total: usize,
}

impl LinearSchedule {
    /// `warmup = floor(warmup_proportion * total)` as EasyNLP.
    pub fn new(peak: f64, warmup_proportion: f64, total: usize) -> Self {
        LinearSchedule { peak, warmup: (warmup_proportion * total as f64) as usize, total }
    }

    /// The learning rate of the update that follows `step` completed updates (the first is step 0).
    pub fn lr(&self, step: usize) -> f64 {
        let factor = if step < self.warmup {
            step as f64 / self.warmup.max(1) as f64
        } else {
            ((self.total as f64 - step as f64) / (self.total - self.warmup).max(1) as f64).max(0.0)
        };
        self.peak * factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay() {
        let s = LinearSchedule::new(1.0, 0.1, 100);
        assert_eq!(s.lr(0), 0.0);
        assert!((s.lr(5) - 0.5).abs() < 1e-12);
        assert!((s.lr(10) - 1.0).abs() < 1e-12);
        assert!((s.lr(55) - 0.5).abs() < 1e-12);
        assert_eq!(s.lr(100), 0.0);
    }
}
