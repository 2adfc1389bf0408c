//! The HTTP server (axum): dashboard at `/`, JSON under `/api/`, Prometheus
//! `/metrics`, and `/healthz` / `/readyz` for orchestrators. With
//! `admin.http_token` set, everything but the probes needs `Authorization: Bearer`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;

use super::{metrics, tables};
use crate::runtime::Runtime;

const DASHBOARD: &str = include_str!("dashboard.html");

pub fn router(runtime: Arc<Runtime>) -> Router {
    let protected = Router::new()
        .route("/", get(|| async { Html(DASHBOARD) }))
        .route("/metrics", get(metrics_text))
        .route("/api/queries", get(queries))
        .route("/api/timeline", get(timeline))
        .route(
            "/api/pools",
            get(|State(r): State<Arc<Runtime>>| async move { Json(tables::pools(&r).to_json()) }),
        )
        .route(
            "/api/backends",
            get(
                |State(r): State<Arc<Runtime>>| async move { Json(tables::backends(&r).to_json()) },
            ),
        )
        .route(
            "/api/clients",
            get(|State(r): State<Arc<Runtime>>| async move { Json(tables::clients(&r).to_json()) }),
        )
        .route(
            "/api/tenancy",
            get(|State(r): State<Arc<Runtime>>| async move { Json(super::tenancy::json(&r)) }),
        )
        .route(
            "/api/limits",
            get(|State(r): State<Arc<Runtime>>| async move {
                Json(super::protection::limits(&r).to_json())
            }),
        )
        .route(
            "/api/memory",
            get(|State(r): State<Arc<Runtime>>| async move { Json(super::memory::parts(&r)) }),
        )
        .route(
            "/api/cache",
            get(|State(r): State<Arc<Runtime>>| async move { Json(super::cache::json(&r)) }),
        )
        .route(
            "/api/advisories",
            get(|State(r): State<Arc<Runtime>>| async move { Json(r.advisors.list()) }),
        )
        .layer(middleware::from_fn_with_state(
            runtime.clone(),
            require_token,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .merge(protected)
        .with_state(runtime)
}

/// Serves HTTP on `listener` until the process ends.
pub async fn serve_http(runtime: Arc<Runtime>, listener: TcpListener) -> std::io::Result<()> {
    axum::serve(listener, router(runtime)).await
}

async fn require_token(
    State(runtime): State<Arc<Runtime>>,
    request: Request,
    next: Next,
) -> Response {
    let config = runtime.config();
    if let Some(token) = config.admin.http_token.as_deref().filter(|t| !t.is_empty()) {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(token) {
            return (StatusCode::UNAUTHORIZED, "bearer token required").into_response();
        }
    }
    next.run(request).await
}

async fn metrics_text(State(runtime): State<Arc<Runtime>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics::render(&runtime),
    )
}

async fn queries(State(runtime): State<Arc<Runtime>>) -> impl IntoResponse {
    Json(runtime.stats.snapshot().queries.clone())
}

async fn timeline(State(runtime): State<Arc<Runtime>>) -> impl IntoResponse {
    let snapshot = runtime.stats.snapshot();
    Json(serde_json::json!({
        "timeline": snapshot.timeline,
        "clients": runtime.cancels.client_count(),
        "dropped_events": snapshot.dropped_events,
    }))
}

/// Not ready once shutdown has begun (SIGTERM). Otherwise ready when every database's
/// primary accepts TCP connections (and, with
/// `protection.readyz_overloaded`, the pools are not shedding clients).
async fn readyz(State(runtime): State<Arc<Runtime>>) -> impl IntoResponse {
    if runtime.shutdown.phase() != crate::server::shutdown::Phase::Running {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down".to_string());
    }
    if let Some(overloaded) = super::protection::overloaded(&runtime) {
        return (StatusCode::SERVICE_UNAVAILABLE, overloaded);
    }
    let config = runtime.config();
    for (name, db) in &config.databases {
        let Ok(endpoint) = db.primary_endpoint(name) else {
            continue;
        };
        let reachable = tokio::time::timeout(
            Duration::from_secs(1),
            crate::pool::ServerStream::connect(&endpoint.address()),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        if !reachable {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("primary of {name} unreachable"),
            );
        }
    }
    (StatusCode::OK, "ready".to_string())
}
