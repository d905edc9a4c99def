//! A real S3 server for the tests: moto's `moto_server` (installed by
//! `scripts/setup.sh`), started once per test binary on a free loopback
//! port, with one bucket; each test works under its own prefix.
//!
//! It is stopped when the test binary exits: it runs under a small shell
//! that watches the test process and kills the server once it is gone
//! (Rust runs no destructor of a static at exit).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The bucket every test's prefix lives in.
pub const BUCKET: &str = "genesis-test";

/// The running server.
pub struct S3Server {
    pub addr: SocketAddr,
    /// The shell that runs the server and stops it with this process.
    _watchdog: std::process::Child,
}

impl S3Server {
    /// The endpoint URL (`http://127.0.0.1:PORT`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The environment a child process needs to reach the server (moto
    /// takes any credentials).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    /// A new prefix, unique in this run: `s3://genesis-test/NAME-PID-N`.
    pub fn new_repo_url(&self, name: &str) -> String {
        static N: AtomicU64 = AtomicU64::new(0);
        format!(
            "s3://{BUCKET}/{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Stores `bytes` at `key` of the bucket with a raw, unsigned HTTP PUT
    /// (what someone else writing into the bucket does; the key need not be
    /// one genesis-recovery would ever write).
    pub fn raw_put(&self, key: &str, bytes: &[u8]) {
        let code = http(self.addr, "PUT", &format!("/{BUCKET}/{key}"), bytes);
        assert_eq!(code, 200, "raw PUT {key}");
    }
}

/// Sends one request and returns the status code.
fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> u16 {
    let mut s = TcpStream::connect(addr).expect("connect to moto");
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).expect("send");
    s.write_all(body).expect("send body");
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The server, started on first use.
pub fn server() -> &'static S3Server {
    static SERVER: OnceLock<S3Server> = OnceLock::new();
    SERVER.get_or_init(start)
}

fn start() -> S3Server {
    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    // The shell's parent is this test process: when it is gone, the
    // server goes too.
    let script = format!(
        "moto_server -H 127.0.0.1 -p {port} >/dev/null 2>&1 & m=$!; \
         while kill -0 {parent} 2>/dev/null && kill -0 $m 2>/dev/null; do sleep 1; done; \
         kill $m 2>/dev/null",
        parent = std::process::id()
    );
    let watchdog = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sh");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "moto_server did not start on {addr}: scripts/setup.sh installs it (pip install \"moto[server]\")"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let server = S3Server {
        addr,
        _watchdog: watchdog,
    };
    let code = http(addr, "PUT", &format!("/{BUCKET}"), b"");
    assert_eq!(code, 200, "create the test bucket");
    // This process (the tests' own library calls) reaches it too.
    genesis_core::repo::s3::configure(genesis_core::repo::s3::S3Settings {
        endpoint: Some(server.endpoint()),
        region: Some("us-east-1".into()),
        allow_http: Some(true),
        access_key_id: Some("testing".into()),
        secret_access_key: Some("testing".into()),
        session_token: None,
    });
    server
}

/// A TCP proxy in front of the server that can be taken down: while down
/// it refuses every request and cuts the connections it carried, which is
/// what the capturer sees of a store that is stopped (moto keeps its
/// objects in memory, so the server itself cannot be stopped and restarted
/// with its bucket).
pub struct Outage {
    pub addr: SocketAddr,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
    /// Requests seen, by method: PUT, GET, HEAD, DELETE.
    pub requests: std::sync::Arc<[AtomicU64; 4]>,
}

/// The methods [`Outage::requests`] counts.
const METHODS: [&[u8]; 4] = [b"PUT /", b"GET /", b"HEAD /", b"DELETE /"];

/// Copies `from` to `to`, counting the request lines that pass.
fn pump(mut from: TcpStream, mut to: TcpStream, count: Option<std::sync::Arc<[AtomicU64; 4]>>) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(c) = &count {
            for (i, m) in METHODS.iter().enumerate() {
                // A request line starts a chunk or follows a newline.
                let hits = buf[..n]
                    .windows(m.len())
                    .enumerate()
                    .filter(|(at, w)| w == m && (*at == 0 || buf[at - 1] == b'\n'))
                    .count();
                c[i].fetch_add(hits as u64, Ordering::Relaxed);
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
}

impl Outage {
    /// Starts the proxy (up) in front of `upstream`.
    pub fn start(upstream: SocketAddr) -> Outage {
        use std::sync::atomic::AtomicBool;
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let down = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let requests: Arc<[AtomicU64; 4]> = Arc::default();
        let (d, o, r) = (down.clone(), open.clone(), requests.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if d.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let pumps = [
                    (client.try_clone(), server.try_clone(), Some(r.clone())),
                    (server.try_clone(), client.try_clone(), None),
                ];
                if let Ok(mut g) = o.lock() {
                    g.extend(client.try_clone());
                    g.extend(server.try_clone());
                }
                for (from, to, count) in pumps {
                    if let (Ok(from), Ok(to)) = (from, to) {
                        std::thread::spawn(move || pump(from, to, count));
                    }
                }
            }
        });
        Outage {
            addr,
            down,
            open,
            requests,
        }
    }

    /// Takes the store down (cutting every open connection) or brings it back.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            if let Ok(mut g) = self.open.lock() {
                for s in g.drain(..) {
                    let _ = s.shutdown(std::net::Shutdown::Both);
                }
            }
        }
    }

    /// (PUT, GET, HEAD, DELETE) requests so far.
    pub fn counts(&self) -> [u64; 4] {
        [0, 1, 2, 3].map(|i| self.requests[i].load(Ordering::Relaxed))
    }

    /// The endpoint URL through the proxy.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}
