//! The closed-loop HTTP load generator of the side-by-side benchmarks.
//!
//! `concurrency` clients, each on its own keep-alive HTTP/1.1 connection,
//! each sending its next request as soon as its last one is answered, all
//! on one thread (a current-thread tokio runtime and hyper's client
//! connections). The generator runs on the same cores as the server it
//! measures, so it should take as little of them as it can: the OS thread
//! per client it replaced (ureq) took 0.18 ms of CPU per request, about a
//! third of the machine at concurrency 32 (BENCHMARKS.md, issue 10's seventh
//! step). `cairn bench --only http-api` drives Cairn with it, and
//! `cairn bench --only peer-load` drives a peer's ingress (bench/restate),
//! so that both systems are measured with the same generator.
//!
//! Owns nothing beyond one run: its runtime, connections and latencies.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// One request of a run: `POST path` with a JSON body.
pub struct Request {
    pub path: String,
    pub body: String,
}

/// What a run did.
pub struct LoadRun {
    /// Requests sent (fewer than asked when the deadline came first).
    pub issued: usize,
    pub completed: usize,
    pub failed: usize,
    pub first_error: Option<String>,
    pub wall: Duration,
    /// Latencies of the completed requests in ms, sorted.
    pub latencies: Vec<f64>,
}

/// A request answered but not as `accept` wants it: what was wrong.
pub type Verdict = Result<(), String>;

/// Sends `count` requests (`request(i)` for i in 0..count) to `addr` from
/// `concurrency` clients in a closed loop, each answer judged by
/// `accept(status, body)`; no new request after `deadline`, and none waits
/// longer than `timeout`. Runs on a thread of its own, so it may be called
/// from anywhere, a tokio runtime included.
pub fn closed_loop(
    addr: SocketAddr,
    count: usize,
    concurrency: usize,
    deadline: Instant,
    timeout: Duration,
    request: &(dyn Fn(usize) -> Request + Sync),
    accept: &(dyn Fn(u16, &[u8]) -> Verdict + Sync),
) -> LoadRun {
    let load = Load { addr, count, deadline, timeout, request, accept };
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a current-thread tokio runtime");
            rt.block_on(run(&load, concurrency))
        })
        .join()
        .expect("the load generator's thread")
    })
}

/// What every client of one run shares.
struct Load<'a> {
    addr: SocketAddr,
    count: usize,
    deadline: Instant,
    timeout: Duration,
    request: &'a (dyn Fn(usize) -> Request + Sync),
    accept: &'a (dyn Fn(u16, &[u8]) -> Verdict + Sync),
}

/// The results the clients of one run add to.
#[derive(Default)]
struct Tally {
    issued: usize,
    latencies: Vec<f64>,
    failed: usize,
    first_error: Option<String>,
}

async fn run(load: &Load<'_>, concurrency: usize) -> LoadRun {
    let tally = RefCell::new(Tally { latencies: Vec::with_capacity(load.count), ..Tally::default() });
    let started = Instant::now();
    let clients = (0..concurrency.min(load.count)).map(|_| client(load, &tally));
    futures_util::future::join_all(clients).await;
    let wall = started.elapsed();
    let mut t = tally.into_inner();
    t.latencies.sort_by(|a, b| a.total_cmp(b));
    LoadRun { issued: t.issued, completed: t.latencies.len(), failed: t.failed, first_error: t.first_error, wall, latencies: t.latencies }
}

/// One client: its connection, made again after a failed request.
async fn client(load: &Load<'_>, tally: &RefCell<Tally>) {
    let mut connection: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> = None;
    loop {
        let i = {
            let mut t = tally.borrow_mut();
            if t.issued >= load.count || Instant::now() >= load.deadline {
                return;
            }
            t.issued += 1;
            t.issued - 1
        };
        let r = (load.request)(i);
        let sent = Instant::now();
        let answered = tokio::time::timeout(load.timeout, send(load.addr, &mut connection, r)).await;
        let verdict = match answered {
            Ok(Ok((status, body))) => (load.accept)(status, &body),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("no answer within {:?}", load.timeout)),
        };
        let mut t = tally.borrow_mut();
        match verdict {
            Ok(()) => t.latencies.push(sent.elapsed().as_secs_f64() * 1000.0),
            Err(e) => {
                connection = None;
                t.failed += 1;
                t.first_error.get_or_insert(e);
            }
        }
    }
}

/// Sends one request on the client's connection (made first if it has none).
async fn send(
    addr: SocketAddr,
    connection: &mut Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
    r: Request,
) -> Result<(u16, Bytes), String> {
    if connection.as_ref().is_none_or(|c| c.is_closed()) {
        *connection = Some(connect(addr).await?);
    }
    let c = connection.as_mut().expect("a connection was just made");
    c.ready().await.map_err(|e| format!("connection to {addr}: {e}"))?;
    let req = http::Request::post(r.path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(r.body)))
        .map_err(|e| format!("building the request: {e}"))?;
    let resp = c.send_request(req).await.map_err(|e| format!("request to {addr}: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map_err(|e| format!("reading the answer from {addr}: {e}"))?.to_bytes();
    Ok((status, body))
}

async fn connect(addr: SocketAddr) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String> {
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connecting to {addr}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| format!("connecting to {addr}: {e}"))?;
    let (sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    // The connection's I/O runs beside the clients, on the same thread.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// The p-th percentile as load.mjs takes it: the element at ceil(p/100 × n) − 1.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[i.saturating_sub(1).min(sorted.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    /// A real HTTP server on a loopback port: 200 for every request, except
    /// 500 for the path `/fail`; it records the paths and bodies it saw.
    /// The (path, body) of each request a test server saw.
    type Seen = Arc<Mutex<Vec<(String, String)>>>;

    fn server() -> (SocketAddr, Seen, Arc<AtomicUsize>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (s, c) = (seen.clone(), connections.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    c.fetch_add(1, Ordering::Relaxed);
                    let s = s.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                            let s = s.clone();
                            async move {
                                let path = req.uri().path().to_string();
                                let body = req.into_body().collect().await?.to_bytes();
                                s.lock().unwrap().push((path.clone(), String::from_utf8_lossy(&body).into_owned()));
                                let mut resp = hyper::Response::new(Full::new(Bytes::from_static(b"{}")));
                                if path == "/fail" {
                                    *resp.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
                                }
                                Ok::<_, hyper::Error>(resp)
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        });
        (addr, seen, connections)
    }

    fn ok(status: u16, _: &[u8]) -> Verdict {
        if status == 200 {
            Ok(())
        } else {
            Err(format!("status {status}"))
        }
    }

    #[test]
    fn every_request_is_sent_once_from_one_connection_per_client_and_each_failure_is_counted() {
        let (addr, seen, connections) = server();
        let request = |i: usize| Request {
            path: if i == 7 { "/fail".into() } else { format!("/order/k{i}/run") },
            body: format!(r#"{{"i":{i}}}"#),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let r = closed_loop(addr, 200, 8, deadline, Duration::from_secs(10), &request, &ok);
        assert_eq!((r.issued, r.completed, r.failed), (200, 199, 1));
        assert_eq!(r.first_error.as_deref(), Some("status 500"));
        assert!(r.latencies.windows(2).all(|w| w[0] <= w[1]), "latencies come sorted");
        let seen = seen.lock().unwrap();
        let mut bodies: Vec<&str> = seen.iter().map(|(_, b)| b.as_str()).collect();
        bodies.sort();
        bodies.dedup();
        assert_eq!(bodies.len(), 200, "each request once, with its own body");
        assert!(seen.iter().any(|(p, _)| p == "/order/k0/run"));
        // Eight clients, one keep-alive connection each; the one whose
        // request failed made a new one.
        assert_eq!(connections.load(Ordering::Relaxed), 9);
    }

    #[test]
    fn nothing_is_sent_after_the_deadline_and_a_closed_port_is_a_failure_per_request() {
        let (addr, seen, _) = server();
        let request = |i: usize| Request { path: format!("/{i}"), body: String::new() };
        let r = closed_loop(addr, 50, 4, Instant::now(), Duration::from_secs(10), &request, &ok);
        assert_eq!((r.issued, r.completed, r.failed), (0, 0, 0));
        assert!(seen.lock().unwrap().is_empty());
        assert!(percentile(&r.latencies, 50.0).is_nan(), "no latency, no percentile");

        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let r = closed_loop(closed, 5, 2, Instant::now() + Duration::from_secs(60), Duration::from_secs(10), &request, &ok);
        assert_eq!((r.issued, r.completed, r.failed), (5, 0, 5));
        assert!(r.first_error.unwrap().contains("connecting to"), "the error names what failed");
    }

    #[test]
    fn percentiles_are_taken_as_load_mjs_takes_them() {
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 50.0), 50.0);
        assert_eq!(percentile(&sorted, 99.0), 99.0);
        assert_eq!(percentile(&sorted, 100.0), 100.0);
        assert_eq!(percentile(&[3.0], 50.0), 3.0);
    }
}
