//! `inprocess-requests APP HANDLER N`: starts a session on the in-process
//! overhead app of `APP` (`offstate`, `tower-sessions` or `plain`), then
//! sends it `N` requests to `HANDLER` (`read` or `write`) through tower
//! `oneshot`, and exits. `offstate-bench icount` runs it under callgrind
//! twice, with two `N`, so start-up cancels out of the difference.
//!
//! With `OFFSTATE_BENCH_RECORDER=prometheus` in the environment, the
//! Prometheus recorder the cart example uses is installed first, so the
//! figure includes recording every metric of `offstate_core::telemetry`;
//! without it, the metrics calls find no recorder (the default).

use std::process::ExitCode;

use offstate_bench::BenchError;
use offstate_bench::overhead::{self, Handler};
use offstate_bench::server::Variant;

const USAGE: &str = "usage: inprocess-requests offstate|tower-sessions|plain read|write N";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("inprocess-requests: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<(), BenchError> {
    let [app, handler, n] = args else {
        return Err(BenchError::Usage(USAGE.into()));
    };
    let variant: Variant = app.parse()?;
    let handler = match handler.as_str() {
        "read" => Handler::Read,
        "write" => Handler::Write,
        other => {
            return Err(BenchError::Usage(format!(
                "unknown handler {other:?}\n{USAGE}"
            )));
        }
    };
    let n: u64 = n
        .parse()
        .map_err(|_| BenchError::Usage(format!("bad request count {n:?}\n{USAGE}")))?;
    match std::env::var("OFFSTATE_BENCH_RECORDER").as_deref() {
        Ok("prometheus") => {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .map_err(|e| BenchError::Usage(format!("cannot install the recorder: {e}")))?;
        }
        Ok("" | "none") | Err(_) => {}
        Ok(other) => {
            return Err(BenchError::Usage(format!(
                "OFFSTATE_BENCH_RECORDER={other:?}: expected prometheus or none"
            )));
        }
    }
    // One thread, as in the criterion bench.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let app = overhead::router(variant)?;
        let cookie = overhead::start_session(&app).await?;
        overhead::repeat(&app, handler, cookie.as_deref(), n).await
    })
}
