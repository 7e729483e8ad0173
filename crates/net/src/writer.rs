//! The writer task of a connection: the only code that writes its socket.
//! It drains the connection's [`Outbox`] and writes each batch with as few
//! `write` calls as possible; a slow peer blocks only this task, and a
//! peer that takes nothing for [`WriteLimit::timeout`] is cut and counted.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use prometheus_client::metrics::counter::Counter;
use tokio::io::AsyncWriteExt;
use tokio::time::{Instant, timeout_at};
use tokio_util::task::TaskTracker;

use crate::codec::{FrameHeader, Role};
use crate::outbox::{Chunk, Drained, Outbox};
use crate::tls::WriteHalf;

/// How long a closing connection may take to send its close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// How long a subscriber cut as a slow consumer has to take the rest of the
/// frame in progress and the 4008 close frame, before its socket is dropped.
const SLOW_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// How long a write may make no progress before the peer is cut.
#[derive(Debug, Clone)]
pub struct WriteLimit {
    /// No byte taken by the peer for this long: the connection is dropped.
    pub timeout: Duration,
    /// Counts the connections dropped so.
    pub timeouts: Counter,
}

impl Default for WriteLimit {
    fn default() -> WriteLimit {
        WriteLimit {
            timeout: Duration::from_secs(10),
            timeouts: Counter::default(),
        }
    }
}

/// Starts the writer task of a connection on `tasks`.
pub fn spawn_writer(
    socket: WriteHalf,
    outbox: Arc<Outbox>,
    limit: WriteLimit,
    tasks: &TaskTracker,
) {
    tasks.spawn(run_writer(socket, outbox, limit));
}

/// The writer task: drains the outbox into the socket, coalescing each
/// batch into as few writes as possible, until the outbox closes.
pub(crate) async fn run_writer(mut socket: WriteHalf, outbox: Arc<Outbox>, limit: WriteLimit) {
    let mut spare = VecDeque::new();
    loop {
        match outbox.drain(spare).await {
            Drained::Frames { mut frames, bytes } => {
                let written = match write_batch(&mut socket, &frames, bytes, &outbox, &limit).await
                {
                    // Boxed: only TLS needs it, and its timer would
                    // otherwise enlarge every connection's writer.
                    Ok(true) if matches!(socket, tokio_util::either::Either::Right(_)) => {
                        Box::pin(flush_tls(&mut socket, &limit))
                            .await
                            .map(|()| true)
                    }
                    other => other,
                };
                let count = frames.iter().map(|chunk| chunk.frames().len()).sum();
                outbox.written(count, bytes);
                match written {
                    Ok(true) => {}
                    // Cut as a slow consumer, and the peer did not take the
                    // frame in progress in time: drop the socket.
                    Ok(false) => return,
                    Err(error) => {
                        if error.kind() == io::ErrorKind::TimedOut {
                            tracing::debug!("peer took nothing within the write timeout: cut");
                            limit.timeouts.inc();
                        }
                        outbox.finish();
                        return;
                    }
                }
                frames.clear();
                if frames.capacity() > 1024 {
                    frames = VecDeque::new();
                }
                spare = frames;
            }
            Drained::Close(frame) => {
                let grace = if outbox.aborted() {
                    SLOW_CLOSE_GRACE
                } else {
                    CLOSE_GRACE
                };
                let deadline = Instant::now() + grace;
                let _ = timeout_at(deadline, socket.write_all(&frame)).await;
                let _ = timeout_at(deadline, socket.shutdown()).await;
                return;
            }
            Drained::Finish => {
                let _ = tokio::time::timeout(CLOSE_GRACE, socket.shutdown()).await;
                return;
            }
        }
    }
}

/// Sends what TLS still holds of the batch (records it buffered); plain
/// sockets hold nothing. Fails with `TimedOut` after the write timeout.
async fn flush_tls(socket: &mut WriteHalf, limit: &WriteLimit) -> io::Result<()> {
    match tokio::time::timeout(limit.timeout, socket.flush()).await {
        Ok(result) => result,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// Most bytes coalesced into one write.
const MAX_WRITE: usize = 64 << 10;

/// Writes frames in order, coalesced into as few writes as possible (one
/// contiguous buffer per write: cheaper for the kernel than many small
/// iovecs). The buffer is freed after each batch so idle connections hold
/// none.
///
/// When the outbox is cut as a slow consumer while a write is blocked, only
/// the frame in progress is finished (so the peer never sees half a frame)
/// and the rest of the batch is dropped: `Ok(true)`, and the writer sends
/// the 4008 close next. `Ok(false)` when the peer did not take even that
/// within [`SLOW_CLOSE_GRACE`]. A write that makes no progress for the
/// write timeout fails with `TimedOut`.
async fn write_batch(
    socket: &mut WriteHalf,
    chunks: &VecDeque<Chunk>,
    bytes: usize,
    outbox: &Outbox,
    limit: &WriteLimit,
) -> io::Result<bool> {
    // (chunk, frame) position of the next frame to copy.
    let (mut chunk, mut frame) = (0, 0);
    while chunk < chunks.len() {
        let mut buffer = Vec::with_capacity(bytes.min(MAX_WRITE));
        while chunk < chunks.len() {
            let frames = chunks[chunk].frames();
            let Some(next) = frames.get(frame) else {
                (chunk, frame) = (chunk + 1, 0);
                continue;
            };
            if !buffer.is_empty() && buffer.len() + next.len() > MAX_WRITE {
                break;
            }
            buffer.extend_from_slice(next);
            frame += 1;
        }
        if buffer.is_empty() {
            break;
        }
        let mut written = 0;
        let mut end = buffer.len();
        let mut cut_deadline: Option<Instant> = None;
        let mut closed_seen = false;
        // The fast path: the socket takes the whole buffer at once, and no
        // timer is armed.
        // (A write that is not ready at once writes nothing: dropping it
        // is safe.)
        match socket.write(&buffer).now_or_never() {
            Some(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
            Some(Ok(n)) => written = n,
            Some(Err(error)) => return Err(error),
            None => {}
        }
        // One timer for both deadlines (it is part of every connection's
        // writer, so it is kept to one): no progress for the write timeout,
        // or a cut peer not taking the frame in progress in time.
        let mut stalled_at = Instant::now() + limit.timeout;
        while written < end {
            let wake = cut_deadline.map_or(stalled_at, |cut| cut.min(stalled_at));
            tokio::select! {
                result = socket.write(&buffer[written..end]) => {
                    match result? {
                        0 => return Err(io::ErrorKind::WriteZero.into()),
                        n => {
                            written += n;
                            stalled_at = Instant::now() + limit.timeout;
                        }
                    }
                }
                () = outbox.closed(), if !closed_seen => {
                    closed_seen = true;
                    if outbox.aborted() {
                        end = frame_end(&buffer, written, outbox.role());
                        cut_deadline = Some(Instant::now() + SLOW_CLOSE_GRACE);
                    }
                }
                () = tokio::time::sleep_until(wake) => {
                    if cut_deadline.is_some_and(|cut| Instant::now() >= cut) {
                        return Ok(false);
                    }
                    return Err(io::ErrorKind::TimedOut.into());
                }
            }
        }
        if cut_deadline.is_some() || outbox.aborted() {
            return Ok(true);
        }
    }
    Ok(true)
}

/// The end of the frame that contains byte `at` of `buffer` (a run of
/// whole frames this node encoded), or `at` itself at a frame boundary.
fn frame_end(buffer: &[u8], at: usize, role: Role) -> usize {
    let mut start = 0;
    while start < at {
        let masked = role == Role::Client;
        match FrameHeader::parse(&buffer[start..], masked, 0, usize::MAX) {
            Ok(Some(header)) => {
                start += header.header_len + header.payload_len as usize;
            }
            // Frames built here always parse; if not, finish the buffer.
            _ => return buffer.len(),
        }
    }
    start.min(buffer.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::encode;

    #[test]
    fn the_frame_in_progress_ends_at_its_own_end() {
        let mut buffer = encode::text_frame(b"first").to_vec();
        let first = buffer.len();
        buffer.extend_from_slice(&encode::text_frame(&[b'x'; 300]));
        let second = buffer.len();
        buffer.extend_from_slice(&encode::text_frame(b"third"));
        assert_eq!(frame_end(&buffer, 0, Role::Server), 0);
        assert_eq!(frame_end(&buffer, 3, Role::Server), first);
        assert_eq!(frame_end(&buffer, first, Role::Server), first);
        assert_eq!(frame_end(&buffer, first + 1, Role::Server), second);
        let mut masked = encode::masked_text_frame(b"abc").to_vec();
        let one = masked.len();
        masked.extend_from_slice(&encode::masked_text_frame(b"defg"));
        assert_eq!(frame_end(&masked, 2, Role::Client), one);
    }
}
