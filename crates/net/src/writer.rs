//! The writer task of a connection: the only code that writes its socket.
//! It drains the connection's [`Outbox`] and writes each batch with as few
//! `write` calls as possible; a slow peer blocks only this task.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::time::{Instant, timeout_at};
use tokio_util::task::TaskTracker;

use crate::outbox::{Chunk, Drained, Outbox};

/// How long a closing connection may take to send its close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Starts the writer task of a connection on `tasks`.
pub fn spawn_writer(socket: OwnedWriteHalf, outbox: Arc<Outbox>, tasks: &TaskTracker) {
    tasks.spawn(run_writer(socket, outbox));
}

/// The writer task: drains the outbox into the socket, coalescing each
/// batch into as few writes as possible, until the outbox closes.
pub(crate) async fn run_writer(mut socket: OwnedWriteHalf, outbox: Arc<Outbox>) {
    let mut spare = VecDeque::new();
    loop {
        match outbox.drain(spare).await {
            Drained::Frames { mut frames, bytes } => {
                let written = write_batch(&mut socket, &frames, bytes, &outbox).await;
                outbox.written(bytes);
                match written {
                    Ok(true) => {}
                    // Aborted as a slow consumer mid-write: drop the socket.
                    Ok(false) => return,
                    Err(_) => {
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
                let deadline = Instant::now() + CLOSE_GRACE;
                let _ = timeout_at(deadline, socket.write_all(&frame)).await;
                let _ = timeout_at(deadline, socket.shutdown()).await;
                return;
            }
            Drained::Finish => {
                let _ = tokio::time::timeout(CLOSE_GRACE, socket.shutdown()).await;
                return;
            }
            Drained::Abort => return,
        }
    }
}

/// Most bytes coalesced into one write.
const MAX_WRITE: usize = 64 << 10;

/// Writes frames in order, coalesced into as few writes as possible (one
/// contiguous buffer per write: cheaper for the kernel than many small
/// iovecs). The buffer is freed after each batch so idle connections hold
/// none. `Ok(false)` when the outbox was aborted while a write was blocked
/// (the peer stopped reading).
async fn write_batch(
    socket: &mut OwnedWriteHalf,
    chunks: &VecDeque<Chunk>,
    bytes: usize,
    outbox: &Outbox,
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
        let write = socket.write_all(&buffer);
        tokio::pin!(write);
        let mut closed_seen = false;
        loop {
            tokio::select! {
                result = &mut write => { result?; break; }
                () = outbox.closed(), if !closed_seen => {
                    closed_seen = true;
                    if outbox.aborted() {
                        return Ok(false);
                    }
                }
            }
        }
    }
    Ok(true)
}
