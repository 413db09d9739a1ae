//! The operator's listener (`--metrics ADDR`), never the apps' port:
//! `/metrics` in Prometheus text format, `/healthz` (the process is up)
//! and `/readyz` (config loaded, every eagerly started tenant checked,
//! not shutting down).

use std::convert::Infallible;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::metrics;
use crate::runtime::body::{host_page, ResponseBody};

/// Bind `addr` (before the apps' port, so a mistake stops the start) and
/// serve the operator's endpoints on it for the life of the process.
pub async fn start(addr: std::net::SocketAddr) -> Result<std::net::SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("--metrics {addr}: cannot listen there"))?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            tokio::spawn(async move {
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service_fn(answer));
                let _ = conn.await;
            });
        }
    });
    Ok(local)
}

async fn answer(req: Request<Incoming>) -> Result<Response<ResponseBody>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(host_page(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method Not Allowed",
        ));
    }
    Ok(match req.uri().path() {
        "/metrics" => {
            let mut res = Response::new(ResponseBody::full(metrics::encode()));
            res.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            res
        }
        "/healthz" => host_page(StatusCode::OK, "ok"),
        "/readyz" if metrics::DRAINING.load(Ordering::Acquire) => host_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down, finishing the requests in flight",
        ),
        "/readyz" if metrics::READY.load(Ordering::Acquire) => host_page(StatusCode::OK, "ready"),
        "/readyz" => host_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: loading the config and starting its apps",
        ),
        _ => host_page(StatusCode::NOT_FOUND, "Not Found"),
    })
}
