//! RSS of a proxy holding many idle, logged-in client connections (trust or
//! SCRAM-SHA-256 logins), and the RSS it keeps once they have gone.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone, Copy)]
pub struct IdleResult {
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    /// RSS once every client has disconnected again.
    pub rss_gone_kib: u64,
    pub connected: usize,
}

fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:` for the peak); 0 if absent.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn startup(user: &str, database: &str) -> Vec<u8> {
    let mut packet = bytes::BytesMut::new();
    postgres_protocol::message::frontend::startup_message(
        [("user", user), ("database", database)],
        &mut packet,
    )
    .expect("small startup packet");
    packet.to_vec()
}

/// (salt, iterations, the salted password).
type SaltedPassword = (Vec<u8>, u32, [u8; 32]);

/// A SCRAM-SHA-256 password login (no channel binding). The salted password is
/// derived once per (salt, iterations): the bench measures the proxy, not PBKDF2.
#[derive(Clone)]
pub struct Scram {
    pub password: String,
    salted: std::sync::Arc<std::sync::Mutex<Option<SaltedPassword>>>,
}

impl Scram {
    pub fn new(password: &str) -> Scram {
        Scram {
            password: password.to_string(),
            salted: Default::default(),
        }
    }

    fn salted(&self, salt: &[u8], iterations: u32) -> [u8; 32] {
        let mut cached = self.salted.lock().unwrap();
        if let Some((s, i, key)) = cached.as_ref() {
            if s == salt && *i == iterations {
                return *key;
            }
        }
        let mut key = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<sha2::Sha256>(self.password.as_bytes(), salt, iterations, &mut key);
        *cached = Some((salt.to_vec(), iterations, key));
        key
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// Reads one backend message: (tag, body).
async fn read_message(stream: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut header = [0u8; 5];
    stream.read_exact(&mut header).await.ok()?;
    let len = u32::from_be_bytes(header[1..5].try_into().unwrap()) as usize;
    let mut body = vec![0u8; len.checked_sub(4)?];
    stream.read_exact(&mut body).await.ok()?;
    Some((header[0], body))
}

/// A `PasswordMessage`-tagged (`p`) message with `body`.
fn password_message(body: &[u8]) -> Vec<u8> {
    let mut out = vec![b'p'];
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

async fn scram_login(stream: &mut TcpStream, scram: &Scram) -> Option<()> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    // AuthenticationSASL was read by the caller.
    let nonce = b64.encode(rand::random::<[u8; 18]>());
    let client_first_bare = format!("n=,r={nonce}");
    let client_first = format!("n,,{client_first_bare}");
    let mut body = b"SCRAM-SHA-256\0".to_vec();
    body.extend_from_slice(&(client_first.len() as u32).to_be_bytes());
    body.extend_from_slice(client_first.as_bytes());
    stream.write_all(&password_message(&body)).await.ok()?;
    let (tag, body) = read_message(stream).await?;
    if tag != b'R' || body.get(..4)? != 11u32.to_be_bytes() {
        return None;
    }
    let server_first = String::from_utf8(body[4..].to_vec()).ok()?;
    let field = |name: &str| {
        server_first
            .split(',')
            .find_map(|f| f.strip_prefix(name))
            .map(str::to_string)
    };
    let (combined, salt, iterations) = (field("r=")?, field("s=")?, field("i=")?);
    let salted = scram.salted(&b64.decode(salt).ok()?, iterations.parse().ok()?);
    let client_key = hmac(&salted, b"Client Key");
    let stored_key: [u8; 32] = {
        use sha2::Digest;
        sha2::Sha256::digest(client_key).into()
    };
    let without_proof = format!("c=biws,r={combined}");
    let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
    let signature = hmac(&stored_key, auth_message.as_bytes());
    let proof: Vec<u8> = client_key
        .iter()
        .zip(signature)
        .map(|(k, s)| k ^ s)
        .collect();
    let client_final = format!("{without_proof},p={}", b64.encode(proof));
    stream
        .write_all(&password_message(client_final.as_bytes()))
        .await
        .ok()?;
    Some(())
}

async fn connect_idle(port: u16, packet: &[u8], scram: Option<&Scram>) -> Option<TcpStream> {
    let login = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        stream.write_all(packet).await.ok()?;
        loop {
            let (tag, body) = read_message(&mut stream).await?;
            match tag {
                // ReadyForQuery is the last message of the login answer.
                b'Z' => return Some(stream),
                b'E' => return None,
                // AuthenticationSASL
                b'R' if body.get(..4)? == 10u32.to_be_bytes() => {
                    scram_login(&mut stream, scram?).await?
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), login)
        .await
        .ok()?
}

/// `scram`: the password for SCRAM logins (None: trust).
pub fn measure(
    pid: u32,
    port: u16,
    user: &str,
    database: &str,
    count: usize,
    scram: Option<&str>,
) -> IdleResult {
    let scram = scram.map(Scram::new);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        // Warm up: one connection so the pool and allocator exist before the baseline.
        let packet = startup(user, database);
        let warm = connect_idle(port, &packet, scram.as_ref()).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = rss_kib(pid);
        let mut held = Vec::with_capacity(count);
        for chunk in 0..count.div_ceil(200) {
            let batch = (chunk * 200..((chunk + 1) * 200).min(count))
                .map(|_| connect_idle(port, &packet, scram.as_ref()));
            for stream in futures_util::future::join_all(batch)
                .await
                .into_iter()
                .flatten()
            {
                held.push(stream);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = rss_kib(pid);
        let connected = held.len();
        drop(held);
        // The warm-up connection stays: the baseline had it too.
        // pgwarden gives free memory back once a second at most (`malloc_trim`).
        tokio::time::sleep(Duration::from_millis(3000)).await;
        let gone = rss_kib(pid);
        drop(warm);
        IdleResult {
            rss_before_kib: before,
            rss_after_kib: after,
            rss_gone_kib: gone,
            connected,
        }
    })
}
