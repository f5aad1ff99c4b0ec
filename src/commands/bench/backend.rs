//! The benchmark's HTTP backend.

use super::*;

/// A zero-latency (or fixed-latency) local HTTP backend that records pickup latency and counts
/// the requests it answered, so waiting for a run to finish costs the database nothing.
pub(super) struct BenchBackend {
    pub(super) url: String,
    pub(super) state: BackendState,
}

#[derive(Clone)]
pub(super) struct BackendState {
    pub(super) delay: Duration,
    pub(super) latencies: Arc<Mutex<Vec<f64>>>,
    pub(super) answered: Arc<(AtomicUsize, Notify)>,
}

impl BenchBackend {
    pub(super) async fn start(delay: Duration) -> BenchBackend {
        let state = BackendState {
            delay,
            latencies: Arc::default(),
            answered: Arc::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let url = format!("http://{}", listener.local_addr().expect("bound"));
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(state.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        BenchBackend { url, state }
    }

    pub(super) fn answered(&self) -> usize {
        self.state.answered.0.load(Ordering::SeqCst)
    }

    /// Waits until the backend has answered `count` requests in all.
    pub(super) async fn until_answered(&self, count: usize) {
        let (answered, changed) = &*self.state.answered;
        loop {
            let notified = changed.notified();
            if answered.load(Ordering::SeqCst) >= count {
                return;
            }
            notified.await;
        }
    }
}

pub(super) async fn receive(State(state): State<BackendState>, body: Bytes) -> &'static str {
    if let Ok(payload) = serde_json::from_slice::<serde_json::Value>(&body)
        && let Some(sent) = payload.get("t").and_then(serde_json::Value::as_u64)
    {
        let latency_ms = (now_micros().saturating_sub(u128::from(sent))) as f64 / 1000.0;
        state
            .latencies
            .lock()
            .expect("latency lock")
            .push(latency_ms);
    }
    if !state.delay.is_zero() {
        tokio::time::sleep(state.delay).await;
    }
    let (answered, changed) = &*state.answered;
    answered.fetch_add(1, Ordering::SeqCst);
    changed.notify_waiters();
    "ok"
}
