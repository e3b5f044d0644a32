//! The monitoring files keel ships (`docs/monitoring/`): every metric their
//! queries name exists in a member's /metrics.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{http_get, Cluster};

/// The metric names a PromQL text mentions: identifiers followed by `{`,
/// `[` or `)` that look like metric names (functions and label names are
/// followed by `(`, `=` or `,`).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_alphabetic() || b[i] == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                i += 1;
            }
            let word = &text[start..i];
            let before = text[..start].chars().rev().find(|c| !c.is_whitespace());
            if b.get(i) == Some(&b'{')
                && before != Some('$')
                && (word.starts_with("etcd_")
                    || word.starts_with("grpc_")
                    || word.starts_with("process_")
                    || word == "up")
            {
                out.insert(word.to_string());
            }
        } else {
            i += 1;
        }
    }
    out
}

/// Story: the official etcd dashboard and alerts read families keel did
/// not export (process memory, client traffic, peer send failures, backend
/// commit durations, gRPC handling times, streams counted as handled). keel
/// ships both, adapted, and every metric they name is in /metrics.
#[tokio::test]
async fn every_metric_the_dashboard_and_alerts_read_exists() {
    let cluster = Cluster::start(3, &["--metrics", "extensive"]);
    let s = &cluster.members[0];
    let mut c = s.client().await;
    c.put("k", "v", None).await.unwrap();
    c.get("k", None).await.unwrap();
    // A watch stream that ends: counted in grpc_server_handled_total.
    {
        let (mut w, _stream) = c.watch("k", None).await.unwrap();
        w.cancel().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, body) = http_get(s.port, "/metrics").unwrap();
    let exported: BTreeSet<String> = body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(String::from)
        .collect();
    let mut missing = Vec::new();
    for file in [
        "docs/monitoring/alerts.yaml",
        "docs/monitoring/dashboard.json",
    ] {
        let text = std::fs::read_to_string(file).unwrap();
        let names = metric_names(&text);
        assert!(names.len() >= 10, "{file}: only {names:?}");
        for name in names {
            // `up` is Prometheus's own, per scrape target.
            if name != "up" && !exported.contains(&name) {
                missing.push(format!("{file}: {name}"));
            }
        }
    }
    assert!(missing.is_empty(), "not in /metrics: {missing:?}");
    // The watch stream that ended is counted as handled.
    assert!(
        body.lines()
            .any(|l| l.starts_with(r#"grpc_server_handled_total{grpc_code="#)
                && l.contains(r#"grpc_method="Watch""#)),
        "{body}"
    );
}
