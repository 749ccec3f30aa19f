//! A pass-through proxy with no governance: the floor for any gateway built
//! on Steward's stack on this machine. The same actix-web server settings and
//! the same HTTP client library as Steward; it forwards the request body to
//! the upstream and the answer's bytes back as they arrive, parsing nothing,
//! judging nothing, storing nothing.

use actix_web::{web, App, HttpResponse, HttpServer};
use futures_util::TryStreamExt;

struct Upstream {
    http: reqwest::Client,
    url: String,
}

async fn forward(upstream: web::Data<Upstream>, body: web::Bytes) -> HttpResponse {
    let sent = upstream.http.post(&upstream.url).header("content-type", "application/json").body(body).send().await;
    match sent {
        Ok(answer) => HttpResponse::Ok()
            .content_type("text/event-stream")
            .insert_header(("cache-control", "no-cache"))
            .streaming(answer.bytes_stream().map_err(actix_web::error::ErrorBadGateway)),
        Err(err) => HttpResponse::BadGateway().body(err.to_string()),
    }
}

/// Serves on `port`, forwarding to the replay upstream on `upstream_port`, until killed.
/// With `shared`, one HTTP client (and connection pool) serves both workers, as in
/// Steward; otherwise each worker has its own, so a connection's task runs on
/// the thread that uses it.
pub fn serve(port: u16, upstream_port: u16, shared: bool) -> std::io::Result<()> {
    actix_web::rt::System::new().block_on(async move {
        let url = format!("http://127.0.0.1:{upstream_port}/v1/chat/completions");
        let client = || reqwest::Client::builder().tcp_nodelay(true).build().expect("http client");
        let common = client();
        HttpServer::new(move || {
            let http = if shared { common.clone() } else { client() };
            App::new()
                .app_data(web::Data::new(Upstream { http, url: url.clone() }))
                .app_data(web::PayloadConfig::new(1 << 20))
                .route("/v1/chat/completions", web::post().to(forward))
                .route("/health", web::get().to(HttpResponse::Ok))
        })
        .tcp_nodelay(true)
        .backlog(4096)
        .workers(2)
        .bind(("127.0.0.1", port))?
        .run()
        .await
    })
}
