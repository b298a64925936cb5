//! The middleware's metrics: refused input by reason and outage
//! decisions, counted under a test recorder.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use http::{HeaderValue, StatusCode};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::{CompositeKey, MetricKind};
use offstate_core::telemetry;
use offstate_core::{OutagePolicy, SessionId};
use offstate_tower::{SessionLayer, SigningKey};
use support::*;

/// The counter `name` with the one label `label`, in `recorded`.
fn counter(recorded: &[(CompositeKey, DebugValue)], name: &str, label: (&str, &str)) -> u64 {
    recorded
        .iter()
        .find_map(|(key, value)| {
            let k = key.key();
            let labels: Vec<_> = k.labels().map(|l| (l.key(), l.value())).collect();
            (key.kind() == MetricKind::Counter && k.name() == name && labels == [label])
                .then_some(value)
        })
        .map_or(0, |value| match value {
            DebugValue::Counter(n) => *n,
            other => panic!("{name} is not a counter: {other:?}"),
        })
}

#[test]
fn refused_input_and_outage_decisions_are_counted_by_reason() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let fixture = Fixture::new();
            let plain = app(fixture.layer().with_max_value_len(64));
            // Too long: 431.
            let long = format!("__Host-offstate={}", "A".repeat(65));
            let response = send(&plain, request("GET", "/read", &[&long])).await;
            assert_eq!(
                response.status(),
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            );
            // Garbage, twice (two requests), and not UTF-8: anonymous.
            for _ in 0..2 {
                let response =
                    send(&plain, request("GET", "/read", &["__Host-offstate=nope"])).await;
                assert_eq!(response.status(), StatusCode::OK);
            }
            let latin1 = HeaderValue::from_bytes(b"__Host-offstate=caf\xe9").unwrap();
            let response = send(&plain, request_with("GET", "/read", &[("cookie", latin1)])).await;
            assert_eq!(response.status(), StatusCode::OK);
            // An empty value is no input at all.
            send(&plain, request("GET", "/read", &["__Host-offstate="])).await;
            // Signed: an unsigned ID has a bad signature.
            let signed = app(fixture
                .layer()
                .with_signing_key(SigningKey::new([7u8; 32]).unwrap()));
            let forged = format!("__Host-offstate={}", SessionId::generate());
            let response = send(&signed, request("GET", "/read", &[&forged])).await;
            assert_eq!(response.status(), StatusCode::OK);

            // The store goes down while a user has a session.
            let response = send(&plain, request("POST", "/write", &[])).await;
            let cookie = pair(&set_cookie(&response));
            fixture.flaky.fail_reads(true);
            let response = send(&plain, request("GET", "/read", &[&cookie])).await;
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            let open = app(SessionLayer::new(
                fixture
                    .sessions
                    .clone()
                    .with_outage_policy(OutagePolicy::FailOpen),
            ));
            let response = send(&open, request("GET", "/read", &[&cookie])).await;
            assert_eq!(response.status(), StatusCode::OK);
        });
    });
    let recorded: Vec<_> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| (key, value))
        .collect();
    let refused = |reason| counter(&recorded, telemetry::REFUSED_INPUT, ("reason", reason));
    assert_eq!(refused("too_long"), 1);
    assert_eq!(refused("malformed"), 2);
    assert_eq!(refused("not_utf8"), 1);
    assert_eq!(refused("bad_signature"), 1);
    let decision = |d| counter(&recorded, telemetry::OUTAGE_DECISIONS, ("decision", d));
    assert_eq!(decision("fail_closed"), 1);
    assert_eq!(decision("fail_open"), 1);
}
