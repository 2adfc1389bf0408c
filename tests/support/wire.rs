//! A raw protocol client for tests that compare bytes: logs in with trust (the proxy
//! with `auth.method = "trust"`, or PostgreSQL on its unix socket), sends simple or
//! extended-protocol requests, and returns every answer frame up to `ReadyForQuery`.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const STEP: Duration = Duration::from_secs(10);

pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

pub struct Wire {
    stream: Box<dyn Stream>,
}

/// One frontend message: tag, length, body.
pub fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

pub fn cstring(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// A simple `Query` message (several can go in one write, as a pipeline).
pub fn query(sql: &str) -> Vec<u8> {
    let mut body = Vec::new();
    cstring(&mut body, sql);
    frame(b'Q', &body)
}

impl Wire {
    /// Through TCP to `port` (the proxy, trust auth).
    pub async fn tcp(port: u16, user: &str, database: &str, options: &[(&str, &str)]) -> Wire {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        Wire::login(Box::new(stream), user, database, options).await
    }

    /// Straight to PostgreSQL over its unix socket (trust).
    pub async fn unix(socket_dir: &str, port: u16, user: &str, database: &str) -> Wire {
        let path = format!("{socket_dir}/.s.PGSQL.{port}");
        let stream = tokio::net::UnixStream::connect(&path)
            .await
            .expect("connect unix socket");
        Wire::login(Box::new(stream), user, database, &[]).await
    }

    async fn login(
        stream: Box<dyn Stream>,
        user: &str,
        database: &str,
        options: &[(&str, &str)],
    ) -> Wire {
        let mut wire = Wire { stream };
        let mut body = 196608i32.to_be_bytes().to_vec();
        cstring(&mut body, "user");
        cstring(&mut body, user);
        cstring(&mut body, "database");
        cstring(&mut body, database);
        for (k, v) in options {
            cstring(&mut body, k);
            cstring(&mut body, v);
        }
        body.push(0);
        let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        packet.extend_from_slice(&body);
        wire.stream.write_all(&packet).await.unwrap();
        loop {
            let (tag, body) = wire.read_frame().await;
            match tag {
                b'Z' => break,
                b'E' => panic!("login refused: {}", String::from_utf8_lossy(&body)),
                _ => {}
            }
        }
        wire
    }

    /// Writes raw frontend bytes (a fault scenario's half-sent request).
    pub async fn send(&mut self, bytes: &[u8]) {
        tokio::time::timeout(STEP, self.stream.write_all(bytes))
            .await
            .expect("write in time")
            .expect("connection open");
    }

    /// `Query` without waiting for its answer.
    pub async fn send_query(&mut self, sql: &str) {
        self.send(&query(sql)).await;
    }

    /// Reads up to `ReadyForQuery`, counting `DataRow`s instead of keeping them (for
    /// large results); returns (rows, SQLSTATE of an error, the transaction status).
    pub async fn count_rows(&mut self) -> (u64, Option<String>, u8) {
        let (mut rows, mut error) = (0, None);
        loop {
            let (tag, body) = self.read_frame().await;
            match tag {
                b'D' => rows += 1,
                b'E' => {
                    let mut whole = vec![tag, 0, 0, 0, 0];
                    whole.extend_from_slice(&body);
                    error = error_code(&[whole]);
                }
                b'Z' => return (rows, error, body.first().copied().unwrap_or(0)),
                _ => {}
            }
        }
    }

    /// Reads raw bytes until the peer closes the connection (EOF or reset); returns how
    /// many arrived. Panics when it stays open longer than `limit`.
    pub async fn read_until_closed(&mut self, limit: std::time::Duration) -> usize {
        let mut total = 0;
        let mut chunk = vec![0u8; 1 << 16];
        let closed = tokio::time::timeout(limit, async {
            loop {
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => total += n,
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the connection stayed open for {limit:?}");
        total
    }

    pub async fn read_frame(&mut self) -> (u8, Vec<u8>) {
        let mut head = [0u8; 5];
        tokio::time::timeout(STEP, self.stream.read_exact(&mut head))
            .await
            .expect("a message in time")
            .expect("connection open");
        let len = u32::from_be_bytes(head[1..].try_into().unwrap()) as usize;
        let mut body = vec![0u8; len - 4];
        tokio::time::timeout(STEP, self.stream.read_exact(&mut body))
            .await
            .expect("the message body in time")
            .expect("connection open");
        (head[0], body)
    }

    /// Every frame (tag + length + body) up to and including `ReadyForQuery`.
    pub async fn answer(&mut self) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        loop {
            let (tag, body) = self.read_frame().await;
            let mut whole = vec![tag];
            whole.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
            whole.extend_from_slice(&body);
            frames.push(whole);
            if tag == b'Z' {
                return frames;
            }
        }
    }

    pub async fn simple(&mut self, sql: &str) -> Vec<Vec<u8>> {
        self.stream.write_all(&query(sql)).await.unwrap();
        self.answer().await
    }

    /// `Parse` (when `parse`), `Bind`, `Describe` portal, `Execute`, `Sync` in one write.
    /// Parameters are text (`None` = NULL) unless `binary_params`; results in
    /// `result_format` (0 text, 1 binary).
    pub async fn extended(
        &mut self,
        statement: &str,
        sql: Option<&str>,
        params: &[Option<&[u8]>],
        binary_params: bool,
        result_format: i16,
    ) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        if let Some(sql) = sql {
            let mut body = Vec::new();
            cstring(&mut body, statement);
            cstring(&mut body, sql);
            body.extend_from_slice(&0i16.to_be_bytes());
            out.extend(frame(b'P', &body));
        }
        let mut body = Vec::new();
        cstring(&mut body, "");
        cstring(&mut body, statement);
        body.extend_from_slice(&1i16.to_be_bytes());
        body.extend_from_slice(&i16::from(binary_params).to_be_bytes());
        body.extend_from_slice(&(params.len() as i16).to_be_bytes());
        for p in params {
            match p {
                None => body.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    body.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    body.extend_from_slice(v);
                }
            }
        }
        body.extend_from_slice(&1i16.to_be_bytes());
        body.extend_from_slice(&result_format.to_be_bytes());
        out.extend(frame(b'B', &body));
        out.extend(frame(b'D', b"P\0"));
        let mut body = Vec::new();
        cstring(&mut body, "");
        body.extend_from_slice(&0i32.to_be_bytes());
        out.extend(frame(b'E', &body));
        out.extend(frame(b'S', &[]));
        self.stream.write_all(&out).await.unwrap();
        self.answer().await
    }
}

/// `Parse`, `Bind` and `Execute` of `sql` as the unnamed statement and portal (no
/// parameters, no row limit), without a `Sync`: one statement of a hand-built batch.
pub fn unnamed_statement(sql: &str) -> Vec<u8> {
    let mut parse = Vec::new();
    cstring(&mut parse, "");
    cstring(&mut parse, sql);
    parse.extend_from_slice(&0i16.to_be_bytes());
    let mut out = frame(b'P', &parse);
    out.extend(frame(b'B', &[0, 0, 0, 0, 0, 0, 0, 0]));
    out.extend(frame(b'E', &[0, 0, 0, 0, 0]));
    out
}

/// The text of the first column of the first `DataRow` (text format).
pub fn first_value(frames: &[Vec<u8>]) -> Option<String> {
    let row = frames.iter().find(|f| f[0] == b'D')?;
    let len = i32::from_be_bytes(row[7..11].try_into().unwrap());
    if len < 0 {
        return None;
    }
    Some(String::from_utf8_lossy(&row[11..11 + len as usize]).into_owned())
}

/// The SQLSTATE of the first `ErrorResponse`, if any.
pub fn error_code(frames: &[Vec<u8>]) -> Option<String> {
    let error = frames.iter().find(|f| f[0] == b'E')?;
    error[5..]
        .split(|b| *b == 0)
        .find(|field| field.first() == Some(&b'C'))
        .map(|field| String::from_utf8_lossy(&field[1..]).into_owned())
}

/// The transaction status of the last `ReadyForQuery` (`I`, `T` or `E`).
pub fn ready_status(frames: &[Vec<u8>]) -> Option<u8> {
    frames.iter().rev().find(|f| f[0] == b'Z').map(|f| f[5])
}
