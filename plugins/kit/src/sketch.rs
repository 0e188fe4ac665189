//! A quantile sketch with bounded memory and a stated error: values are
//! counted in logarithmic buckets (as DDSketch does), so any quantile it
//! reports is within `relative_accuracy` of a value that was really at that
//! rank, and memory grows with the spread of the values (about 750 buckets
//! from 1 ms to 1 h at 1 %), never with their number. Sketches merge, so
//! per-minute sketches make a sliding window.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sketch {
    /// `(1 + a) / (1 - a)` for relative accuracy `a`.
    gamma: f64,
    /// Count per bucket index; bucket `i` holds values in (gamma^(i-1), gamma^i].
    buckets: BTreeMap<i32, u64>,
    /// Values at or below zero (durations are never negative).
    zeros: u64,
    count: u64,
}

impl Sketch {
    /// A sketch whose quantiles are within `relative_accuracy` (e.g. 0.01).
    pub fn new(relative_accuracy: f64) -> Self {
        let a = relative_accuracy.clamp(1e-4, 0.5);
        Self { gamma: (1.0 + a) / (1.0 - a), buckets: BTreeMap::new(), zeros: 0, count: 0 }
    }

    pub fn add(&mut self, value: f64) {
        if !value.is_finite() {
            return;
        }
        self.count += 1;
        if value <= 0.0 {
            self.zeros += 1;
            return;
        }
        let index = (value.ln() / self.gamma.ln()).ceil() as i32;
        *self.buckets.entry(index).or_default() += 1;
    }

    /// Adds another sketch's values; both must have the same accuracy.
    pub fn merge(&mut self, other: &Sketch) {
        debug_assert!((self.gamma - other.gamma).abs() < 1e-12, "sketches of different accuracy");
        self.count += other.count;
        self.zeros += other.zeros;
        for (index, n) in &other.buckets {
            *self.buckets.entry(*index).or_default() += n;
        }
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The value at quantile `q` (0.95 for p95), or `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * (self.count - 1) as f64).floor() as u64;
        if rank < self.zeros {
            return Some(0.0);
        }
        let mut seen = self.zeros;
        for (index, n) in &self.buckets {
            seen += n;
            if seen > rank {
                // The middle of the bucket, in relative terms.
                return Some(2.0 * self.gamma.powi(*index) / (self.gamma + 1.0));
            }
        }
        None
    }

    /// How many buckets it holds: its memory, in effect.
    pub fn buckets(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::Sketch;

    #[test]
    fn quantiles_are_within_the_stated_accuracy() {
        let mut sketch = Sketch::new(0.01);
        let mut values: Vec<f64> = (1..=100_000).map(|n| (n as f64 * 7919.0) % 180_000.0 + 1.0).collect();
        for v in &values {
            sketch.add(*v);
        }
        values.sort_by(f64::total_cmp);
        for q in [0.5, 0.9, 0.95, 0.99] {
            let exact = values[(q * (values.len() - 1) as f64).floor() as usize];
            let estimate = sketch.quantile(q).unwrap();
            assert!((estimate - exact).abs() <= 0.01 * exact + 1e-9, "q{q}: {estimate} vs {exact}");
        }
        assert!(sketch.buckets() < 1000, "memory is bounded by the spread: {}", sketch.buckets());
    }

    #[test]
    fn memory_does_not_grow_with_traffic() {
        let mut sketch = Sketch::new(0.01);
        for n in 0..1_000_000u64 {
            sketch.add(80_000.0 + (n % 40_000) as f64);
        }
        assert_eq!(sketch.count(), 1_000_000);
        assert!(sketch.buckets() < 60, "{}", sketch.buckets());
    }

    #[test]
    fn merging_equals_adding_everything_to_one() {
        let (mut a, mut b, mut all) = (Sketch::new(0.02), Sketch::new(0.02), Sketch::new(0.02));
        for n in 0..1000 {
            let v = n as f64;
            if n % 2 == 0 {
                a.add(v)
            } else {
                b.add(v)
            }
            all.add(v);
        }
        a.merge(&b);
        assert_eq!(a, all);
        assert_eq!(Sketch::new(0.01).quantile(0.5), None);
    }
}
