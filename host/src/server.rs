//! The HTTP(S) server of `cairn serve` and `cairn restore`: our own accept
//! loop around the axum router, optional TLS (rustls), read timeouts, and a
//! controlled shutdown bounded by a grace period whatever clients do.
//!
//! Every connection is a task in one `JoinSet`. A TLS connection first goes
//! through its handshake, bounded by `HANDSHAKE_TIMEOUT` and dropped at once
//! when shutdown begins; then it is served like a plain one (a header read
//! timeout, a body read timeout, graceful shutdown), so the grace period
//! covers both alike.

use crate::service::{Config, Service};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::rustls;

/// How long a client may take to send a request's header, and its body.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client may take to complete a TLS handshake (from the moment
/// its TCP connection is accepted).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The router as hyper serves it.
type Svc = hyper_util::service::TowerToHyperService<axum::Router>;

/// Loads a PEM certificate chain and private key into a TLS acceptor (rustls
/// with the ring provider). Every error names the file and what is wrong
/// with it, so that `cairn serve` can refuse before it opens the store or binds.
pub fn load_tls(cert: &Path, key: &Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::{self, PemObject};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let read = |what: &str, path: &Path| {
        std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read the TLS {what} file {}: {e}", path.display()))
    };
    let cert_pem = read("certificate (--tls-cert)", cert)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("the TLS certificate file {} is not valid PEM: {e}", cert.display()))?;
    if chain.is_empty() {
        anyhow::bail!(
            "the TLS certificate file {} holds no certificate (expected a PEM block '-----BEGIN CERTIFICATE-----')",
            cert.display()
        );
    }
    let key_pem = read("key (--tls-key)", key)?;
    let private_key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => anyhow::anyhow!(
            "the TLS key file {} holds no private key (expected a PEM block '-----BEGIN PRIVATE KEY-----', RSA PRIVATE KEY or EC PRIVATE KEY)",
            key.display()
        ),
        e => anyhow::anyhow!("the TLS key file {} is not valid PEM: {e}", key.display()),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    provider
        .key_provider
        .load_private_key(private_key.clone_key())
        .map_err(|e| anyhow::anyhow!("the TLS key file {} holds a key that cannot be used: {e}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("TLS configuration: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|e| anyhow::anyhow!("the TLS certificate {} and key {} cannot be used together: {e}", cert.display(), key.display()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Runs the host: starts the service, serves the API on `listen` (HTTPS
/// when `tls` is given) until SIGTERM/SIGINT, then shuts down within `grace`
/// for the connections and persists live instances.
pub fn serve(
    config: Config,
    api: crate::api::ApiConfig,
    listen: &str,
    grace: Duration,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let data = config.data_dir.display().to_string();
        let svc = Service::start(config).await?;
        crate::trim_memory_every(Duration::from_secs(5));
        // Beyond loopback, a token is required: refuse to start, before binding, while none exists.
        if api.require_token && svc.store.tokens().await?.is_empty() {
            svc.shutdown().await;
            anyhow::bail!(
                "refusing to listen on {listen}, beyond loopback, while the store holds no API token: anyone who can reach it could use the API. Create the first token offline with `cairn token create --role admin --data {data}` (add --store URL for PostgreSQL), then start again (`cairn serve --data {data}`, with --tls-cert/--tls-key: over plain HTTP tokens travel in clear) and send it with --token / CAIRN_TOKEN; or listen on 127.0.0.1"
            );
        }
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
        let local = listener.local_addr()?;
        let isolated = if svc.is_isolated() { " as an ISOLATED environment: outbound effects are recorded and printed" } else { "" };
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!("serving {scheme}://{local} (data in {data}){isolated}; {}", svc.startup());
        if api.require_token && tls.is_none() {
            tracing::warn!(
                "listening on {listen}, beyond loopback, over plain HTTP: bearer tokens and every request and answer travel in clear. Serve HTTPS with --tls-cert FILE --tls-key FILE, or put a TLS-terminating proxy in front"
            );
        }
        // Our own accept loop rather than axum::serve: read timeouts, TLS,
        // and a graceful shutdown that waits `grace` at most, whatever clients do.
        let app = crate::api::router_with(svc.clone(), api).layer(axum::middleware::map_request(|req: axum::extract::Request| async move {
            req.map(|body| axum::body::Body::new(TimedBody::new(body, BODY_READ_TIMEOUT)))
        }));
        let service = hyper_util::service::TowerToHyperService::new(app);
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut connections = tokio::task::JoinSet::new();
        let signal = shutdown_signal();
        tokio::pin!(signal);
        loop {
            while connections.try_join_next().is_some() {}
            let stream = tokio::select! {
                _ = &mut signal => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: keep serving.
                        tracing::warn!("accepting a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let (http, service, mut stop, tls) = (http.clone(), service.clone(), stop_rx.clone(), tls.clone());
            connections.spawn(async move {
                let Some(acceptor) = tls else {
                    return serve_connection(http, stream, service, stop).await;
                };
                // The handshake is bounded, and abandoned when shutdown begins:
                // a client that connects and sends nothing holds nothing.
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(acceptor, stream, local));
                let stream = tokio::select! {
                    done = handshake => match done {
                        Ok(Some(stream)) => stream,
                        Ok(None) | Err(_) => return,
                    },
                    _ = stop.wait_for(|s| *s) => return,
                };
                serve_connection(http, stream, service, stop).await
            });
        }
        drop(listener);
        let _ = stop_tx.send(true);
        // Long polls of workers end now rather than hold the grace period.
        svc.tasks.close_polls();
        // So do the console's event streams.
        svc.events.close();
        while connections.try_join_next().is_some() {}
        let open = connections.len();
        tracing::info!("shutting down: stopped accepting; {open} connection(s) open, {} ms grace", grace.as_millis());
        let drained = tokio::time::timeout(grace, async { while connections.join_next().await.is_some() {} }).await.is_ok();
        if !drained {
            let left = connections.len();
            connections.shutdown().await;
            tracing::warn!("{left} connection(s) still open after the grace period were closed");
        }
        tracing::info!("shutting down: persisting live instances");
        svc.shutdown().await;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Serves HTTP/1.1 on one connection until it ends; once `stop` turns true,
/// finishes the request in flight and closes.
async fn serve_connection<I>(http: hyper::server::conn::http1::Builder, io: I, service: Svc, mut stop: tokio::sync::watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = http.serve_connection(hyper_util::rt::TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = stop.wait_for(|s| *s) => conn.as_mut().graceful_shutdown(),
    }
    let _ = conn.await;
}

/// The TLS handshake of one accepted connection. A client that speaks plain
/// HTTP to the HTTPS port gets a plain 400 saying so, then the connection
/// closes; None then, and on any handshake failure.
async fn handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    local: std::net::SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    let mut first = [0u8; 1];
    match stream.peek(&mut first).await {
        Ok(1..) => {}
        _ => return None,
    }
    // Every TLS connection opens with a handshake record (content type 22).
    if first[0] != 0x16 {
        refuse_plain_http(stream, local).await;
        return None;
    }
    acceptor.accept(stream).await.ok()
}

/// Answers a plain HTTP request on the HTTPS port with a JSON 400 in plain
/// HTTP (so that the CLI and curl show why), then closes.
async fn refuse_plain_http(mut stream: tokio::net::TcpStream, local: std::net::SocketAddr) {
    // Read the request's header first: closing with unread data would reset
    // the connection before the client reads the answer.
    let mut buf = vec![0u8; 16 << 10];
    let mut got = 0;
    while got < buf.len() && !buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf[got..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => got += n,
        }
    }
    let body = serde_json::json!({
        "error": format!("this port serves HTTPS only: use https://{local} (cairn COMMAND --server https://…, with --ca-cert FILE for a self-signed certificate)")
    })
    .to_string();
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    if stream.write_all(answer.as_bytes()).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    // Drain what the client still sends (a request body), briefly, so the
    // close does not reset the connection under the answer.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Ok(1..) = stream.read(&mut buf).await {}
    })
    .await;
}

/// Whether every address `listen` resolves to is a loopback address.
pub fn is_loopback(listen: &str) -> bool {
    use std::net::ToSocketAddrs;
    match listen.to_socket_addrs() {
        Ok(addrs) => {
            let addrs: Vec<_> = addrs.collect();
            !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())
        }
        Err(_) => false,
    }
}

/// A request body that fails once reading it has taken longer than its limit.
struct TimedBody<B> {
    inner: B,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
}

impl<B> TimedBody<B> {
    fn new(inner: B, limit: Duration) -> TimedBody<B> {
        TimedBody { inner, deadline: Box::pin(tokio::time::sleep(limit)), limit }
    }
}

impl<B> http_body::Body for TimedBody<B>
where
    B: http_body::Body + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = B::Data;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<B::Data>, Self::Error>>> {
        use std::task::Poll;
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(r) => Poll::Ready(r.map(|r| r.map_err(Into::into))),
            Poll::Pending => match std::future::Future::poll(this.deadline.as_mut(), cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(format!("the request body was not received within {} s", this.limit.as_secs()).into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
