//! The `service` workload: an HTTP service of the kind heapprof is meant
//! to run in, served by the configuration binary itself so that its
//! allocator is the one measured. The load generator is
//! `common/load.rs`, run by the driver (`benches/overhead.rs`).
//!
//! `<binary> service <scale>` binds `127.0.0.1:0`, prints `port=N`, and
//! serves until its standard input closes; it then prints `user_ns=N`, the
//! user CPU time of its whole life, and exits. (`scale` is the driver's
//! business: it sets the number of requests.) Routes:
//!
//! * `POST /orders`: an order as JSON (a customer and a list of items) in,
//!   a quote of a few KiB as JSON out: a priced line per item and a list
//!   of recommendations, all built as a `serde_json::Value`.
//! * `/debug/pprof/…`: heapprof's handler, where heapprof is the
//!   allocator.

use axum::Router;
use axum::body::Bytes;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::io::Write as _;

use super::Allocator;

/// Worker threads of the service's runtime: the machine's two cores.
const WORKERS: usize = 2;
/// Recommendations in each quote.
const RECOMMENDATIONS: usize = 12;

/// Serves until standard input closes, then exits the process.
pub fn serve(allocator: Allocator) -> ! {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        println!("port={}", listener.local_addr().unwrap().port());
        let mut app = Router::new().route("/orders", post(quote));
        if allocator.heapprof {
            app = app.route("/debug/pprof/{*profile}", get(pprof));
        }
        std::thread::spawn(exit_when_input_closes);
        axum::serve(listener, app).await.expect("serve");
    });
    unreachable!("axum::serve returns only on an error");
}

/// Waits for the end of standard input, then prints the process's user CPU
/// time and exits.
fn exit_when_input_closes() {
    // An error ends the service as the end of input does.
    let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
    // Not `println!`, which panics when no one reads the output any more
    // (a driver that died): this thread must reach the exit.
    let _ = writeln!(std::io::stdout(), "user_ns={}", super::user_time_ns());
    std::process::exit(0);
}

/// A price in cents for a SKU, the same for every request (FNV-1a of its
/// name).
fn unit_price_cents(sku: &str) -> u64 {
    let hash = sku.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    100 + hash % 20_000
}

/// `POST /orders`: the order parsed, a quote built and serialized.
async fn quote(body: Bytes) -> Response {
    let order: Value = match serde_json::from_slice(&body) {
        Ok(order) => order,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("not an order: {e}\n")).into_response(),
    };
    let currency = order["currency"].as_str().unwrap_or("EUR").to_owned();
    let mut total_cents = 0;
    let lines: Vec<Value> = order["items"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|item| {
            let sku = item["sku"].as_str().unwrap_or("unknown");
            let quantity = item["quantity"].as_u64().unwrap_or(1);
            let unit = unit_price_cents(sku);
            total_cents += unit * quantity;
            json!({
                "sku": sku,
                "description": format!("{} for {}", sku.replace('-', " "), order["customer"]["name"]),
                "quantity": quantity,
                "unit_price": format!("{}.{:02} {currency}", unit / 100, unit % 100),
                "line_total": format!("{}.{:02} {currency}", unit * quantity / 100, unit * quantity % 100),
                "warehouses": ["AMS-1", "FRA-2", "WAW-1"],
                "in_stock": !unit.is_multiple_of(7),
            })
        })
        .collect();
    let recommendations: Vec<Value> = (0..RECOMMENDATIONS)
        .map(|i| {
            let sku = format!("rec-{}-{i}", total_cents % 97);
            json!({
                "sku": sku,
                "title": format!("Customers who bought this also bought {sku}"),
                "price": unit_price_cents(&sku),
                "score": 1.0 / (i + 1) as f64,
            })
        })
        .collect();
    let quote = json!({
        "order": order["id"],
        "customer": order["customer"],
        "currency": currency,
        "lines": lines,
        "total": format!("{}.{:02}", total_cents / 100, total_cents % 100),
        "recommendations": recommendations,
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(&quote).expect("a Value serializes"),
    )
        .into_response()
}

/// `/debug/pprof/…`: heapprof's handler on tokio's blocking pool, since
/// building a profile blocks.
async fn pprof(uri: Uri) -> Response {
    let (path, query) = (uri.path().to_owned(), uri.query().unwrap_or("").to_owned());
    match tokio::task::spawn_blocking(move || heapprof::http::handle(&path, &query)).await {
        Ok(r) => (
            StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            [(header::CONTENT_TYPE, r.content_type)],
            r.body,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("profile task failed: {e}\n"),
        )
            .into_response(),
    }
}
