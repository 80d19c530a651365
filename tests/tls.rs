//! HTTPS (issue 9): `cairn serve --tls-cert --tls-key` serves the API over
//! TLS (rustls), the CLI talks to it with `--ca-cert` (a self-signed
//! certificate made here with rcgen), plain HTTP and untrusting clients are
//! refused with clear messages, bad TLS files stop `serve` before it binds,
//! and a client that never finishes its handshake holds neither a task nor a
//! controlled shutdown.

use cairn_tests::{cairn_bin, eventually, postgres_store, Host, Out, TempDir};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A self-signed certificate for 127.0.0.1 and localhost, written as
/// `DIR/NAME-cert.pem` and `DIR/NAME-key.pem`.
fn self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()]).expect("rcgen");
    let cert = dir.join(format!("{name}-cert.pem"));
    let key = dir.join(format!("{name}-key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

fn address(h: &Host) -> String {
    h.url.trim_start_matches("https://").to_string()
}

/// `cairn ARGS` with the environment given here only (no CA, no token unless given).
fn cli(env: &[(&str, &str)], args: &[&str]) -> Out {
    let mut cmd = Command::new(cairn_bin());
    cmd.args(args).env_remove("CAIRN_CA_CERT").env_remove("CAIRN_TOKEN").env_remove("CAIRN_SERVER");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run cairn");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `cairn serve --data DIR/store ARGS` that is expected to exit by itself:
/// its exit status and what it printed.
fn serve_expecting_exit(dir: &Path, args: &[&str]) -> (ExitStatus, String) {
    let log = dir.join("serve-exit.log");
    let mut child = Command::new(cairn_bin())
        .args(["serve", "--data"])
        .arg(dir.join("store"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn cairn serve");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cairn serve {args:?} did not exit:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status, std::fs::read_to_string(&log).unwrap())
}

#[test]
fn the_cli_deploys_starts_and_lists_over_https() {
    let dir = TempDir::new("tls");
    let (cert, key) = self_signed(dir.path(), "server");
    let h = Host::start_tls(dir.path(), &["--quiet-guests"], &cert, &key, &cert);
    assert!(h.url.starts_with("https://127.0.0.1:"), "{}", h.url);
    let log = h.server_log();
    assert!(log.contains(&format!("cairn: serving {}", h.url)), "{log}");

    // Through the CLI, trusting the certificate with CAIRN_CA_CERT (Host::cairn sets it).
    let d = h.deploy("hello", None);
    assert_eq!(d["name"], "hello", "{d}");
    let out = h.cairn(&["start", "hello", "--input", r#"{"name":"Ada"}"#, "--wait"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains(r#""text": "Hello, Ada!""#), "{}", out.stdout);
    let listed = h.ok_json(&["ls"]);
    let instances = listed["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 1, "{listed}");
    assert_eq!(instances[0]["process"], "hello", "{listed}");
    // And with the flag rather than the environment.
    let ca = cert.to_str().unwrap();
    let out = cli(&[], &["definitions", "--json", "--server", &h.url, "--ca-cert", ca]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("\"hello\""), "{}", out.stdout);

    // A client that does not trust the certificate is refused, saying what to do.
    let out = cli(&[("CAIRN_SERVER", &h.url)], &["ls"]);
    assert_eq!(out.code, 3, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("TLS with the Cairn server at https://127.0.0.1:"), "{}", out.stderr);
    assert!(out.stderr.contains("invalid peer certificate"), "{}", out.stderr);
    assert!(out.stderr.contains("--ca-cert"), "{}", out.stderr);
    // Nor does one that trusts another certificate.
    let (other, _) = self_signed(dir.path(), "other");
    let out = cli(&[("CAIRN_SERVER", &h.url), ("CAIRN_CA_CERT", other.to_str().unwrap())], &["ls"]);
    assert_eq!(out.code, 3, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("invalid peer certificate"), "{}", out.stderr);
    // A --ca-cert that is not a certificate is a usage error naming the file.
    let out = cli(&[("CAIRN_SERVER", &h.url)], &["ls", "--ca-cert", key.to_str().unwrap()]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains(key.to_str().unwrap()) && out.stderr.contains("holds no certificate"), "{}", out.stderr);

    // Plain HTTP to the HTTPS port: a plain 400 that says so, nothing served.
    let plain = format!("http://{}", address(&h));
    let out = cli(&[], &["ls", "--server", &plain]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("this port serves HTTPS only"), "{}", out.stderr);
    let mut raw = TcpStream::connect(address(&h)).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    raw.write_all(b"GET /v1/instances HTTP/1.1\r\nHost: cairn\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = raw.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("serves HTTPS only") && !answer.contains("hello"), "{answer}");

    // HTTPS to a plain HTTP host is a TLS failure too, not a hang.
    let plain_dir = TempDir::new("tls-plain");
    let p = Host::start(plain_dir.path(), &["--quiet-guests"], &[]);
    let https = p.url.replace("http://", "https://");
    let out = cli(&[("CAIRN_CA_CERT", ca)], &["ls", "--server", &https]);
    assert_eq!(out.code, 3, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("TLS with the Cairn server"), "{}", out.stderr);

    // The host is unharmed by all of it.
    assert_eq!(h.get("/v1/health").0, 200);
}

#[test]
fn serve_refuses_bad_tls_files_and_half_the_flags_before_binding() {
    let dir = TempDir::new("tls-bad");
    let (cert, key) = self_signed(dir.path(), "server");
    let (_, other_key) = self_signed(dir.path(), "other");
    let missing = dir.path().join("missing-key.pem");
    let (cert_s, key_s, other_key_s, missing_s) =
        (cert.to_str().unwrap(), key.to_str().unwrap(), other_key.to_str().unwrap(), missing.to_str().unwrap());
    let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let cases: [(&[&str], &[&str]); 5] = [
        // A key file that does not exist.
        (&["--tls-cert", cert_s, "--tls-key", missing_s], &["cannot read the TLS key", missing_s]),
        // The files swapped: no private key in the key file, no certificate in the certificate file.
        (&["--tls-cert", cert_s, "--tls-key", cert_s], &["holds no private key", cert_s]),
        (&["--tls-cert", key_s, "--tls-key", key_s], &["holds no certificate", key_s]),
        // A key that is not the certificate's.
        (&["--tls-cert", cert_s, "--tls-key", other_key_s], &["cannot be used together", cert_s, other_key_s]),
        // Half the flags.
        (&["--tls-cert", cert_s], &["--tls-key"]),
    ];
    for (args, expected) in cases {
        let mut all = vec!["--listen", listen.as_str()];
        all.extend_from_slice(args);
        let (status, stderr) = serve_expecting_exit(dir.path(), &all);
        assert_eq!(status.code(), Some(2), "serve {args:?}: {status}\n{stderr}");
        for e in expected {
            assert!(stderr.contains(e), "serve {args:?}: expected {e:?} in:\n{stderr}");
        }
        assert!(!stderr.contains("cairn: serving"), "{stderr}");
    }
    let (status, stderr) = serve_expecting_exit(dir.path(), &["--listen", &listen, "--tls-key", key_s]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--tls-cert"), "{stderr}");
    // Nothing was opened either: the files are checked before the store.
    assert!(!dir.path().join("store").join("db").exists());
}

/// A TLS client (rustls, trusting `ca`) connected to `addr`, its handshake done.
fn tls_client(ca: &Path, addr: &str) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut tcp = TcpStream::connect(addr).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).unwrap();
    }
    rustls::StreamOwned::new(conn, tcp)
}

#[test]
fn clients_that_never_finish_a_handshake_do_not_hold_a_controlled_shutdown() {
    let dir = TempDir::new("tls-silent");
    let (cert, key) = self_signed(dir.path(), "server");
    // A grace period far longer than the test allows: only connections with
    // a request in flight may use it, and these have none.
    let mut h = Host::start_tls(dir.path(), &["--quiet-guests", "--shutdown-grace-ms", "120000"], &cert, &key, &cert);
    let silent = TcpStream::connect(address(&h)).unwrap();
    let mut half = TcpStream::connect(address(&h)).unwrap();
    // The first bytes of a TLS record, and then nothing.
    half.write_all(&[0x16, 0x03, 0x01]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let status = h.terminate_within(Duration::from_secs(60));
    let status = status.unwrap_or_else(|| panic!("the host did not exit within 60 s of SIGTERM:\n{}", h.server_log()));
    let log = h.server_log();
    assert!(status.success(), "{status}\n{log}");
    assert!(log.contains("cairn: stopped"), "{log}");
    // Well within the handshake timeout (10 s) and the grace period: the
    // handshakes were dropped when shutdown began.
    assert!(started.elapsed() < Duration::from_secs(8), "exit took {:?}\n{log}", started.elapsed());
    assert!(!log.contains("after the grace period"), "{log}");
    drop((silent, half));
}

#[test]
fn a_tls_request_in_flight_gets_the_grace_period_and_no_more() {
    let dir = TempDir::new("tls-grace");
    let (cert, key) = self_signed(dir.path(), "server");
    let mut h = Host::start_tls(dir.path(), &["--quiet-guests", "--shutdown-grace-ms", "1000"], &cert, &key, &cert);
    // An encrypted request whose body stops halfway.
    let mut client = tls_client(&cert, &address(&h));
    client
        .write_all(b"POST /v1/messages HTTP/1.1\r\nHost: cairn\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"operation\":")
        .unwrap();
    client.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let status = h.terminate_within(Duration::from_secs(60));
    let status = status.unwrap_or_else(|| panic!("the host did not exit within 60 s of SIGTERM:\n{}", h.server_log()));
    let log = h.server_log();
    assert!(status.success(), "{status}\n{log}");
    // (The other connection open, if any, is the test's own idle keep-alive one.)
    assert!(log.contains("connection(s) open, 1000 ms grace"), "{log}");
    assert!(log.contains("1 connection(s) still open after the grace period were closed"), "{log}");
    assert!(log.contains("cairn: stopped"), "{log}");
    // The 30 s body read timeout did not decide it: the grace period did.
    assert!(started.elapsed() < Duration::from_secs(20), "exit took {:?}\n{log}", started.elapsed());
    drop(client);
}

#[test]
fn a_handshake_that_never_comes_is_dropped_after_its_timeout() {
    let dir = TempDir::new("tls-timeout");
    let (cert, key) = self_signed(dir.path(), "server");
    let h = Host::start_tls(dir.path(), &["--quiet-guests"], &cert, &key, &cert);
    let mut silent = TcpStream::connect(address(&h)).unwrap();
    silent.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
    let started = Instant::now();
    let mut byte = [0u8; 1];
    match silent.read(&mut byte) {
        Ok(0) => {}
        Ok(_) => panic!("the server sent bytes to a client that sent none"),
        Err(e) => assert!(
            !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
            "the server still holds the connection after {:?}",
            started.elapsed()
        ),
    }
    let waited = started.elapsed();
    // The handshake timeout is 10 s; allow a loaded machine some slack.
    assert!(waited >= Duration::from_secs(8) && waited < Duration::from_secs(30), "closed after {waited:?}");
    assert_eq!(h.get("/v1/health").0, 200);
}

#[test]
fn beyond_loopback_tokens_still_rule_over_https_and_plain_http_warns() {
    let dir = TempDir::new("tls-beyond");
    let (cert, key) = self_signed(dir.path(), "server");
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let store_flag = postgres_store(&store);
    let mut offline = vec!["token", "create", "--role", "admin", "--data", store.to_str().unwrap()];
    if let Some(url) = &store_flag {
        offline.extend(["--store", url.as_str()]);
    }
    let out = cli(&[], &offline);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let token = out.stdout.trim().to_string();

    let serve = |tls: bool| {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = dir.path().join(format!("serve-{port}.log"));
        let mut cmd = Command::new(cairn_bin());
        cmd.args(["serve", "--quiet-guests", "--data"]).arg(&store).args(["--listen", &format!("0.0.0.0:{port}")]);
        if let Some(url) = &store_flag {
            cmd.args(["--store", url]);
        }
        if tls {
            cmd.arg("--tls-cert").arg(&cert).arg("--tls-key").arg(&key);
        }
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap()).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !std::fs::read_to_string(&log).unwrap_or_default().contains("cairn: serving") {
            assert!(Instant::now() < deadline, "serve did not start:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
            std::thread::sleep(Duration::from_millis(50));
        }
        (child, port, log)
    };

    let (mut child, port, log) = serve(true);
    let url = format!("https://127.0.0.1:{port}");
    let ca = cert.to_str().unwrap();
    let out = cli(&[("CAIRN_SERVER", &url), ("CAIRN_CA_CERT", ca)], &["ls"]);
    assert_eq!(out.code, 1, "no token, 401: {}{}", out.stdout, out.stderr);
    let out = cli(&[("CAIRN_SERVER", &url), ("CAIRN_CA_CERT", ca), ("CAIRN_TOKEN", &token)], &["ls", "--json"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains(&format!("cairn: serving https://0.0.0.0:{port}")), "{text}");
    assert!(!text.contains("travel in clear"), "{text}");
    let _ = child.kill();
    let _ = child.wait();

    let (mut child, _, log) = serve(false);
    let read = || std::fs::read_to_string(&log).unwrap();
    eventually("a warning about plain HTTP beyond loopback", Duration::from_secs(10), || read().contains("warning"));
    let text = read();
    assert!(text.contains("warning") && text.contains("tokens and every request and answer travel in clear"), "{text}");
    assert!(text.contains("--tls-cert"), "{text}");
    let _ = child.kill();
    let _ = child.wait();
}
