//! `herald-loadtest find-max`: the highest rate Herald sustains.
//!
//! Runs steps of `step` seconds at rising rates (×`growth` each step), each a whole [`run`]: a
//! step passes when every notification sent was received within the drain, nothing failed,
//! and the end-to-end p99 is within the SLO. After the first failing step, one more step at the
//! midpoint between the last pass and the failure narrows the answer. It stops after the
//! refinement, or when `max_time` is spent.

use super::report::Percentiles;
use super::{RunError, RunOptions, run};
use crate::sandbox::Sandbox;
use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct FindMaxOptions {
    /// The load's shape; `rate` is the first step's rate, `duration` each step's length.
    pub load: RunOptions,
    pub growth: f64,
    pub slo_p99_ms: f64,
    pub max_time: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub rate_per_s: f64,
    pub passed: bool,
    /// Why it failed, if it did.
    pub reason: Option<String>,
    pub throughput_per_s: f64,
    pub e2e_latency_ms: Percentiles,
    pub ack_latency_ms: Percentiles,
}

#[derive(Debug, Clone, Serialize)]
pub struct FindMaxReport {
    /// The highest rate that passed (0 when none did).
    pub max_sustainable_per_s: f64,
    pub slo_p99_ms: f64,
    pub steps: Vec<Step>,
}

impl FindMaxReport {
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "highest sustainable rate: {:.0} notifications/s (end-to-end p99 within {} ms, nothing lost)\n",
            self.max_sustainable_per_s, self.slo_p99_ms
        );
        out.push_str("      rate   result   throughput   e2e p50   e2e p99   ack p99\n");
        for s in &self.steps {
            out.push_str(&format!(
                "{:>10.0}   {:<6} {:>12.0} {:>9.2} {:>9.2} {:>9.2}   {}\n",
                s.rate_per_s,
                if s.passed { "pass" } else { "fail" },
                s.throughput_per_s,
                s.e2e_latency_ms.p50,
                s.e2e_latency_ms.p99,
                s.ack_latency_ms.p99,
                s.reason.as_deref().unwrap_or("")
            ));
        }
        out
    }
}

/// One step: runs at `rate` and judges it.
async fn step(options: &FindMaxOptions, sandbox: &Sandbox, rate: f64, first: bool) -> Result<Step, RunError> {
    let load = RunOptions { rate, set_up: first, progress: options.load.progress, ..options.load.clone() };
    let report = run(&load, sandbox).await?;
    let reason = if !report.errors.is_empty() {
        Some(format!("errors: {:?}", report.errors))
    } else if report.received < report.sent {
        Some(format!("received {} of {}", report.received, report.sent))
    } else if report.e2e_latency_ms.p99 > options.slo_p99_ms {
        Some(format!("e2e p99 {:.1} ms over the SLO", report.e2e_latency_ms.p99))
    } else {
        None
    };
    Ok(Step {
        rate_per_s: rate,
        passed: reason.is_none(),
        reason,
        throughput_per_s: report.throughput_per_s,
        e2e_latency_ms: report.e2e_latency_ms,
        ack_latency_ms: report.ack_latency_ms,
    })
}

pub async fn find_max(options: &FindMaxOptions, sandbox: &Sandbox) -> Result<FindMaxReport, RunError> {
    if options.growth <= 1.0 {
        return Err(RunError::Options("growth must be above 1".into()));
    }
    let started = Instant::now();
    let mut steps: Vec<Step> = Vec::new();
    let mut rate = options.load.rate;
    let mut best: f64 = 0.0;
    loop {
        let result = step(options, sandbox, rate, steps.is_empty()).await?;
        tracing::info!(rate, passed = result.passed, reason = ?result.reason, "find-max step");
        let passed = result.passed;
        steps.push(result);
        if passed {
            best = best.max(rate);
        }
        if started.elapsed() >= options.max_time {
            break;
        }
        if passed {
            rate *= options.growth;
            continue;
        }
        // The first failure: one step between the last pass and it, then stop.
        if best > 0.0 && steps.iter().filter(|s| !s.passed).count() == 1 {
            let middle = (best + rate) / 2.0;
            let refined = step(options, sandbox, middle, false).await?;
            if refined.passed {
                best = best.max(middle);
            }
            steps.push(refined);
        }
        break;
    }
    Ok(FindMaxReport { max_sustainable_per_s: best, slo_p99_ms: options.slo_p99_ms, steps })
}
