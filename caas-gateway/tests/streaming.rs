//! Bodies stream through in both directions: 1 GiB up and 1 GiB down pass with a bounded
//! memory footprint (this test runs alone in its process so RSS is its own).

#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use support::*;

const GIB: u64 = 1 << 30;

/// Samples RSS every 20 ms until stopped; returns the peak.
fn sample_peak_rss() -> (Arc<AtomicBool>, tokio::task::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let task = tokio::spawn(async move {
        let mut peak = 0;
        while !s.load(SeqCst) {
            peak = peak.max(rss_bytes());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        peak
    });
    (stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_up_and_one_gib_down_stream_with_bounded_memory() {
    let up = Upstream::start("big").await;
    let gw = Gw::start(snapshot(vec![("big", app(&[("v1", &[up.addr])]))])).await;
    let c = client();
    // Warm up pools and allocator before taking the baseline.
    let (s, _, _) = send(&c, get(&gw.url("/download/1048576"), "big.caas.local")).await;
    assert_eq!(s, 200);
    let baseline = rss_bytes();
    let (stop, peak) = sample_peak_rss();

    let started = Instant::now();
    let chunk = Bytes::from(vec![7u8; 256 * 1024]);
    let sent = Arc::new(AtomicU64::new(0));
    let s2 = sent.clone();
    let chunks = stream::unfold(0u64, move |n| {
        let chunk = chunk.clone();
        let sent = s2.clone();
        async move {
            if n >= GIB {
                return None;
            }
            sent.fetch_add(chunk.len() as u64, SeqCst);
            Some((Ok::<_, hyper::Error>(Frame::data(chunk)), n + 256 * 1024))
        }
    });
    let req = hyper::Request::post(gw.url("/upload"))
        .header("host", "big.caas.local")
        .body(BodyExt::boxed(StreamBody::new(chunks)))
        .unwrap();
    let (status, _, body) = send(&c, req).await;
    assert_eq!(status, 200);
    assert_eq!(body, GIB.to_string(), "upstream received every byte");
    let up_time = started.elapsed();

    let started = Instant::now();
    let resp = c
        .request(get(&gw.url(&format!("/download/{GIB}")), "big.caas.local"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(d) = frame.unwrap().into_data() {
            got += d.len() as u64;
        }
    }
    assert_eq!(got, GIB, "client received every byte");
    let down_time = started.elapsed();

    stop.store(true, SeqCst);
    let peak = peak.await.unwrap();
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "streamed 1 GiB up in {up_time:?}, 1 GiB down in {down_time:?}; RSS baseline {} MiB, peak growth {} MiB",
        baseline >> 20,
        growth >> 20
    );
    // Client, gateway and upstream share this process: buffering any body whole would add
    // a GiB here. The design target for the gateway alone is < 32 MiB.
    assert!(
        growth < 32 << 20,
        "RSS grew {} MiB while streaming",
        growth >> 20
    );
}
