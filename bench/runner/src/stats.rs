//! Medians, spreads and ratios over repeated runs, and the markdown summary.

use crate::targets::Target;
use serde::Serialize;
use serde_json::Value;

/// One loadgen run.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub scenario: &'static str,
    pub target: Target,
    /// Sent rate (fanout, dm, reconnect) or connections (idle).
    pub param: f64,
    pub repeat: usize,
    pub report: Option<Value>,
    pub error: Option<String>,
}

impl Record {
    /// A number from the report, by JSON pointer (`/delivery_ms/p99`).
    pub fn get(&self, pointer: &str) -> Option<f64> {
        self.report.as_ref()?.pointer(pointer)?.as_f64()
    }
}

/// Median and range of some values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

pub fn spread(values: &[f64]) -> Option<Spread> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    let median = if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 };
    Some(Spread { median, min: v[0], max: v[v.len() - 1], n: v.len() })
}

/// The spread of one field over the runs of (scenario, target, param).
pub fn field(records: &[Record], scenario: &str, target: Target, param: f64, pointer: &str) -> Option<Spread> {
    let values: Vec<f64> = records
        .iter()
        .filter(|r| r.scenario == scenario && r.target == target && r.param == param)
        .filter_map(|r| r.get(pointer))
        .collect();
    spread(&values)
}

/// Runs of a point that failed outright.
pub fn failures(records: &[Record], scenario: &str, target: Target, param: f64) -> usize {
    records
        .iter()
        .filter(|r| r.scenario == scenario && r.target == target && r.param == param && r.error.is_some())
        .count()
}

/// A sweep point passes when no run failed, nothing was lost and the
/// median p99 delivery latency is under `p99_ms`.
pub fn passes(records: &[Record], scenario: &str, target: Target, param: f64, p99_ms: f64) -> bool {
    let p99 = field(records, scenario, target, param, "/delivery_ms/p99");
    let lost = field(records, scenario, target, param, "/lost").map_or(1.0, |s| s.max);
    failures(records, scenario, target, param) == 0 && lost == 0.0 && p99.is_some_and(|p| p.median < p99_ms)
}

pub fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "–".into(),
    }
}

pub fn fmt(s: Option<Spread>, digits: usize) -> String {
    match s {
        Some(s) if s.n > 1 => format!("{:.d$} ({:.d$}–{:.d$})", s.median, s.min, s.max, d = digits),
        Some(s) => format!("{:.d$}", s.median, d = digits),
        None => "failed".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(target: Target, param: f64, p99: f64, lost: u64) -> Record {
        Record {
            scenario: "fanout",
            target,
            param,
            repeat: 0,
            report: Some(json!({ "delivery_ms": { "p99": p99 }, "lost": lost })),
            error: None,
        }
    }

    #[test]
    fn medians_and_spreads() {
        assert_eq!(spread(&[3.0, 1.0, 2.0]), Some(Spread { median: 2.0, min: 1.0, max: 3.0, n: 3 }));
        assert_eq!(spread(&[4.0, 1.0]).map(|s| s.median), Some(2.5));
        assert_eq!(spread(&[]), None);
        assert_eq!(fmt(spread(&[1.0, 2.0, 3.0]), 1), "2.0 (1.0–3.0)");
        assert_eq!(ratio(Some(3.0), Some(1.5)), "2.00×");
        assert_eq!(ratio(Some(3.0), None), "–");
    }

    #[test]
    fn a_point_passes_on_its_median_and_fails_on_any_loss_or_error() {
        let t = Target::Ceiling;
        let records = vec![rec(t, 1.0, 50.0, 0), rec(t, 1.0, 150.0, 0), rec(t, 1.0, 60.0, 0)];
        assert!(passes(&records, "fanout", t, 1.0, 100.0));
        let lossy = vec![rec(t, 1.0, 50.0, 0), rec(t, 1.0, 50.0, 3)];
        assert!(!passes(&lossy, "fanout", t, 1.0, 100.0));
        let mut failed = vec![rec(t, 1.0, 50.0, 0)];
        failed.push(Record { report: None, error: Some("died".into()), ..rec(t, 1.0, 0.0, 0) });
        assert!(!passes(&failed, "fanout", t, 1.0, 100.0));
        assert!(!passes(&records, "fanout", t, 2.0, 100.0), "no runs: no pass");
    }
}
