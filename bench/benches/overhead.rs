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
    for (name, variant) in [
        ("offstate", Variant::Offstate),
        ("tower-sessions", Variant::TowerSessions),
    ] {
        let app = overhead::router(variant).unwrap();
        let cookie = runtime
            .block_on(overhead::start_session(&app))
            .unwrap()
            .expect("the first write sets a cookie");
        group.bench_function(format!("{name}-read"), |b| {
            b.to_async(&runtime).iter(|| async {
                overhead::request(&app, Handler::Read, Some(&cookie))
                    .await
                    .unwrap()
            });
        });
        group.bench_function(format!("{name}-write"), |b| {
            b.to_async(&runtime).iter(|| async {
                overhead::request(&app, Handler::Write, Some(&cookie))
                    .await
                    .unwrap()
            });
        });
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
