//! Full-duplex byte pumping between one client and its server connection.
//!
//! One poll function drives all four directions (client→proxy, proxy→server,
//! server→proxy, proxy→client) on borrowed buffers, so a pipelining client or a server
//! streaming a large result can never deadlock the session, and both sides get
//! backpressure: the proxy stops reading a side while the bytes it owes the other side
//! pile up past a high-water mark.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWrite;
use tokio_util::io::poll_read_buf;

use super::shutdown::{Phase, SessionShutdown};
use super::stream::ClientStream;
use crate::pool::ServerConnection;

/// Stop reading the server while this many bytes wait to be written to the client.
const HIGH_WATER: usize = 1 << 20;
/// Stop reading the client while this many bytes wait to be written to the server.
/// Small: a client streaming a batch must feel the server's pace as it would directly,
/// so it sees an early error before it has sent much more (asyncpg's executemany stops
/// at the first error only when its writes wait).
const CLIENT_HIGH_WATER: usize = 64 * 1024;
/// Read buffers grow by at least this much.
const READ_CHUNK: usize = 16 * 1024;

/// The first read of a client with no read buffer: most requests fit, and glibc serves
/// an allocation this small from its per-thread cache (up to 1,032 bytes) without a lock
/// or a search of its free lists.
const FIRST_CLIENT_READ: usize = 1000;

/// An empty buffer with more capacity than this is given back after a batch, so one
/// large result or COPY does not leave its size behind for the life of the session.
const KEEP_CAPACITY: usize = 64 * 1024;

/// Replaces `buf` with an unallocated one when it is empty and large. Frames split off
/// it earlier keep their own shares of the old allocation until they are dropped.
pub fn shrink_if_idle(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > KEEP_CAPACITY {
        *buf = BytesMut::new();
    }
}

/// Relayed runs at least this long trade buffers instead of being copied.
const TRADE_FROM: usize = 16 * 1024;

/// Moves the first `n` bytes of `from` (the server's read buffer) to the end of `to`
/// (the bytes owed to the client). A large result arrives in runs of tens of KiB, and
/// copying each run was an eighth of the proxy's profile samples and most of its
/// user-space instructions on a 1M-row result: when nothing
/// is owed yet and the run is most of what was read, the two buffers trade places and
/// only the unfinished message after the run, if any, is copied back. Small runs (the
/// common answer of a few hundred bytes) are copied, so the server's buffer keeps its
/// read room and no allocation moves between the two.
#[inline]
pub fn move_relayed(to: &mut BytesMut, from: &mut BytesMut, n: usize) {
    let tail = from.len() - n;
    if to.is_empty() && n >= TRADE_FROM && tail <= n / 4 {
        std::mem::swap(to, from);
        from.extend_from_slice(&to[n..]);
        to.truncate(n);
    } else {
        to.extend_from_slice(&from[..n]);
        from.advance(n);
    }
}

/// Readies the client buffer for a read.
/// - No buffer (an idle client keeps none; it is released with the server connection,
///   so taken again for nearly every transaction): one given back on this thread
///   (`read_buffers.rs`), else one small enough for the allocator's per-thread cache.
/// - Every byte read is consumed: room at the front of the same allocation is taken
///   back in place when little is left. It is not grown: the next request may well fit,
///   and the buffer is given back soon (growing it here cost a `realloc` to 9 KiB per
///   transaction, about 540 instructions, for bytes that never came).
/// - A message is partly read: grown, so a long one arrives in few reads.
fn make_read_room(buf: &mut BytesMut) {
    if buf.capacity() == 0 {
        if let Some(stashed) = super::read_buffers::take() {
            *buf = stashed;
        }
    }
    let spare = buf.capacity() - buf.len();
    if buf.capacity() == 0 {
        buf.reserve(FIRST_CLIENT_READ);
    } else if buf.is_empty() {
        if spare < FIRST_CLIENT_READ / 4 {
            buf.reserve(FIRST_CLIENT_READ);
        }
    } else if spare < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK / 2);
    }
}

/// Writes what the client is owed until all of it is written or the socket is full
/// (then `cx` is woken when it has room); `Err` when the client is gone.
#[inline]
pub fn write_client(
    client: &mut ClientStream,
    to_client: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Result<(), PumpError> {
    while !to_client.is_empty() {
        match Pin::new(&mut *client).poll_write(cx, to_client) {
            Poll::Ready(Ok(0)) => return Err(PumpError::ClientClosed),
            Poll::Ready(Ok(n)) => to_client.advance(n),
            Poll::Ready(Err(e)) => return Err(PumpError::Client(e)),
            Poll::Pending => return Ok(()),
        }
    }
    if client.is_tls() {
        if let Poll::Ready(Err(e)) = Pin::new(&mut *client).poll_flush(cx) {
            return Err(PumpError::Client(e));
        }
    }
    Ok(())
}

/// Writes what the server is owed until all of it is written or the socket is full
/// (then `cx` is woken when it has room); `Err` when the server is gone.
#[inline]
pub fn write_server(
    server: &mut ServerConnection,
    to_server: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Result<(), PumpError> {
    while !to_server.is_empty() {
        match Pin::new(&mut server.stream).poll_write(cx, to_server) {
            Poll::Ready(Ok(0)) => return Err(PumpError::ServerClosed),
            Poll::Ready(Ok(n)) => to_server.advance(n),
            Poll::Ready(Err(e)) => return Err(PumpError::Server(e)),
            Poll::Pending => return Ok(()),
        }
    }
    Ok(())
}

/// What the pump saw.
#[derive(Debug)]
pub enum Pumped {
    /// New client bytes are in the client buffer.
    ClientData,
    /// New server bytes are in the server's read buffer.
    ServerData,
    /// Everything owed has been written.
    Drained,
}

#[derive(Debug)]
pub enum PumpError {
    Client(io::Error),
    ClientClosed,
    Server(io::Error),
    ServerClosed,
    /// The graceful shutdown reached the phase the pump was told to stop at.
    Shutdown,
}

/// The buffers and streams of one session, borrowed for one pump call.
pub struct Pump<'a> {
    pub client: &'a mut ClientStream,
    pub client_buf: &'a mut BytesMut,
    pub to_client: &'a mut BytesMut,
    pub server: Option<&'a mut ServerConnection>,
    pub to_server: &'a mut BytesMut,
    /// Whether to read from the client at all (false while a request is being served
    /// by something that is not the server, e.g. while waiting for a pool).
    pub read_client: bool,
    /// Return `Drained` once all writes are done, instead of waiting for reads.
    pub until_drained: bool,
    /// Stop with [`PumpError::Shutdown`] once the shutdown reaches this phase (looked
    /// at without a lock on every poll; see `shutdown.rs`).
    pub shutdown: Option<(&'a SessionShutdown, Phase)>,
}

impl<'a> Pump<'a> {
    /// Pumps until something needs handling. The `poll_fn` future itself, not an
    /// async fn around it: one state machine less to resume on every poll.
    pub fn run(&mut self) -> impl Future<Output = Result<Pumped, PumpError>> + use<'_, 'a> {
        poll_fn(move |cx| self.poll(cx))
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<Pumped, PumpError>> {
        if let Some((shutdown, phase)) = self.shutdown {
            if shutdown.poll_reached(cx, phase).is_ready() {
                return Poll::Ready(Err(PumpError::Shutdown));
            }
        }
        // Writes first: they free buffer space and unblock the peers.
        if let Err(e) = write_client(self.client, self.to_client, cx) {
            return Poll::Ready(Err(e));
        }
        if let Some(server) = self.server.as_deref_mut() {
            if let Err(e) = write_server(server, self.to_server, cx) {
                return Poll::Ready(Err(e));
            }
        }
        if self.until_drained && self.to_client.is_empty() && self.to_server.is_empty() {
            return Poll::Ready(Ok(Pumped::Drained));
        }
        // Server first: answers in flight matter more than new requests.
        if let Some(server) = self.server.as_deref_mut() {
            if self.to_client.len() < HIGH_WATER {
                if server.read_buf.capacity() - server.read_buf.len() < READ_CHUNK / 2 {
                    server.read_buf.reserve(READ_CHUNK);
                }
                match poll_read_buf(Pin::new(&mut server.stream), cx, &mut server.read_buf) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(PumpError::ServerClosed)),
                    Poll::Ready(Ok(_)) => return Poll::Ready(Ok(Pumped::ServerData)),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(PumpError::Server(e))),
                    Poll::Pending => {}
                }
            }
        }
        if self.read_client && self.to_server.len() < CLIENT_HIGH_WATER {
            if self.client_buf.capacity() == 0 {
                // Idle clients keep no read buffer: wait for readability first.
                match self.client.poll_read_ready(cx) {
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(PumpError::Client(e))),
                    Poll::Ready(Ok(())) => {}
                    Poll::Pending => return Poll::Pending,
                }
            }
            make_read_room(self.client_buf);
            match poll_read_buf(Pin::new(&mut *self.client), cx, &mut *self.client_buf) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(PumpError::ClientClosed)),
                Poll::Ready(Ok(_)) => return Poll::Ready(Ok(Pumped::ClientData)),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(PumpError::Client(e))),
                Poll::Pending => {}
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_consumed_client_buffer_is_not_grown_before_the_next_read() {
        let mut buf = BytesMut::new();
        make_read_room(&mut buf);
        assert_eq!(buf.capacity(), FIRST_CLIENT_READ);
        let first = buf.as_ptr();
        // A 57-byte query arrives and is taken whole: the rest of the room is kept.
        buf.extend_from_slice(&[b'Q'; 57]);
        drop(buf.split_to(57).freeze());
        make_read_room(&mut buf);
        assert_eq!(buf.capacity(), FIRST_CLIENT_READ - 57, "not grown");
        // Nearly all consumed: the room is taken back in the same allocation.
        buf.extend_from_slice(&[b'Q'; FIRST_CLIENT_READ - 57 - 10]);
        drop(buf.split_to(buf.len()).freeze());
        make_read_room(&mut buf);
        assert!(
            buf.capacity() >= FIRST_CLIENT_READ / 4,
            "{}",
            buf.capacity()
        );
        assert_eq!(buf.as_ptr(), first, "reclaimed in place");
        // Part of a long message: grown.
        buf.extend_from_slice(&[b'Q'; 300]);
        make_read_room(&mut buf);
        assert!(buf.capacity() - buf.len() >= READ_CHUNK / 4);
    }

    #[test]
    fn relayed_runs_reach_the_client_in_order_whether_traded_or_copied() {
        // A large run with part of the next message behind it: traded, tail kept.
        let mut from = BytesMut::new();
        from.extend_from_slice(&[b'D'; 40_000]);
        from.extend_from_slice(b"Ctail");
        let read_at = from.as_ptr();
        let mut to = BytesMut::new();
        move_relayed(&mut to, &mut from, 40_000);
        assert_eq!(to.as_ptr(), read_at, "traded, not copied");
        assert_eq!(&to[..], &[b'D'; 40_000][..]);
        assert_eq!(&from[..], b"Ctail");

        // Bytes already owed: appended after them, whatever the size.
        let mut more = BytesMut::new();
        more.extend_from_slice(&[b'E'; 20_000]);
        move_relayed(&mut to, &mut more, 20_000);
        assert_eq!(to.len(), 60_000);
        assert_eq!(&to[40_000..], &[b'E'; 20_000][..]);
        assert!(more.is_empty());

        // A small answer is copied: the server keeps its own buffer.
        let mut small = BytesMut::with_capacity(READ_CHUNK);
        small.extend_from_slice(b"Zsmall");
        let kept = small.as_ptr();
        let mut owed = BytesMut::new();
        move_relayed(&mut owed, &mut small, 3);
        assert_eq!(&owed[..], b"Zsm");
        assert_eq!(&small[..], b"all");
        assert_eq!(small.as_ptr() as usize - 3, kept as usize, "not traded");
    }

    #[test]
    fn large_empty_buffers_are_given_back_small_ones_kept() {
        let mut large = BytesMut::with_capacity(8 << 20);
        large.extend_from_slice(&[0u8; 1024]);
        shrink_if_idle(&mut large);
        assert!(large.capacity() >= 8 << 20, "not empty: kept");
        large.clear();
        shrink_if_idle(&mut large);
        assert_eq!(large.capacity(), 0);

        let mut small = BytesMut::with_capacity(16 * 1024);
        shrink_if_idle(&mut small);
        assert_eq!(small.capacity(), 16 * 1024);
    }
}
