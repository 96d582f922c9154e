//! The HTTP server a process serves: started once per process, on the address its setting
//! names, stopped with the process after open requests finish.

use std::time::Duration;

use super::StartError;
use crate::config::{Config, HttpConfig};
use crate::tick::Engine;

/// A running HTTP server and the switch that stops it.
pub struct HttpServer {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl HttpServer {
    /// Binds `at` (the address and the setting that named it) and serves `app` in the
    /// background, `limits` bounding each connection; `routes` is logged.
    pub async fn start(
        at: (std::net::SocketAddr, &str),
        app: axum::Router,
        limits: HttpConfig,
        routes: &str,
    ) -> Result<HttpServer, StartError> {
        let (addr, setting) = at;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| StartError::Refused(format!("cannot listen on {addr} ({setting}): {e}")))?;
        let bound =
            listener.local_addr().map_err(|e| StartError::Refused(format!("cannot read the bound address: {e}")))?;
        tracing::info!(addr = %bound, "HTTP server listening: {routes}");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(crate::http::serve_app(listener, app, limits, async move {
            let _ = stopped.await;
        }));
        Ok(HttpServer { stop, task })
    }

    /// Stops accepting, lets open requests finish (up to 5 s), and logs how it ended.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        match tokio::time::timeout(Duration::from_secs(5), self.task).await {
            Ok(Ok(Ok(()))) => tracing::info!("HTTP server stopped"),
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "HTTP server ended with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "HTTP server task failed"),
            Err(_) => tracing::warn!("HTTP server did not stop within 5 s; leaving it"),
        }
    }
}

/// The instance's HTTP face (`run`, `serve`): the address checked as safe to bind for the
/// admin API's tokens, then served like any other.
pub async fn start_instance(engine: &Engine, config: &Config, ticking: bool) -> Result<HttpServer, StartError> {
    let addr = config.http.listen;
    crate::http::check_bind(addr, &config.admin_tokens).map_err(StartError::Refused)?;
    if !config.admin_tokens.is_empty() {
        tracing::info!("admin API enabled: /api/ takes bearer tokens");
    }
    let app = crate::http::router(crate::http::AppState::new(engine.clone(), ticking));
    let routes = "/, /metrics, /health, /status, /api/";
    HttpServer::start((addr, "http.listen / --listen"), app, config.http.clone(), routes).await
}
