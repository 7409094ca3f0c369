//! Server state, routing, authentication, body limits and the path from a request to a
//! blocking job and back.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use dgpo_core::Error;
use dgpo_core::model::LanguageModel;
use dgpo_core::retrieve::Retriever;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use serde::de::DeserializeOwned;

use super::body::{ApiError, Resp, full, json, ms_since};
use super::cancel::{Cancel, CancelOnDrop};
use super::limits::{Limiter, Permit, Rejected};
use super::metrics::{Gauges, Metrics, Phase};

/// Settings fixed at start-up.
#[derive(Debug, Clone)]
pub struct Config {
    /// Bearer token required on every route but /health.
    pub api_key: Option<String>,
    /// Name reported for the model.
    pub model_name: String,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Per-request deadline, queueing included.
    pub request_timeout: Duration,
    /// New-token cap per completion and per agent turn.
    pub max_tokens: usize,
    /// Agent search-turn cap.
    pub max_turns: usize,
    /// Default passages per search.
    pub topk: usize,
    /// Passages-per-search cap.
    pub max_topk: usize,
    /// Queries-per-/retrieve cap.
    pub max_batch: usize,
}

/// What loading produces.
pub struct Loaded {
    /// The language model.
    pub model: Arc<dyn LanguageModel>,
    /// The retriever.
    pub retriever: Arc<dyn Retriever>,
}

/// Shared server state.
pub struct App {
    /// Settings.
    pub cfg: Config,
    /// Set once loading has finished.
    pub loaded: OnceLock<Loaded>,
    /// Counters.
    pub metrics: Metrics,
    /// Admission control.
    pub limiter: Limiter,
    /// Set when the shutdown deadline passes: every job stops at its next token.
    pub kill: Arc<AtomicBool>,
    /// Set when shutdown has begun (/health reports it).
    pub draining: AtomicBool,
}

/// Bodies larger than the limit are read and thrown away up to this size before the error
/// answer, so that a client which sends its whole body before reading (most do) sees the 413
/// instead of a connection reset.
const DRAIN_CAP: usize = 32 << 20;
/// How long reading a request body may take.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

impl App {
    /// A server with `slots` job slots and a queue of `queue`.
    pub fn new(cfg: Config, slots: usize, queue: usize) -> Self {
        App {
            cfg,
            loaded: OnceLock::new(),
            metrics: Metrics::default(),
            limiter: Limiter::new(slots, queue),
            kill: Arc::new(AtomicBool::new(false)),
            draining: AtomicBool::new(false),
        }
    }

    /// The loaded model and retriever (handlers run only after the readiness check).
    pub fn loaded(&self) -> Result<&Loaded, ApiError> {
        self.loaded.get().ok_or_else(|| {
            ApiError::unavailable(
                "loading",
                "the model and the retriever are still loading",
                1,
            )
        })
    }

    /// A cancellation token with this server's deadline.
    pub fn cancel_token(&self, start: Instant) -> Arc<Cancel> {
        Cancel::new(start + self.cfg.request_timeout, self.kill.clone())
    }

    /// Wait for a job slot (503 when full or when the deadline passes in the queue).
    pub async fn admit(&self, cancel: &Cancel) -> Result<Permit, ApiError> {
        let t = Instant::now();
        match self.limiter.admit(cancel.deadline()).await {
            Ok(p) => {
                self.metrics.phase_ms(Phase::Queue, ms_since(t));
                Ok(p)
            }
            Err(Rejected::Full) => {
                self.metrics.rejected();
                Err(ApiError::unavailable(
                    "overloaded",
                    format!(
                        "server busy: {} jobs running and {} waiting; retry later",
                        self.limiter.slots(),
                        self.limiter.max_queue()
                    ),
                    1,
                ))
            }
            Err(Rejected::Timeout) => {
                self.metrics.timeout();
                Err(ApiError::unavailable(
                    "timeout",
                    "the request timed out waiting for a free slot",
                    1,
                ))
            }
        }
    }

    /// Count a job that stopped early (called by the job itself, which runs to its end even
    /// when the handler that started it is gone).
    pub fn note_outcome<T>(&self, r: &dgpo_core::Result<T>, cancel: &Cancel) {
        if let Err(Error::Cancelled) = r {
            if cancel.timed_out() {
                self.metrics.timeout();
            } else {
                self.metrics.cancelled();
            }
        }
    }

    /// Map a job's error to an answer.
    pub fn job_error(&self, e: Error, cancel: &Cancel) -> ApiError {
        match e {
            Error::Cancelled if cancel.timed_out() => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                format!(
                    "generation stopped at the {:.0} s request deadline",
                    self.cfg.request_timeout.as_secs_f64()
                ),
            ),
            Error::Cancelled => {
                // Nobody reads this (the client is gone or the server is stopping); 499 is
                // the usual "client closed request" status, visible in /metrics.
                ApiError::new(
                    StatusCode::from_u16(499).expect("valid"),
                    "cancelled",
                    "cancelled",
                )
            }
            Error::Invalid(m) => ApiError::bad_request(m),
            other => ApiError::internal(other.to_string()),
        }
    }

    fn gauges(&self) -> Gauges {
        Gauges {
            ready: self.loaded.get().is_some(),
            queued: self.limiter.queued(),
            running: self.limiter.running(),
            slots: self.limiter.slots(),
            max_queue: self.limiter.max_queue(),
        }
    }
}

/// Run `f` on the blocking pool holding `permit`; if the awaiting handler is dropped (client
/// gone), `cancel` fires and the job stops at its next token.
pub async fn run_job<T: Send + 'static>(
    cancel: &Arc<Cancel>,
    permit: Permit,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    let mut guard = CancelOnDrop(Some(cancel.clone()));
    let r = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        f()
    })
    .await;
    guard.disarm();
    r.map_err(|e| ApiError::internal(format!("the job failed: {e}")))
}

/// Constant-time comparison: the time taken depends only on the length of `expected`.
fn ct_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = (given.len() ^ expected.len()) as u64;
    for (i, e) in expected.iter().enumerate() {
        let g = given.get(i).copied().unwrap_or(0);
        diff |= u64::from(g ^ e);
    }
    std::hint::black_box(diff) == 0
}

fn check_auth(cfg: &Config, req: &Request<Incoming>) -> Result<(), ApiError> {
    let Some(key) = &cfg.api_key else {
        return Ok(());
    };
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
    let Some(h) = req.headers().get(header::AUTHORIZATION) else {
        return Err(unauthorized(
            "missing API key: send Authorization: Bearer KEY",
        ));
    };
    let h = h.as_bytes();
    let token = if h.len() > 7 && h[..7].eq_ignore_ascii_case(b"bearer ") {
        h[7..].trim_ascii()
    } else {
        return Err(unauthorized(
            "the Authorization header must be `Bearer KEY`",
        ));
    };
    if ct_eq(token, key.as_bytes()) {
        Ok(())
    } else {
        Err(unauthorized("wrong API key"))
    }
}

/// Read and throw away what is left of a body (bounded in size and time), so that the client
/// gets to read the error answer.
async fn drain(req: Request<Incoming>) {
    if req
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
    {
        // The client waits for a go-ahead before sending: it never will get one.
        return;
    }
    let mut body = req.into_body();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let mut n = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(d) = frame.data_ref() {
                n += d.len();
                if n > DRAIN_CAP {
                    break;
                }
            }
        }
    })
    .await;
}

/// Read a JSON body of type `T` (413 over the limit, 400 for anything malformed).
pub async fn read_json<T: DeserializeOwned>(
    app: &App,
    req: Request<Incoming>,
) -> Result<T, ApiError> {
    let limit = app.cfg.max_body_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("the request body is larger than {limit} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        drain(req).await;
        return Err(too_large());
    }
    let collected =
        tokio::time::timeout(BODY_TIMEOUT, Limited::new(req.into_body(), limit).collect())
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "invalid_request_error",
                    "timed out reading the request body",
                )
            })?;
    let bytes = match collected {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(e) => {
            return Err(ApiError::bad_request(format!(
                "cannot read the request body: {e}"
            )));
        }
    };
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            "the request body is empty (expected a JSON object)",
        ));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// The fixed label of a path (unknown paths share one label: bounded metric cardinality).
fn route_label(path: &str) -> &'static str {
    match path {
        "/retrieve" => "/retrieve",
        "/v1/agent" => "/v1/agent",
        "/v1/chat/completions" => "/v1/chat/completions",
        "/v1/models" => "/v1/models",
        "/health" => "/health",
        "/metrics" => "/metrics",
        _ => "other",
    }
}

/// hyper's entry point: never fails, every error is a JSON answer.
pub async fn handle(app: Arc<App>, req: Request<Incoming>) -> Result<Resp, Infallible> {
    let t = Instant::now();
    let route = route_label(req.uri().path());
    let resp = match dispatch(&app, req).await {
        Ok(r) => r,
        Err(e) => e.response(),
    };
    app.metrics
        .request(route, resp.status().as_u16(), t.elapsed());
    Ok(resp)
}

fn health(app: &App) -> Resp {
    let (status, state) = if app.draining.load(Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting_down")
    } else if app.loaded.get().is_some() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "loading")
    };
    let mut v = serde_json::json!({"status": state});
    if let Some(l) = app.loaded.get() {
        v["model"] = app.cfg.model_name.clone().into();
        v["backend"] = l.model.info().backend.clone().into();
        v["retriever"] = l.retriever.describe().into();
    }
    let mut b = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json");
    if status != StatusCode::OK {
        b = b.header(header::RETRY_AFTER, "1");
    }
    b.body(full(v.to_string())).expect("static headers")
}

async fn dispatch(app: &Arc<App>, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let path = req.uri().path();
    let method = req.method().clone();
    let not_allowed = |allow: &str| {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            format!("{method} is not allowed here (use {allow})"),
        )
    };
    if path == "/health" {
        return if method == Method::GET || method == Method::HEAD {
            Ok(health(app))
        } else {
            let e = not_allowed("GET");
            drain(req).await;
            Err(e)
        };
    }
    if let Err(e) = check_auth(&app.cfg, &req) {
        drain(req).await;
        return Err(e);
    }
    let want = match path {
        "/retrieve" | "/v1/agent" | "/v1/chat/completions" => Method::POST,
        "/v1/models" | "/metrics" => Method::GET,
        other => {
            let e = ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!(
                    "no route {other:?}; routes: POST /retrieve, POST /v1/agent, POST /v1/chat/completions, GET /v1/models, GET /health, GET /metrics"
                ),
            );
            drain(req).await;
            return Err(e);
        }
    };
    if method != want {
        let e = not_allowed(want.as_str());
        drain(req).await;
        return Err(e);
    }
    if path == "/metrics" {
        return Ok(Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
            .body(full(app.metrics.render(&app.gauges())))
            .expect("static headers"));
    }
    if let Err(e) = app.loaded() {
        drain(req).await;
        return Err(e);
    }
    match path {
        "/retrieve" => super::retrieve::handle(app, req).await,
        "/v1/agent" => super::agent::handle(app, req).await,
        "/v1/chat/completions" => super::openai::completions(app, req).await,
        "/v1/models" => Ok(json(&super::openai::models(app))),
        _ => Err(ApiError::internal("unrouted path")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_compare_is_correct() {
        assert!(ct_eq(b"secret-key", b"secret-key"));
        assert!(!ct_eq(b"secret-kez", b"secret-key"));
        assert!(!ct_eq(b"secret-key-longer", b"secret-key"));
        assert!(!ct_eq(b"secret", b"secret-key"));
        assert!(!ct_eq(b"", b"secret-key"));
    }
}
