//! The operations listener: `/healthz`, `/readyz`, `/metrics`, the admin API under `/v1`, and the
//! dashboard at `/` ([`crate::ops::dashboard`]), which uses that API.
//!
//! The admin API needs a bearer token (`SPKY_RUNNER_ADMIN_TOKEN` or `--admin-token-file`).
//! Without one it is switched off, and a listener on anything but loopback refuses to start, so
//! neither jobs nor metrics are ever exposed beyond the machine by accident. Every answer of the
//! admin API is JSON; a malformed request gets a 4xx with `{"error": "..."}`.

use std::net::SocketAddr;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use surrealdb::types::ToSql;

use crate::ops::admin::{AdminError, EnqueueRequest, ListQuery};
use crate::ops::bulk::{BulkDelete, BulkRetry};
use crate::ops::dashboard;
pub use crate::ops::state::OpsState;

/// Refuses a listener that would expose the API beyond this machine without a token.
pub fn check_exposure(addr: &SocketAddr, token: Option<&SecretString>) -> Result<(), String> {
    if !addr.ip().is_loopback() && token.is_none() {
        return Err(format!(
            "--listen {addr} is not a loopback address: set SPKY_RUNNER_ADMIN_TOKEN or --admin-token-file first"
        ));
    }
    Ok(())
}

pub fn router(state: OpsState) -> Router {
    let admin = Router::new()
        .route("/v1/jobs", post(enqueue).get(list))
        .route("/v1/jobs/retry", post(bulk_retry))
        .route("/v1/jobs/delete", post(bulk_delete))
        .route("/v1/overview", get(dashboard::overview_endpoint))
        .route("/v1/events", get(dashboard::events))
        .route("/v1/jobs/{id}", get(show))
        .route("/v1/jobs/{id}/retry", post(retry))
        .route("/v1/jobs/{id}/cancel", post(cancel))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route("/", get(dashboard::index))
        .route("/assets/app.js", get(dashboard::script))
        .route("/assets/app.css", get(dashboard::style))
        .merge(admin)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "this endpoint does not take that method",
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            loopback_names_only,
        ))
        .with_state(state)
}

/// On a loopback listener, refuses a request whose `Host` names anything but a loopback host:
/// a page in the operator's browser that rebinds its own name to 127.0.0.1 sends its own name.
async fn loopback_names_only(
    State(state): State<OpsState>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let on_loopback = state.bound.is_some_and(|addr| addr.ip().is_loopback());
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if on_loopback && !host.is_some_and(is_loopback_host) {
        return error(
            StatusCode::MISDIRECTED_REQUEST,
            "this listener is on loopback and answers only requests to 127.0.0.1, [::1] or localhost",
        );
    }
    next.run(request).await
}

/// `127.0.0.1:8787`, `[::1]:8787`, `localhost` and the like.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// What the listener answers while the runner waits for its database: alive (`/healthz` 200),
/// not ready (`/readyz` 503), and nothing else yet.
pub fn starting_router() -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|| async {
                let body = json!({"database": false, "live_queries": false});
                (StatusCode::SERVICE_UNAVAILABLE, Json(body))
            }),
        )
        .fallback(|| async {
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "starting: waiting for the database",
            )
        })
}

/// Serves `router` until `shutdown` completes.
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: OpsState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = match &self {
            AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AdminError::NotFound(_) => StatusCode::NOT_FOUND,
            AdminError::Conflict(_) => StatusCode::CONFLICT,
            AdminError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        error(status, self.to_string())
    }
}

async fn require_token(
    State(state): State<OpsState>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let mut response = match refusal(&state, &headers) {
        None => next.run(request).await,
        Some(refused) => refused,
    };
    // Admin answers carry job data: no browser or proxy cache may keep a copy.
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

/// The answer to a request whose `headers` lack the admin token; `None` when they carry it.
fn refusal(state: &OpsState, headers: &HeaderMap) -> Option<Response> {
    let Some(expected) = &state.admin_token else {
        return Some(error(
            StatusCode::FORBIDDEN,
            "the admin API is off: start the runner with SPKY_RUNNER_ADMIN_TOKEN or --admin-token-file",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(given) if constant_time_eq(given.as_bytes(), expected.expose_secret().as_bytes()) => {
            None
        }
        Some(_) => Some(error(StatusCode::UNAUTHORIZED, "wrong admin token")),
        None => Some(error(
            StatusCode::UNAUTHORIZED,
            "missing `Authorization: Bearer <admin token>`",
        )),
    }
}

/// Compares without an early exit, so response timing does not reveal how much of a guess matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn ready(State(state): State<OpsState>) -> Response {
    let db_up = !state.store.health().is_down();
    let live = state.status.live_queries_armed();
    let body = json!({ "database": db_up, "live_queries": live });
    let status = if db_up && live {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn metrics(State(state): State<OpsState>, headers: HeaderMap) -> Response {
    // Exposed beyond this machine, the metrics (tables, backends, counts) need the token too.
    let exposed = state.bound.is_some_and(|addr| !addr.ip().is_loopback());
    if exposed && let Some(refused) = refusal(&state, &headers) {
        return refused;
    }
    // A read (at most one per interval, shared with the dashboard) sets the row gauges.
    state.status.row_counts(&state.store).await;
    state.status.copy_conflicts(&state.store);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.status.metrics.encode(),
    )
        .into_response()
}

/// Any request the API cannot read (its body, query or path) is the caller's mistake: a 400 with
/// axum's message (serde's, for a body), in the same `{"error": ...}` shape as every other
/// refusal. The extractors below refuse with it, so no handler maps rejections itself.
struct ApiRejection(String);

impl From<JsonRejection> for ApiRejection {
    fn from(rejection: JsonRejection) -> Self {
        ApiRejection(rejection.body_text())
    }
}

impl From<QueryRejection> for ApiRejection {
    fn from(rejection: QueryRejection) -> Self {
        ApiRejection(rejection.body_text())
    }
}

impl From<PathRejection> for ApiRejection {
    fn from(rejection: PathRejection) -> Self {
        ApiRejection(rejection.body_text())
    }
}

impl IntoResponse for ApiRejection {
    fn into_response(self) -> Response {
        error(StatusCode::BAD_REQUEST, self.0)
    }
}

/// [`Json`], refused as an [`ApiRejection`].
#[derive(FromRequest)]
#[from_request(via(Json), rejection(ApiRejection))]
struct ApiJson<T>(T);

/// [`Query`], refused as an [`ApiRejection`].
#[derive(FromRequestParts)]
#[from_request(via(Query), rejection(ApiRejection))]
struct ApiQuery<T>(T);

/// [`Path`], refused as an [`ApiRejection`].
#[derive(FromRequestParts)]
#[from_request(via(Path), rejection(ApiRejection))]
struct ApiPath<T>(T);

async fn enqueue(
    State(state): State<OpsState>,
    ApiJson(request): ApiJson<EnqueueRequest>,
) -> Response {
    match state.admin.enqueue(request).await {
        Ok(id) => (StatusCode::CREATED, Json(json!({ "id": id.to_sql() }))).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn list(State(state): State<OpsState>, ApiQuery(query): ApiQuery<ListQuery>) -> Response {
    respond(state.admin.list(query).await)
}

async fn show(State(state): State<OpsState>, ApiPath(id): ApiPath<String>) -> Response {
    respond(state.admin.show(&id).await)
}

async fn retry(State(state): State<OpsState>, ApiPath(id): ApiPath<String>) -> Response {
    respond(state.admin.retry(&id).await)
}

async fn cancel(State(state): State<OpsState>, ApiPath(id): ApiPath<String>) -> Response {
    respond(state.admin.cancel(&id).await)
}

async fn bulk_retry(
    State(state): State<OpsState>,
    ApiJson(request): ApiJson<BulkRetry>,
) -> Response {
    respond(state.admin.retry_matching(request).await)
}

async fn bulk_delete(
    State(state): State<OpsState>,
    ApiJson(request): ApiJson<BulkDelete>,
) -> Response {
    respond(state.admin.delete_matching(request).await)
}

fn respond<T: serde::Serialize>(result: Result<T, AdminError>) -> Response {
    match result {
        Ok(value) => Json(value).into_response(),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::is_loopback_host;
    use proptest::prelude::*;

    proptest! {
        /// Any address with any port passes exactly when it is a loopback address.
        #[test]
        fn an_address_passes_exactly_when_it_is_loopback(ip: std::net::IpAddr, port: u16) {
            let host = std::net::SocketAddr::new(ip, port).to_string();
            prop_assert_eq!(is_loopback_host(&host), ip.is_loopback(), "{}", host);
        }
    }

    #[test]
    fn only_loopback_names_pass_the_host_guard() {
        for host in [
            "127.0.0.1:8787",
            "127.0.0.1",
            "[::1]:8787",
            "localhost:1",
            "LOCALHOST",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "attacker.example",
            "10.0.0.1:8787",
            "localhost.attacker.example",
            "[::2]:80",
            "",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
