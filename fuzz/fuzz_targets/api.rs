//! The agent's API socket as a client drives it: whatever bytes arrive, the server answers each
//! line with one JSON line (an answer or an error) and ends cleanly.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use netguard::api::{serve_connection, Limits, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
    })
}

async fn echo(request: Request) -> serde_json::Value {
    serde_json::json!({ "got": request })
}

fuzz_target!(|data: &[u8]| {
    runtime().block_on(async {
        // Small limits, so that the line limit is met often.
        let limits = Limits {
            max_line: 256,
            ..Limits::default()
        };
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let served = tokio::spawn(serve_connection(server, limits, echo));
        client.write_all(data).await.expect("send");
        client.shutdown().await.expect("close the sending side");
        let mut answers = Vec::new();
        client
            .read_to_end(&mut answers)
            .await
            .expect("read answers");
        served.await.expect("no panic").expect("served");
        for line in answers.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            serde_json::from_slice::<serde_json::Value>(line).expect("every answer is JSON");
        }
    });
});
