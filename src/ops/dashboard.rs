//! The web dashboard: static pages built into the binary (no CDN, nothing fetched from
//! elsewhere), an overview for them, and a live feed.
//!
//! The pages call the same `/v1` admin API as the CLI, with the same bearer token, which the
//! sign-in form keeps in the open tab only (`sessionStorage`). The feed (`/v1/events`, Server-Sent
//! Events) sends the overview once per refresh interval and every status change this runner
//! writes, as it writes it. The overview's row counts come from one request to the database per
//! interval, shared by every open page and by `/metrics`
//! ([`crate::runner::RunnerStatus::row_counts`]); the changes come from the runner's own
//! attempts ([`crate::runner::activity`]) and cost the database nothing.

use std::convert::Infallible;

use axum::extract::State;
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::ops::state::OpsState;
use crate::store::StatusCounts;

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/app.css");

/// Pages may load only what this binary serves; nothing inline, nothing from elsewhere.
const POLICY: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; \
    script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// What the overview page shows; also the `overview` event of the feed.
pub async fn overview(state: &OpsState) -> Value {
    let backends = state.admin.backends();
    let status = &state.status;
    let counts = status.row_counts(&state.store).await;
    let now = chrono::Utc::now();
    let backends: Vec<Value> = backends
        .iter()
        .map(|runtime| {
            let name = &runtime.backend.name;
            let counts: Option<StatusCounts> = counts.as_ref().and_then(|all| {
                all.iter()
                    .find(|(table, _)| *table == runtime.backend.table)
                    .map(|(_, of_table)| *of_table)
            });
            json!({
                "name": name,
                "table": runtime.backend.table,
                "counts": counts,
                "series": status.activity.series(name, now),
            })
        })
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "runner_id": status.runner_id,
        "database": !state.store.health().is_down(),
        "live_queries": status.live_queries_armed(),
        "in_flight": status.metrics.in_flight.get(),
        "concurrency": status.concurrency,
        "rescues": status.metrics.lease_rescues.get(),
        "refresh_ms": state.refresh.as_millis() as u64,
        "backends": backends,
    })
}

pub async fn overview_endpoint(State(state): State<OpsState>) -> Response {
    axum::Json(overview(&state).await).into_response()
}

/// `GET /v1/events`: the overview every refresh interval, and each status change as it is
/// written. A page that falls more than the feed's buffer behind gets a `lagged` event and
/// reloads what it shows.
pub async fn events(
    State(state): State<OpsState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let changes = state.status.activity.subscribe();
    let stopped = state.stop.clone().cancelled_owned();
    let mut ticks = tokio::time::interval(state.refresh);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let stream = futures::stream::unfold(
        (state, changes, ticks),
        |(state, mut changes, mut ticks)| async move {
            let event = tokio::select! {
                _ = ticks.tick() => {
                    Event::default().event("overview").json_data(overview(&state).await)
                }
                change = changes.recv() => match change {
                    Ok(change) => Event::default().event("job").json_data(change),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        Event::default().event("lagged").json_data(json!({"missed": missed}))
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            };
            let event = event.unwrap_or_else(|_| Event::default().comment("unserialisable event"));
            Some((Ok(event), (state, changes, ticks)))
        },
    );
    Sse::new(stream.take_until(stopped)).keep_alive(KeepAlive::default())
}
