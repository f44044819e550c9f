//! One served connection and the time it may hold its connection permit: a deadline for its
//! handshake, an idle limit, and an end of life after its maximum age and grace.
//!
//! - **Handshake.** From accept, a peer has [`Deadlines::handshake`] to send what decides its
//!   protocol and opens it: HTTP/2's 24-byte preface and its first frame (the SETTINGS every
//!   client sends straight after it), or HTTP/1's first request head (up to its empty line).
//!   A peer that sends nothing, or stops part way, is cut off then, so silent peers cannot hold
//!   the connection permits. Neither hyper's protocol detection nor HTTP/2's handshake has a
//!   deadline of its own.
//! - **End of life.** tonic starts a graceful close when the connection reaches its maximum age
//!   (HTTP/2 GOAWAY: calls in flight finish, new ones go to a new connection); a connection
//!   still open [`Deadlines::lifetime`] after accept (age + grace) is cut off here. (tonic's own
//!   `max_connection_age_grace` skips the graceful close and only cuts the connection.)
//! - **Idle.** After the handshake, a connection with no call in flight for [`Deadlines::idle`]
//!   is cut off (grpc-go's `MaxConnectionIdle`), so peers that only answer pings cannot hold the
//!   permits until their maximum age. Calls are counted by [`crate::count_calls::CountCalls`]
//!   through the [`AdmittedInfo`] tonic puts in each request; pings are not calls. With no call
//!   in flight, cutting loses nothing but a request that arrives at that very moment.
//!
//! A response may also ask for its connection to be cut, through the connection's
//! [`Link`](crate::link::Link).
//!
//! A deadline that passes, or a cut, makes every read and write fail, so hyper drops the
//! connection and its permit is released.

use crate::activity::Activity;
use crate::connect_info::AdmittedInfo;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};
use tonic::transport::server::Connected;

use crate::link::Link;

/// The client preface of HTTP/2 (RFC 9113, 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// CR LF CR LF, the end of an HTTP/1 head, as the last four bytes seen.
const HEAD_END: u32 = u32::from_be_bytes(*b"\r\n\r\n");

/// How long a connection may take to open, and to live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// From accept to the end of the handshake.
    pub handshake: Duration,
    /// From accept to the forced close: the maximum age plus its grace.
    pub lifetime: Duration,
    /// With no call in flight, to the close.
    pub idle: Duration,
}

/// How far a peer has come in opening its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handshake {
    /// Every byte so far matches the HTTP/2 preface (`seen` of them); `tail` holds the last
    /// four bytes and `head_ended` whether they were ever CR LF CR LF (the preface holds one).
    Detecting {
        seen: usize,
        tail: u32,
        head_ended: bool,
    },
    /// HTTP/2, preface done: `have` bytes of the first frame's 9-byte header, its length so far.
    FrameHeader { have: usize, length: usize },
    /// HTTP/2: `left` bytes of the first frame's payload still to come.
    FramePayload { left: usize },
    /// HTTP/1: until the end of the first request's head.
    Head { tail: u32 },
    /// Open.
    Done,
}

impl Handshake {
    const START: Handshake = Handshake::Detecting {
        seen: 0,
        tail: 0,
        head_ended: false,
    };

    /// The state after `bytes` arrived.
    fn feed(mut self, bytes: &[u8]) -> Handshake {
        for &b in bytes {
            self = match self {
                Handshake::Detecting {
                    seen,
                    tail,
                    head_ended,
                } => {
                    let tail = (tail << 8) | u32::from(b);
                    let head_ended = head_ended || tail == HEAD_END;
                    if b != PREFACE[seen] {
                        if head_ended {
                            Handshake::Done
                        } else {
                            Handshake::Head { tail }
                        }
                    } else if seen + 1 == PREFACE.len() {
                        Handshake::FrameHeader { have: 0, length: 0 }
                    } else {
                        Handshake::Detecting {
                            seen: seen + 1,
                            tail,
                            head_ended,
                        }
                    }
                }
                Handshake::FrameHeader { have, length } => {
                    let length = if have < 3 {
                        (length << 8) | usize::from(b)
                    } else {
                        length
                    };
                    match (have + 1, length) {
                        (9, 0) => Handshake::Done,
                        (9, left) => Handshake::FramePayload { left },
                        (have, length) => Handshake::FrameHeader { have, length },
                    }
                }
                Handshake::FramePayload { left: 1 } => Handshake::Done,
                Handshake::FramePayload { left } => Handshake::FramePayload { left: left - 1 },
                Handshake::Head { tail } => {
                    let tail = (tail << 8) | u32::from(b);
                    if tail == HEAD_END {
                        Handshake::Done
                    } else {
                        Handshake::Head { tail }
                    }
                }
                Handshake::Done => return Handshake::Done,
            };
        }
        self
    }
}

/// A connection that holds one of the server's connection permits until it closes, and is cut
/// off when its handshake or its life take too long.
#[derive(Debug)]
pub struct Admitted {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    handshake: Handshake,
    /// The handshake's deadline until it is done, then the end of life.
    deadline: Pin<Box<Sleep>>,
    end_of_life: Instant,
    /// The calls in flight, and the time without any that closes the connection.
    activity: Arc<Activity>,
    idle_limit: Duration,
    /// Armed at the idle limit while no call is in flight.
    idle: Pin<Box<Sleep>>,
    /// Why the connection was cut off, once it was.
    expired: Option<&'static str>,
    /// What its responses learn of it and may do to it.
    link: Arc<Link>,
}

impl Admitted {
    /// `stream`, accepted now, counted against the permit's server until dropped.
    pub fn new(stream: TcpStream, permit: OwnedSemaphorePermit, deadlines: Deadlines) -> Self {
        let now = Instant::now();
        Self {
            link: Arc::new(Link::default()),
            stream,
            _permit: permit,
            handshake: Handshake::START,
            deadline: Box::pin(tokio::time::sleep_until(now + deadlines.handshake)),
            end_of_life: now + deadlines.lifetime,
            activity: Activity::new(),
            idle_limit: deadlines.idle,
            idle: Box::pin(tokio::time::sleep_until(now + deadlines.idle)),
            expired: None,
        }
    }

    /// An error once the current deadline or the idle limit has passed, or a call asked for the
    /// cut (and registers the task to hear of each, and of the last call in flight ending).
    fn check_deadline(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.expired.is_none() && self.deadline.as_mut().poll(cx).is_ready() {
            let why = if self.handshake == Handshake::Done {
                "the connection outlived its maximum age and grace"
            } else {
                "the peer did not complete its handshake in time"
            };
            tracing::debug!(reason = why, "closing connection");
            self.expired = Some(why);
        }
        if self.expired.is_none()
            && self.handshake == Handshake::Done
            && let Some(since) = self.activity.idle_since(cx.waker())
        {
            let at = since + self.idle_limit;
            if self.idle.deadline() != at {
                self.idle.as_mut().reset(at);
            }
            if self.idle.as_mut().poll(cx).is_ready() {
                let why = "no call in flight for the idle limit";
                tracing::debug!(reason = why, "closing connection");
                self.expired = Some(why);
            }
        }
        if self.expired.is_none() && self.link.is_cut(cx.waker()) {
            let why = "a response whose client stopped reading asked for the cut";
            tracing::debug!(reason = why, "closing connection");
            self.expired = Some(why);
        }
        match self.expired {
            Some(why) => Err(io::Error::new(io::ErrorKind::TimedOut, why)),
            None => Ok(()),
        }
    }
}

impl Connected for Admitted {
    type ConnectInfo = AdmittedInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        AdmittedInfo {
            tcp: self.stream.connect_info(),
            activity: Arc::clone(&self.activity),
            link: Arc::clone(&self.link),
        }
    }
}

impl AsyncRead for Admitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check_deadline(cx)?;
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.stream).poll_read(cx, buf))?;
        if self.handshake != Handshake::Done {
            self.handshake = self.handshake.feed(&buf.filled()[before..]);
            if self.handshake == Handshake::Done {
                let end = self.end_of_life;
                self.deadline.as_mut().reset(end);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check_deadline(cx)?;
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check_deadline(cx)?;
        ready!(Pin::new(&mut self.stream).poll_flush(cx))?;
        // hyper flushes the socket only once its own write buffer is empty.
        self.link.flushed();
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check_deadline(cx)?;
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fed(chunks: &[&[u8]]) -> Handshake {
        chunks.iter().fold(Handshake::START, |h, c| h.feed(c))
    }

    #[test]
    fn http2_opens_with_its_preface_and_first_frame() {
        let settings = [0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100];
        let mut all = PREFACE.to_vec();
        all.extend_from_slice(&settings);
        assert_eq!(fed(&[&all]), Handshake::Done);
        // Byte by byte, and one byte short.
        let bytes: Vec<&[u8]> = all.chunks(1).collect();
        assert_eq!(fed(&bytes), Handshake::Done);
        assert_ne!(fed(&bytes[..bytes.len() - 1]), Handshake::Done);
        // An empty SETTINGS frame ends with its header.
        let mut empty = PREFACE.to_vec();
        empty.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        assert_eq!(fed(&[&empty]), Handshake::Done);
        assert_ne!(fed(&[PREFACE]), Handshake::Done);
        assert_ne!(fed(&[&PREFACE[..10]]), Handshake::Done);
        assert_ne!(fed(&[]), Handshake::Done);
    }

    #[test]
    fn http1_opens_with_its_first_request_head() {
        let head = b"POST /vbase.identity.v1.IdentityService/GetUser HTTP/1.1\r\nhost: a\r\n\r\n";
        assert_eq!(fed(&[head]), Handshake::Done);
        let (a, b) = head.split_at(head.len() - 2);
        assert_ne!(fed(&[a]), Handshake::Done);
        assert_eq!(fed(&[a, b]), Handshake::Done);
        // A head that starts like the HTTP/2 preface, then leaves it.
        assert_eq!(fed(&[b"PRI * HTTP/2.0\r\n\r\nX"]), Handshake::Done);
        assert_ne!(fed(&[b"PRI / HTTP/1.1\r\nhost: a\r\n"]), Handshake::Done);
    }
}
