//! Prometheus text metrics: requests by route and status, latency histograms, queue depth,
//! tokens, and time per phase.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Latency bucket bounds in seconds.
const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Phases whose time is summed.
#[derive(Debug, Clone, Copy)]
pub enum Phase {
    /// Waiting for a slot.
    Queue,
    /// Prompt and observation prefill.
    Prefill,
    /// Token-by-token decoding.
    Decode,
    /// Retriever calls.
    Retrieval,
    /// Everything else inside a job (tokenising, parsing, formatting).
    Other,
}

const PHASES: [&str; 5] = ["queue", "prefill", "decode", "retrieval", "other"];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

/// All counters of one server.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    latency: Mutex<BTreeMap<&'static str, Histogram>>,
    phase_us: [AtomicU64; 5],
    generated_tokens: AtomicU64,
    prompt_tokens: AtomicU64,
    rejected: AtomicU64,
    cancelled: AtomicU64,
    timeouts: AtomicU64,
}

/// Gauges read at render time.
pub struct Gauges {
    /// Whether the model and retriever are loaded.
    pub ready: bool,
    /// Requests waiting for a slot.
    pub queued: usize,
    /// Jobs running.
    pub running: usize,
    /// Slots.
    pub slots: usize,
    /// Queue capacity.
    pub max_queue: usize,
}

impl Metrics {
    /// Count a finished request (`route` is one of the fixed route labels).
    pub fn request(&self, route: &'static str, status: u16, took: Duration) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((route, status))
            .or_default() += 1;
        let secs = took.as_secs_f64();
        let mut lat = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        let h = lat.entry(route).or_default();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += secs;
        h.count += 1;
    }

    /// Add time spent in `phase` (milliseconds).
    pub fn phase_ms(&self, phase: Phase, ms: f64) {
        if ms.is_finite() && ms > 0.0 {
            self.phase_us[phase as usize].fetch_add((ms * 1e3) as u64, Ordering::Relaxed);
        }
    }

    /// Add generated and prompt tokens.
    pub fn tokens(&self, prompt: usize, generated: usize) {
        self.prompt_tokens
            .fetch_add(prompt as u64, Ordering::Relaxed);
        self.generated_tokens
            .fetch_add(generated as u64, Ordering::Relaxed);
    }

    /// A request refused because the server was full.
    pub fn rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// A job stopped because its client went away.
    pub fn cancelled(&self) {
        self.cancelled.fetch_add(1, Ordering::Relaxed);
    }

    /// A job stopped at its deadline.
    pub fn timeout(&self) {
        self.timeouts.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self, g: &Gauges) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# HELP dgpo_http_requests_total HTTP requests answered, by route and status.\n# TYPE dgpo_http_requests_total counter"
        );
        for ((route, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                s,
                "dgpo_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        let _ = writeln!(
            s,
            "# HELP dgpo_http_request_duration_seconds Time to the response head (streams: to the first byte), by route.\n# TYPE dgpo_http_request_duration_seconds histogram"
        );
        for (route, h) in self
            .latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            for (b, c) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(
                    s,
                    "dgpo_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{b}\"}} {c}"
                );
            }
            let _ = writeln!(
                s,
                "dgpo_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}\ndgpo_http_request_duration_seconds_sum{{route=\"{route}\"}} {}\ndgpo_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                h.count, h.sum, h.count
            );
        }
        let _ = writeln!(
            s,
            "# HELP dgpo_phase_seconds_total Time spent per phase of model and retriever jobs.\n# TYPE dgpo_phase_seconds_total counter"
        );
        for (i, p) in PHASES.iter().enumerate() {
            let us = self.phase_us[i].load(Ordering::Relaxed);
            let _ = writeln!(
                s,
                "dgpo_phase_seconds_total{{phase=\"{p}\"}} {}",
                us as f64 / 1e6
            );
        }
        let counters = [
            (
                "dgpo_generated_tokens_total",
                "Tokens generated by the model.",
                &self.generated_tokens,
            ),
            (
                "dgpo_prompt_tokens_total",
                "Prompt tokens prefilled.",
                &self.prompt_tokens,
            ),
            (
                "dgpo_rejected_total",
                "Requests refused with 503 because every slot and the queue were full.",
                &self.rejected,
            ),
            (
                "dgpo_cancelled_total",
                "Jobs stopped because the client disconnected.",
                &self.cancelled,
            ),
            (
                "dgpo_timeouts_total",
                "Jobs stopped at the per-request deadline.",
                &self.timeouts,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let gauges = [
            (
                "dgpo_ready",
                "1 once the model and the retriever are loaded.",
                g.ready as usize,
            ),
            ("dgpo_queue_depth", "Requests waiting for a slot.", g.queued),
            (
                "dgpo_running_jobs",
                "Model/retriever jobs running.",
                g.running,
            ),
            (
                "dgpo_slots",
                "Concurrent job slots (--max-concurrency).",
                g.slots,
            ),
            (
                "dgpo_queue_capacity",
                "Queue length (--queue).",
                g.max_queue,
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.request("/retrieve", 200, Duration::from_millis(3));
        m.request("/retrieve", 200, Duration::from_millis(70));
        m.request("/retrieve", 503, Duration::from_secs(200));
        let g = Gauges {
            ready: true,
            queued: 2,
            running: 1,
            slots: 2,
            max_queue: 8,
        };
        let t = m.render(&g);
        assert!(t.contains("dgpo_http_requests_total{route=\"/retrieve\",status=\"200\"} 2"));
        assert!(t.contains("dgpo_http_requests_total{route=\"/retrieve\",status=\"503\"} 1"));
        assert!(t.contains("route=\"/retrieve\",le=\"0.005\"} 1\n"));
        assert!(t.contains("route=\"/retrieve\",le=\"0.1\"} 2\n"));
        assert!(t.contains("route=\"/retrieve\",le=\"120\"} 2\n"));
        assert!(t.contains("route=\"/retrieve\",le=\"+Inf\"} 3\n"));
        assert!(t.contains("dgpo_queue_depth 2\n"));
    }
}
