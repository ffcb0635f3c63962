//! The game's UDP socket, read and written in batches through `quinn-udp`.
//!
//! One reason to change: how datagrams cross the system-call boundary. A read takes up
//! to [`BATCH_SIZE`] buffers in one `recvmmsg` where the platform has it, and each buffer
//! may hold several datagrams from one sender that the kernel coalesced (UDP GRO on
//! Linux); [`BatchedSocket::try_recv_batch`] hands them out one by one, in place. Sends
//! go [`SEND_BATCH`] datagrams to one `sendmmsg` on Linux, through `rustix`
//! ([`BatchedSocket::send_batch`]): a tick sends one snapshot to each of many clients, and
//! `quinn-udp` batches only segments to one destination (GSO). Elsewhere, one system call
//! per datagram.
//!
//! All buffers are made once, with the socket; nothing here allocates per datagram.
//! `quinn-udp` and `rustix` do the unsafe system calls, so this crate keeps
//! `forbid(unsafe_code)`.
//!
//! The batched state is set up when the match loop takes the socket, not at bind: it
//! turns on GRO, and the lobby before it reads one datagram at a time into one small
//! buffer, which a coalesced batch would not fit. Where the platform refuses the setup,
//! the socket falls back to one datagram per system call through tokio.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;

use arena_shared::netcode::Transmit as Datagram;
use quinn_udp::{BATCH_SIZE, RecvMeta, UdpSockRef, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Biggest datagram we read; netcode's largest is 1225 bytes.
const RECV_DATAGRAM_BYTES: usize = 2048;

/// Most datagrams one `sendmmsg` carries: its headers live on the stack (about 8 KiB at
/// 32), and 32 already makes the system call's own cost a thirty-second per datagram.
pub const SEND_BATCH: usize = 32;

/// The match loop's UDP socket with its receive buffers.
#[derive(Debug)]
pub struct BatchedSocket {
    io: UdpSocket,
    /// `quinn-udp`'s per-socket state (GRO segments, send fallbacks); `None` where it
    /// could not be set up: then one datagram per system call.
    state: Option<UdpSocketState>,
    /// [`BATCH_SIZE`] receive buffers back to back, each with room for the largest
    /// coalesced batch the kernel may deliver (its GRO segment count times our largest
    /// datagram). Allocated zeroed: pages the kernel never writes stay unmapped.
    recv_buf: Box<[u8]>,
    /// What each buffer of the last read holds (sender, length, segment size).
    meta: [RecvMeta; BATCH_SIZE],
}

impl BatchedSocket {
    /// Takes the socket over for batched I/O (falls back to plain I/O, with a warning,
    /// where the platform refuses `quinn-udp`'s socket options).
    pub fn new(io: UdpSocket) -> Self {
        let state = match UdpSocketState::new(UdpSockRef::from(&io)) {
            Ok(state) => Some(state),
            Err(error) => {
                tracing::warn!(%error, "batched UDP I/O unavailable: one datagram per system call");
                None
            }
        };
        Self::with_state(io, state)
    }

    fn with_state(io: UdpSocket, state: Option<UdpSocketState>) -> Self {
        let segments = state.as_ref().map_or(1, UdpSocketState::gro_segments);
        Self {
            io,
            state,
            recv_buf: vec![0u8; BATCH_SIZE * segments * RECV_DATAGRAM_BYTES].into_boxed_slice(),
            meta: [RecvMeta::default(); BATCH_SIZE],
        }
    }

    /// Reads one batch of waiting datagrams without waiting, calling `on_datagram` with
    /// each one's sender and bytes (mutable: netcode decrypts in place). Returns how many
    /// it handed out; an error of kind `WouldBlock` when none was waiting.
    pub fn try_recv_batch(
        &mut self,
        mut on_datagram: impl FnMut(SocketAddr, &mut [u8]),
    ) -> io::Result<usize> {
        let Some(state) = &self.state else {
            let buf = &mut self.recv_buf[..RECV_DATAGRAM_BYTES];
            let (len, from) = self.io.try_recv_from(buf)?;
            on_datagram(from, &mut buf[..len]);
            return Ok(1);
        };
        let chunk_bytes = self.recv_buf.len() / BATCH_SIZE;
        let mut chunks = self.recv_buf.chunks_mut(chunk_bytes);
        // Exactly BATCH_SIZE chunks: the default (empty) is never used.
        let mut bufs: [IoSliceMut<'_>; BATCH_SIZE] =
            std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
        let io = &self.io;
        let meta = &mut self.meta;
        // Through `try_io`, so that a `WouldBlock` clears tokio's readiness.
        let filled = io.try_io(Interest::READABLE, || {
            state.recv(UdpSockRef::from(io), &mut bufs, meta)
        })?;
        let mut datagrams = 0;
        for (meta, buf) in self.meta.iter().zip(bufs.iter_mut()).take(filled) {
            let bytes = &mut buf[..meta.len.min(chunk_bytes)];
            if bytes.is_empty() {
                // An empty datagram is still one (netcode counts it as a drop).
                on_datagram(meta.addr, bytes);
                datagrams += 1;
                continue;
            }
            // Coalesced datagrams sit `stride` bytes apart; the last may be shorter.
            for datagram in bytes.chunks_mut(meta.stride.max(1)) {
                on_datagram(meta.addr, datagram);
                datagrams += 1;
            }
        }
        Ok(datagrams)
    }

    /// Sends every datagram of `batch` in order, [`SEND_BATCH`] to a system call, waiting
    /// for room when the socket's send buffer is full. A datagram the kernel refuses is
    /// skipped, after `on_error` is told of it; the rest still go.
    pub async fn send_batch(
        &self,
        batch: &[Datagram],
        mut on_error: impl FnMut(&io::Error, SocketAddr),
    ) {
        let mut next = 0;
        while next < batch.len() {
            let rest = &batch[next..];
            match self
                .io
                .try_io(Interest::WRITABLE, || send_some(&self.io, rest))
            {
                // Never 0 for a non-empty batch; the `max` keeps the loop bounded anyway.
                Ok(sent) => next += sent.max(1),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(e) = self.io.writable().await {
                        // The socket itself failed: nothing more can go.
                        for datagram in rest {
                            on_error(&e, datagram.destination);
                        }
                        return;
                    }
                }
                Err(e) => {
                    // The first datagram of `rest` is the one refused (sendmmsg reports an
                    // error only when it sent none).
                    on_error(&e, rest[0].destination);
                    next += 1;
                }
            }
        }
    }

    /// Waits until a datagram may be waiting.
    pub async fn readable(&self) -> io::Result<()> {
        self.io.readable().await
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }
}

/// Sends the first [`SEND_BATCH`] datagrams of `batch` (at least one) with one
/// `sendmmsg`; returns how many the kernel took, or its error for the first of them.
#[cfg(target_os = "linux")]
fn send_some(io: &UdpSocket, batch: &[Datagram]) -> io::Result<usize> {
    use rustix::net::addr::SocketAddrArg;
    use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, sendmmsg};
    use std::io::IoSlice;

    let count = batch.len().min(SEND_BATCH);
    // The arrays are whole; slots past `count` repeat the last datagram and are not sent.
    let datagram = |i: usize| &batch[i.min(count - 1)];
    let addrs: [_; SEND_BATCH] = std::array::from_fn(|i| datagram(i).destination.as_any());
    let iovs: [[IoSlice<'_>; 1]; SEND_BATCH] =
        std::array::from_fn(|i| [IoSlice::new(&datagram(i).contents)]);
    let mut controls: [SendAncillaryBuffer<'_, '_, '_>; SEND_BATCH] =
        std::array::from_fn(|_| SendAncillaryBuffer::default());
    let mut i = 0;
    let mut headers: [MMsgHdr<'_>; SEND_BATCH] = controls.each_mut().map(|control| {
        let header = MMsgHdr::new_with_addr(&addrs[i], &iovs[i], control);
        i += 1;
        header
    });
    Ok(sendmmsg(io, &mut headers[..count], SendFlags::empty())?)
}

/// One datagram per system call where there is no `sendmmsg`.
#[cfg(not(target_os = "linux"))]
fn send_some(io: &UdpSocket, batch: &[Datagram]) -> io::Result<usize> {
    let datagram = &batch[0];
    io.try_send_to(&datagram.contents, datagram.destination)
        .map(|_| 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quinn_udp::Transmit;

    async fn loopback() -> (UdpSocket, UdpSocket) {
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // Room for every datagram a test sends before it reads.
        for socket in [&a, &b] {
            socket2::SockRef::from(socket)
                .set_recv_buffer_size(1 << 20)
                .unwrap();
        }
        (a, b)
    }

    /// Sends `count` datagrams of growing size both ways and checks every byte.
    async fn round_trip(socket: BatchedSocket, peer: UdpSocket, count: usize) {
        let mut socket = socket;
        let to = socket.local_addr().unwrap();
        let from = peer.local_addr().unwrap();
        let datagram = |i: usize| vec![i as u8; 1 + i * 97 % 1225];
        for i in 0..count {
            peer.send_to(&datagram(i), to).await.unwrap();
        }
        let mut received = Vec::new();
        while received.len() < count {
            socket.readable().await.unwrap();
            match socket.try_recv_batch(|sender, bytes| received.push((sender, bytes.to_vec()))) {
                Ok(n) => assert!(n > 0),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        for (i, (sender, bytes)) in received.into_iter().enumerate() {
            assert_eq!(sender, from);
            assert_eq!(bytes, datagram(i), "datagram {i}");
        }
        let batch: Vec<Datagram> = (0..count)
            .map(|i| Datagram {
                destination: from,
                contents: datagram(i),
            })
            .collect();
        socket
            .send_batch(&batch, |e, to| panic!("send to {to}: {e}"))
            .await;
        let mut buf = [0u8; RECV_DATAGRAM_BYTES];
        for i in 0..count {
            let (len, sender) = peer.recv_from(&mut buf).await.unwrap();
            assert_eq!(
                (sender, &buf[..len]),
                (to, &datagram(i)[..]),
                "datagram {i}"
            );
        }
    }

    #[tokio::test]
    async fn batched_reads_and_sends_carry_every_datagram_intact() {
        let (a, b) = loopback().await;
        let socket = BatchedSocket::new(a);
        assert!(socket.state.is_some(), "quinn-udp set up on loopback");
        round_trip(socket, b, BATCH_SIZE + 8).await;
    }

    #[tokio::test]
    async fn a_datagram_the_kernel_refuses_is_skipped_and_the_rest_of_its_batch_still_goes() {
        let (a, b) = loopback().await;
        let socket = BatchedSocket::new(a);
        let peer = b.local_addr().unwrap();
        // Port 0 is no destination: the kernel refuses it without sending anything.
        let refused: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let batch: Vec<Datagram> = (0..SEND_BATCH as u8 + 5)
            .map(|i| Datagram {
                destination: if i == 3 || i == 20 { refused } else { peer },
                contents: vec![i; 10],
            })
            .collect();
        let mut errors = Vec::new();
        socket.send_batch(&batch, |_, to| errors.push(to)).await;
        assert_eq!(errors, [refused, refused]);
        let mut buf = [0u8; 64];
        for i in (0..SEND_BATCH as u8 + 5).filter(|&i| i != 3 && i != 20) {
            let (len, _) = b.recv_from(&mut buf).await.unwrap();
            assert_eq!(&buf[..len], &[i; 10], "datagram {i}");
        }
        assert!(b.try_recv_from(&mut buf).is_err(), "nothing more arrived");
    }

    #[tokio::test]
    async fn without_quinn_udp_state_the_socket_reads_one_datagram_at_a_time() {
        let (a, b) = loopback().await;
        round_trip(BatchedSocket::with_state(a, None), b, 40).await;
    }

    #[tokio::test]
    async fn datagrams_the_kernel_coalesced_are_handed_out_one_by_one() {
        let (a, b) = loopback().await;
        let mut socket = BatchedSocket::new(a);
        let to = socket.local_addr().unwrap();
        // A GSO send on loopback arrives as one coalesced buffer at a GRO socket.
        let sender = UdpSocketState::new(UdpSockRef::from(&b)).unwrap();
        if sender.max_gso_segments() < 10 || socket.state.as_ref().unwrap().gro_segments() < 10 {
            eprintln!("no UDP GSO/GRO here: nothing to check");
            return;
        }
        let contents: Vec<u8> = (0..950).map(|i| (i / 100) as u8).collect();
        let transmit = Transmit {
            destination: to,
            ecn: None,
            contents: &contents,
            segment_size: Some(100),
            src_ip: None,
        };
        sender.try_send(UdpSockRef::from(&b), &transmit).unwrap();
        let mut received = Vec::new();
        while received.len() < 10 {
            socket.readable().await.unwrap();
            let _ = socket.try_recv_batch(|_, bytes| received.push(bytes.to_vec()));
        }
        let expected: Vec<Vec<u8>> = contents.chunks(100).map(<[u8]>::to_vec).collect();
        assert_eq!(received, expected);
    }

    #[tokio::test]
    async fn an_empty_datagram_is_handed_out() {
        let (a, b) = loopback().await;
        let mut socket = BatchedSocket::new(a);
        b.send_to(&[], socket.local_addr().unwrap()).await.unwrap();
        socket.readable().await.unwrap();
        let mut lengths = Vec::new();
        let n = socket
            .try_recv_batch(|_, bytes| lengths.push(bytes.len()))
            .unwrap();
        assert_eq!((n, lengths), (1, vec![0]));
    }
}
