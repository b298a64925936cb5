//! Middleware overhead in process: the app of `offstate_bench::overhead`
//! (one handler reads one key, the other writes one key) behind offstate's
//! `SessionLayer` and behind tower-sessions' `SessionManagerLayer`, each
//! over its own in-memory store, driven with tower `oneshot`; the request
//! carries the cookie of an existing session. `scripts/bench.sh` reads the
//! means back into the report.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use offstate_bench::overhead::{self, Handler};
use offstate_bench::server::Variant;

fn overhead(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("overhead");
    let apps: Vec<_> = [
        ("offstate", Variant::Offstate),
        ("tower-sessions", Variant::TowerSessions),
    ]
    .into_iter()
    .map(|(name, variant)| {
        let app = overhead::router(variant).unwrap();
        let cookie = runtime
            .block_on(overhead::start_session(&app))
            .unwrap()
            .expect("the first write sets a cookie");
        (name, app, cookie)
    })
    .collect();
    // The two libraries one after the other on each handler, so that the
    // pair a ratio compares is measured as close together in time as
    // criterion allows (this machine's speed drifts).
    for (handler, suffix) in [(Handler::Read, "read"), (Handler::Write, "write")] {
        for (name, app, cookie) in &apps {
            group.bench_function(format!("{name}-{suffix}"), |b| {
                b.to_async(&runtime).iter(|| async {
                    overhead::request(app, handler, Some(cookie)).await.unwrap()
                });
            });
        }
    }
    let plain = overhead::router(Variant::Plain).unwrap();
    group.bench_function("no-sessions", |b| {
        b.to_async(&runtime).iter(|| async {
            overhead::request(&plain, Handler::Read, None)
                .await
                .unwrap()
        });
    });
    group.finish();
}

criterion_group!(benches, overhead);
criterion_main!(benches);
