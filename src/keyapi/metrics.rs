//! `GET /metrics`: answers by code, refusals by status, and the latency of
//! answers, in Prometheus' text format (prometheus-client).

use std::time::Duration;

use anyhow::Result;
use axum::http::StatusCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::Code;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CodeLabel {
    code: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StatusLabel {
    status: u16,
}

pub struct Metrics {
    registry: Registry,
    answers: Family<CodeLabel, Counter>,
    refused: Family<StatusLabel, Counter>,
    latency: Histogram,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("licensync_keyapi");
        let answers = Family::<CodeLabel, Counter>::default();
        let refused = Family::<StatusLabel, Counter>::default();
        // 0.25 ms to about 1 s.
        let latency = Histogram::new(exponential_buckets(0.000_25, 2.0, 13));
        registry.register("answers", "Answers of the key API by code", answers.clone());
        registry.register(
            "refused_requests",
            "Requests refused before an answer, by HTTP status",
            refused.clone(),
        );
        registry.register(
            "answer_duration_seconds",
            "Time from an admitted request to its answer",
            latency.clone(),
        );
        Metrics {
            registry,
            answers,
            refused,
            latency,
        }
    }

    pub fn answered(&self, code: Code, took: Duration) {
        self.answers
            .get_or_create(&CodeLabel {
                code: code.as_ref().to_owned(),
            })
            .inc();
        self.latency.observe(took.as_secs_f64());
    }

    pub fn rejected(&self, status: StatusCode) {
        self.refused
            .get_or_create(&StatusLabel {
                status: status.as_u16(),
            })
            .inc();
    }

    /// In the Prometheus text format (no `# EOF`), to be joined with others.
    pub fn render_prometheus(&self) -> Result<String> {
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)?;
        Ok(text)
    }

    pub fn render(&self) -> Result<String> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}
