//! The report of a run: as text for a person, as one JSON object for a script.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub count: u64,
}

impl Percentiles {
    /// From a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        let ms = |us: u64| us as f64 / 1_000.0;
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            count: h.len(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub run_id: String,
    pub target: String,
    /// The rate asked for, notifications per second.
    pub rate_per_s: f64,
    pub duration_s: f64,
    /// Notifications the generator sent.
    pub requested: u64,
    /// Notifications the API accepted.
    pub sent: u64,
    /// Accepted notifications all of whose deliveries reached the providers.
    pub received: u64,
    pub deliveries_received: u64,
    /// Deliveries a provider accepted twice.
    pub duplicates: u64,
    /// Notifications received per second, from the first intended send to the last arrival.
    pub throughput_per_s: f64,
    pub ack_latency_ms: Percentiles,
    pub e2e_latency_ms: Percentiles,
    /// End-to-end latency of the notifications sent in each second of the run (index 0: the
    /// first second), to see whether the tail grows as a run goes on.
    pub e2e_by_second: Vec<Percentiles>,
    /// By kind: `http_503`, `transport`, `rejected_<code>`, `not_received`, …
    pub errors: BTreeMap<String, u64>,
    /// The latency plot written, if any.
    pub plot: Option<String>,
    #[serde(skip)]
    pub ack_histogram: Histogram<u64>,
    #[serde(skip)]
    pub e2e_histogram: Histogram<u64>,
}

impl Report {
    pub fn to_json(&self) -> String {
        // A struct of numbers, strings and maps of them: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "run {} against {}", self.run_id, self.target);
        let _ = writeln!(
            out,
            "  asked      {:.0}/s for {:.1} s: {} notifications",
            self.rate_per_s, self.duration_s, self.requested
        );
        let _ = writeln!(out, "  accepted   {}", self.sent);
        let _ = writeln!(
            out,
            "  received   {} ({} deliveries, {} duplicates)",
            self.received, self.deliveries_received, self.duplicates
        );
        let _ = writeln!(out, "  throughput {:.0} notifications/s end to end", self.throughput_per_s);
        let _ = writeln!(out, "  latency (ms)      p50      p90      p99    p99.9      max");
        for (name, p) in [("API ack", &self.ack_latency_ms), ("end to end", &self.e2e_latency_ms)] {
            let _ = writeln!(
                out,
                "  {name:<12} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
                p.p50, p.p90, p.p99, p.p999, p.max
            );
        }
        if self.errors.is_empty() {
            let _ = writeln!(out, "  errors     none");
        } else {
            for (kind, n) in &self.errors {
                let _ = writeln!(out, "  error      {kind}: {n}");
            }
        }
        if let Some(plot) = &self.plot {
            let _ = writeln!(out, "  plot       {plot}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_in_milliseconds_and_the_json_has_every_field() {
        let mut h = Histogram::<u64>::new(3).unwrap();
        for us in 1..=1_000u64 {
            h.record(us * 10).unwrap();
        }
        let p = Percentiles::of(&h);
        assert!((p.p50 - 5.0).abs() < 0.05 && (p.max - 10.0).abs() < 0.05, "{p:?}");
        let report = Report {
            run_id: "r".into(),
            target: "http://127.0.0.1:8080".into(),
            rate_per_s: 10.0,
            duration_s: 1.0,
            requested: 10,
            sent: 10,
            received: 10,
            deliveries_received: 16,
            duplicates: 0,
            throughput_per_s: 9.5,
            ack_latency_ms: p,
            e2e_latency_ms: p,
            e2e_by_second: vec![p, p],
            errors: BTreeMap::new(),
            plot: None,
            ack_histogram: h.clone(),
            e2e_histogram: h,
        };
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        for field in ["sent", "received", "duplicates", "throughput_per_s", "errors"] {
            assert!(json.get(field).is_some(), "{field}");
        }
        for field in ["p50", "p90", "p99", "p999", "max"] {
            assert!(json["ack_latency_ms"][field].is_number() && json["e2e_latency_ms"][field].is_number());
        }
        assert_eq!(json["e2e_by_second"].as_array().map(Vec::len), Some(2));
        assert!(report.to_text().contains("end to end"));
    }
}
