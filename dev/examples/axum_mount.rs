//! Mounting heapprof's `/debug/pprof` handler in an existing axum server,
//! instead of running heapprof's own.
//!
//! ```text
//! cargo run -p heapprof-dev --release --example axum_mount
//! go tool pprof -top http://127.0.0.1:3000/debug/pprof/heap
//! ```
//!
//! `heapprof::http::handle` takes the path and the query and returns the
//! status, content type, content disposition (set on binary profiles, so a
//! browser saves them as `heap`, `allocs`, …) and body; any framework can
//! serve those. It
//! blocks (building a profile takes milliseconds, `?seconds=N` waits N
//! seconds), so it runs on tokio's blocking pool.

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::IntoResponse;
use axum::routing::get;

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

async fn pprof(method: Method, uri: Uri) -> impl IntoResponse {
    let (path, query) = (uri.path().to_owned(), uri.query().unwrap_or("").to_owned());
    // axum sends HEAD to this GET route: a HEAD (a probe) must not take
    // `delta_heap`'s window from the scraper.
    let answer = tokio::task::spawn_blocking(move || match method {
        Method::HEAD => heapprof::http::handle_head(&path, &query),
        _ => heapprof::http::handle(&path, &query),
    })
    .await;
    let mut headers = HeaderMap::new();
    match answer {
        Ok(r) => {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(r.content_type),
            );
            if let Some(d) = r.content_disposition {
                headers.insert(header::CONTENT_DISPOSITION, HeaderValue::from_static(d));
            }
            (
                StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                headers,
                r.body,
            )
        }
        Err(e) => {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                headers,
                format!("profile task failed: {e}").into_bytes(),
            )
        }
    }
}

/// What the service holds: a cache built at start, about 4 MB, so that
/// the first profile has something to show (`build_cache` at the top).
#[inline(never)]
fn build_cache() -> Vec<String> {
    (0..100_000)
        .map(|i| format!("cached entry {i:>24}"))
        .collect()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let cache = std::sync::Arc::new(build_cache());
    let app = Router::new()
        .route(
            "/",
            get(move || async move { format!("{} entries cached\n", cache.len()) }),
        )
        .route("/debug/pprof/", get(pprof))
        .route("/debug/pprof/{*profile}", get(pprof));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!(
        "serving on http://{}; try go tool pprof -top http://{0}/debug/pprof/heap",
        listener.local_addr()?
    );
    axum::serve(listener, app).await
}
