//! The ramp's Prometheus check (`ramp.prometheus` in the configuration): a
//! query the platform team writes (the error rate of a namespace's arm64
//! pods from their own metrics, joined on the `archway.dev/arch` pod
//! label, say), evaluated for each ramped namespace while its step holds.
//! A sample above the threshold blocks the step; so does a query that
//! cannot be evaluated (Prometheus down, slow, an error, no series, NaN):
//! a ramp never advances blind.
//!
//! What Prometheus answers is read up to [`MAX_ANSWER_BYTES`], and only
//! its largest sample and that sample's labels (cut short) reach the
//! blocker's text, so a query that matches many series costs a bounded
//! read and a bounded status.

use std::time::Duration;

use serde_json::Value;

use crate::config::RampQuery;
use crate::decision::text::truncate_for_message;

/// The most of an answer that is read: a query meant to give one number
/// per namespace that gives megabytes is a mistake, not data.
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// The query, ready to run.
pub struct PrometheusCheck {
    client: reqwest::Client,
    endpoint: reqwest::Url,
    query: String,
    threshold: f64,
    timeout: Duration,
}

impl PrometheusCheck {
    /// The check `settings` describe (already validated with the rest of
    /// the configuration).
    pub fn new(settings: &RampQuery) -> Result<PrometheusCheck, String> {
        let base =
            reqwest::Url::parse(&settings.url).map_err(|e| format!("ramp.prometheus.url: {e}"))?;
        let endpoint = base
            .join(&format!(
                "{}/api/v1/query",
                base.path().trim_end_matches('/')
            ))
            .map_err(|e| format!("ramp.prometheus.url: {e}"))?;
        // No client timeout: `blockers` bounds the whole evaluation, and
        // says so in its own words.
        let client = reqwest::Client::builder()
            .user_agent(concat!("archway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("ramp.prometheus: {e}"))?;
        Ok(PrometheusCheck {
            client,
            endpoint,
            query: settings.query.clone(),
            threshold: settings.threshold,
            timeout: settings.timeout,
        })
    }

    /// The query as it runs for `namespace` (a DNS label: it needs no
    /// quoting inside a PromQL string).
    pub fn query_for(&self, namespace: &str) -> String {
        self.query.replace("$namespace", namespace)
    }

    /// What the query holds against `namespace`'s step: nothing when its
    /// largest sample is at or under the threshold, else one reason.
    pub async fn blockers(&self, namespace: &str) -> Vec<String> {
        let query = self.query_for(namespace);
        let answer = tokio::time::timeout(self.timeout, self.ask(&query)).await;
        let verdict = match answer {
            Err(_) => Err(format!(
                "Prometheus gave no answer within {}",
                humantime::format_duration(self.timeout)
            )),
            Ok(Err(reason)) => Err(reason),
            Ok(Ok((status, body))) => judge(status, &body, self.threshold),
        };
        match verdict {
            Ok(None) => Vec::new(),
            Ok(Some(over)) => vec![over],
            Err(reason) => {
                tracing::warn!(namespace, %reason, "the ramp's Prometheus query cannot be evaluated");
                vec![format!(
                    "the Prometheus query cannot be evaluated: {}",
                    truncate_for_message(&reason)
                )]
            }
        }
    }

    /// One evaluation: the answer's status and at most `MAX_ANSWER_BYTES`
    /// of its body.
    async fn ask(&self, query: &str) -> Result<(u16, Vec<u8>), String> {
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("query", query)
            .finish();
        let mut response = (self.client.post(self.endpoint.clone()))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .map_err(|e| format!("Prometheus at {}: {}", self.endpoint, error_chain(&e)))?;
        let status = response.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("Prometheus' answer: {}", error_chain(&e)))?
        {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(format!(
                    "Prometheus' answer is over {} KiB: the query should give one number per namespace",
                    MAX_ANSWER_BYTES / 1024
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, body))
    }
}

/// An error and its causes on one line (reqwest's own text says only
/// "error sending request").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Prometheus' answer (`/api/v1/query`, HTTP `status`, `body`) against
/// `threshold`: `Ok(None)` when every sample is at or under it,
/// `Ok(Some(reason))` when the largest is above, `Err(why)` when the
/// answer gives no number to compare.
pub fn judge(status: u16, body: &[u8], threshold: f64) -> Result<Option<String>, String> {
    let answer: Value = serde_json::from_slice(body)
        .map_err(|_| format!("Prometheus answered HTTP {status} with no JSON"))?;
    if answer["status"] != "success" {
        let error = answer["error"].as_str().unwrap_or("no reason given");
        return Err(format!(
            "Prometheus refused the query (HTTP {status}): {error}"
        ));
    }
    let data = &answer["data"];
    let samples: Vec<(f64, String)> = match data["resultType"].as_str() {
        Some("vector") => (data["result"].as_array().into_iter().flatten())
            .map(|series| Ok((sample_value(&series["value"])?, labels(&series["metric"]))))
            .collect::<Result<_, String>>()?,
        Some("scalar") => vec![(sample_value(&data["result"])?, String::new())],
        other => {
            return Err(format!(
                "the query gives a {}, not an instant vector or a scalar",
                other.unwrap_or("result of no type")
            ));
        }
    };
    if samples.is_empty() {
        return Err(
            "the query gives no series (write it so that it always gives a number, e.g. `... or vector(0)`)"
                .into(),
        );
    }
    if let Some((_, labels)) = samples.iter().find(|(value, _)| value.is_nan()) {
        return Err(format!("the query gives NaN{}", for_labels(labels)));
    }
    let (value, labels) = (samples.iter())
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .expect("not empty");
    if *value > threshold {
        return Ok(Some(format!(
            "the Prometheus query gives {value}{}, above its threshold {threshold}",
            for_labels(labels)
        )));
    }
    Ok(None)
}

/// A sample `[time, "value"]` as Prometheus writes it.
fn sample_value(sample: &Value) -> Result<f64, String> {
    let text = sample[1]
        .as_str()
        .ok_or("Prometheus' answer has a sample without a value")?;
    text.parse::<f64>()
        .map_err(|_| format!("Prometheus' answer has a sample {text:?} that is no number"))
}

/// A series' labels as PromQL writes them, sorted.
fn labels(metric: &Value) -> String {
    let Some(metric) = metric.as_object() else {
        return String::new();
    };
    let mut pairs: Vec<String> = metric
        .iter()
        .map(|(name, value)| format!("{name}={:?}", value.as_str().unwrap_or_default()))
        .collect();
    pairs.sort();
    pairs.join(", ")
}

fn for_labels(labels: &str) -> String {
    if labels.is_empty() {
        String::new()
    } else {
        format!(" for {{{}}}", truncate_for_message(labels))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector(samples: &[(&str, &str)]) -> Vec<u8> {
        let result: Vec<Value> = samples
            .iter()
            .map(
                |(pod, value)| serde_json::json!({"metric": {"pod": pod}, "value": [1.7e9, value]}),
            )
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "status": "success",
            "data": {"resultType": "vector", "result": result},
        }))
        .unwrap()
    }

    #[test]
    fn the_largest_sample_is_compared_with_the_threshold() {
        let under = vector(&[("a", "0.01"), ("b", "0.05")]);
        assert_eq!(
            judge(200, &under, 0.05),
            Ok(None),
            "at the threshold passes"
        );
        let over = vector(&[("a", "0.01"), ("b", "0.2"), ("c", "0.1")]);
        assert_eq!(
            judge(200, &over, 0.05),
            Ok(Some(
                "the Prometheus query gives 0.2 for {pod=\"b\"}, above its threshold 0.05".into()
            ))
        );
        let infinite = vector(&[("a", "+Inf")]);
        assert!(matches!(judge(200, &infinite, 1e9), Ok(Some(_))));
    }

    #[test]
    fn a_scalar_is_one_sample_without_labels() {
        let body = br#"{"status":"success","data":{"resultType":"scalar","result":[1.7e9,"3"]}}"#;
        assert_eq!(
            judge(200, body, 2.0),
            Ok(Some(
                "the Prometheus query gives 3, above its threshold 2".into()
            ))
        );
        assert_eq!(judge(200, body, 3.0), Ok(None));
    }

    #[test]
    fn no_number_to_compare_is_no_pass() {
        let cases: Vec<(u16, Vec<u8>, &str)> = vec![
            (200, vector(&[]), "the query gives no series"),
            (200, vector(&[("a", "0"), ("b", "NaN")]), "the query gives NaN for {pod=\"b\"}"),
            (
                400,
                br#"{"status":"error","errorType":"bad_data","error":"parse error at char 5"}"#.to_vec(),
                "Prometheus refused the query (HTTP 400): parse error at char 5",
            ),
            (502, b"<html>bad gateway</html>".to_vec(), "Prometheus answered HTTP 502 with no JSON"),
            (
                200,
                br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#.to_vec(),
                "the query gives a matrix, not an instant vector or a scalar",
            ),
            (
                200,
                br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"x"]}]}}"#.to_vec(),
                "Prometheus' answer has a sample \"x\" that is no number",
            ),
            (
                200,
                br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{}}]}}"#.to_vec(),
                "Prometheus' answer has a sample without a value",
            ),
        ];
        for (status, body, want) in cases {
            let got = judge(status, &body, 1.0).expect_err(want);
            assert!(got.starts_with(want), "{got:?} should start with {want:?}");
        }
    }

    #[test]
    fn many_long_labels_are_cut_in_the_reason() {
        let long = "x".repeat(10_000);
        let body = vector(&[(&long, "5")]);
        let reason = judge(200, &body, 1.0).unwrap().unwrap();
        assert!(reason.len() < 400, "{} bytes", reason.len());
    }

    #[test]
    fn the_namespace_is_put_in_the_query() {
        let check = PrometheusCheck::new(&RampQuery {
            url: "http://prometheus.monitoring:9090/prom/".into(),
            query: r#"max(errors{namespace="$namespace"}) or vector(0)"#.into(),
            threshold: 0.05,
            timeout: Duration::from_secs(1),
        })
        .unwrap();
        assert_eq!(
            check.query_for("shop"),
            r#"max(errors{namespace="shop"}) or vector(0)"#
        );
        assert_eq!(
            check.endpoint.as_str(),
            "http://prometheus.monitoring:9090/prom/api/v1/query"
        );
    }

    #[tokio::test]
    async fn prometheus_down_blocks_the_step() {
        // A port nothing listens on: bound, then closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let check = PrometheusCheck::new(&RampQuery {
            url: format!("http://127.0.0.1:{port}"),
            query: "vector(0)".into(),
            threshold: 1.0,
            timeout: Duration::from_secs(2),
        })
        .unwrap();
        let blockers = check.blockers("shop").await;
        assert_eq!(blockers.len(), 1, "{blockers:?}");
        assert!(
            blockers[0].starts_with(
                "the Prometheus query cannot be evaluated: Prometheus at http://127.0.0.1:"
            ),
            "{}",
            blockers[0]
        );
    }
}
