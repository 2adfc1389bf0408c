//! Helpers for `connection_fidelity.rs`: running the driver scripts beside this file, a
//! proxy certificate for TLS, a relay in front of PostgreSQL that holds back cancel
//! requests, and raw protocol: logging in, cancel packets, and what a server does with
//! the first bytes a client sends (which messages it answers, whether it closes).

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::support::drivers;

/// Longest a driver script may run; every step inside it has its own, shorter timeout.
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(150);
/// Longest one step of a Rust client may take before it counts as hung.
pub const STEP: Duration = Duration::from_secs(5);
/// How long a connection must stay silent to count as "no reply".
pub const QUIET: Duration = Duration::from_millis(1500);

const CANCEL_CODE: [u8; 4] = 80877102i32.to_be_bytes();
/// How the proxy's own error texts start.
const PROXY_PREFIX: &str = "pgwarden: ";

/// Runs a Python script of `tests/connection_fidelity/` and returns the JSON line it printed.
pub async fn python(script: &'static str, env: Vec<(&'static str, String)>) -> Value {
    let run = move || drivers::json_line(&drivers::run_python(script, &env, SCRIPT_TIMEOUT));
    tokio::task::spawn_blocking(run)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

pub use crate::support::tls_files;

// ---- A relay in front of PostgreSQL -----------------------------------------------

/// What the relay does with a connection that starts with a `CancelRequest`.
#[derive(Debug, Clone, Copy)]
pub enum Cancels {
    /// Forward it after this long, as a busy server would act on it late.
    Delay(Duration),
    /// Never forward it and never close: a server that does not answer.
    Swallow,
}

/// A TCP relay to a PostgreSQL port; every connection and the relay end when dropped.
pub struct Relay {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn relay(target: u16, cancels: Cancels) -> Relay {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        while let Ok((client, _)) = listener.accept().await {
            connections.spawn(relay_one(client, target, cancels));
        }
    });
    Relay { port, task }
}

async fn relay_one(mut client: TcpStream, target: u16, cancels: Cancels) {
    let mut head = [0u8; 8];
    if client.read_exact(&mut head).await.is_err() {
        return;
    }
    if head[4..] == CANCEL_CODE {
        match cancels {
            Cancels::Delay(delay) => tokio::time::sleep(delay).await,
            Cancels::Swallow => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            }
        }
    }
    let Ok(mut server) = TcpStream::connect(("127.0.0.1", target)).await else {
        return;
    };
    if server.write_all(&head).await.is_ok() {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
    }
}

// ---- Raw protocol -------------------------------------------------------------------

/// A startup-phase packet: length, `code` (a protocol version or request code), body.
pub fn packet(code: i32, body: &[u8]) -> Vec<u8> {
    let mut out = ((body.len() + 8) as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A `StartupMessage` body: `name\0value\0...` and the final terminator.
pub fn params(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, value) in pairs {
        body.extend_from_slice(name.as_bytes());
        body.push(0);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    body
}

pub fn cancel_packet(pid: i32, secret: i32) -> Vec<u8> {
    let mut body = pid.to_be_bytes().to_vec();
    body.extend_from_slice(&secret.to_be_bytes());
    packet(80877102, &body)
}

/// Logs in (trust) over raw TCP; returns the stream after `ReadyForQuery` and the
/// `BackendKeyData` the client was given.
pub async fn raw_login(port: u16, user: &str, database: &str) -> (TcpStream, i32, i32) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let startup = packet(196608, &params(&[("user", user), ("database", database)]));
    stream.write_all(&startup).await.unwrap();
    let mut key = None;
    loop {
        let (tag, body) = read_message(&mut stream).await;
        match tag {
            b'K' => {
                let pid = i32::from_be_bytes(body[0..4].try_into().unwrap());
                let secret = i32::from_be_bytes(body[4..8].try_into().unwrap());
                key = Some((pid, secret));
            }
            b'Z' => break,
            b'E' => panic!("login refused: {}", describe(tag, &body)),
            _ => {}
        }
    }
    let (pid, secret) = key.expect("BackendKeyData before ReadyForQuery");
    (stream, pid, secret)
}

/// Sends a simple query and reads up to `ReadyForQuery`: "ok" or "error SQLSTATE".
pub async fn simple_query(stream: &mut TcpStream, sql: &str) -> String {
    let mut frame = vec![b'Q'];
    frame.extend_from_slice(&((sql.len() + 5) as i32).to_be_bytes());
    frame.extend_from_slice(sql.as_bytes());
    frame.push(0);
    stream.write_all(&frame).await.unwrap();
    let mut answer = "ok".to_string();
    loop {
        let (tag, body) = read_message(stream).await;
        match tag {
            b'E' => answer = format!("error {}", field(&body, b'C').unwrap_or_default()),
            b'Z' => return answer,
            _ => {}
        }
    }
}

async fn read_message(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 5];
    tokio::time::timeout(STEP, stream.read_exact(&mut head))
        .await
        .expect("a message within 5 s")
        .expect("connection open");
    let len = u32::from_be_bytes(head[1..].try_into().unwrap()) as usize;
    let mut body = vec![0u8; len - 4];
    tokio::time::timeout(STEP, stream.read_exact(&mut body))
        .await
        .expect("the message body within 5 s")
        .expect("connection open");
    (head[0], body)
}

/// Waits (at most `bound`) until the peer closes `stream`; whether it did.
pub async fn closed_within(stream: &mut TcpStream, bound: Duration) -> bool {
    let mut sink = [0u8; 256];
    let wait = async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(bound, wait).await.is_ok()
}

/// What a server did with the first bytes of a connection: the messages it answered
/// (type, severity, SQLSTATE and text of errors; bytes that are not a v3 message as
/// they are) and whether it closed the connection ("open": silent for [`QUIET`]).
/// The `pgwarden: ` that starts the proxy's own error texts is left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub replies: Vec<String>,
    pub closed: bool,
}

pub async fn first_bytes(port: u16, bytes: &[u8]) -> Outcome {
    let mut stream = tokio::time::timeout(STEP, TcpStream::connect(("127.0.0.1", port)))
        .await
        .expect("connect within 5 s")
        .unwrap();
    let _ = stream.write_all(bytes).await;
    let mut received = Vec::new();
    let closed = loop {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(QUIET, stream.read(&mut chunk)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => received.extend_from_slice(&chunk[..n]),
        }
    };
    Outcome {
        replies: messages(&received),
        closed,
    }
}

/// Splits what a server sent into described messages.
fn messages(mut bytes: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let len = (bytes.len() >= 5)
            .then(|| u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize)
            .filter(|len| *len >= 4 && *len < bytes.len());
        let Some(len) = len else {
            let text = String::from_utf8_lossy(bytes).replace(PROXY_PREFIX, "");
            out.push(format!("bytes {text:?}"));
            break;
        };
        out.push(describe(bytes[0], &bytes[5..1 + len]));
        bytes = &bytes[1 + len..];
    }
    out
}

fn describe(tag: u8, body: &[u8]) -> String {
    match tag {
        b'E' | b'N' => format!(
            "{} {} {} {}",
            tag as char,
            field(body, b'V').unwrap_or_default(),
            field(body, b'C').unwrap_or_default(),
            field(body, b'M')
                .unwrap_or_default()
                .replacen(PROXY_PREFIX, "", 1)
        ),
        b'R' if body.len() >= 4 => {
            format!("R {}", i32::from_be_bytes(body[..4].try_into().unwrap()))
        }
        other => format!("{} {:?}", other as char, String::from_utf8_lossy(body)),
    }
}

fn field(body: &[u8], code: u8) -> Option<String> {
    body.split(|b| *b == 0)
        .find_map(|f| f.strip_prefix(&[code]))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}
