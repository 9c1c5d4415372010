//! The metrics server's request routing on hostile request heads: a route, never a panic; only
//! `GET /metrics[?…] HTTP/1.x` serves the metrics.
#![no_main]

use etcd_backup::metrics::http::{Route, route};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if route(data) == Route::Metrics {
        assert!(data.starts_with(b"GET /metrics"));
    }
});
