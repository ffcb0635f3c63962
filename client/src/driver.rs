//! What every client driver does with its socket: receive, send, and optionally pass both
//! directions through a link conditioner (`--simulate`). The bots and the terminal client
//! share it, whatever the game; each adds its own loop around it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use arena_shared::game::Game;
use tokio::net::UdpSocket;

use crate::conditioner::{Conditioner, LinkSpec};
use crate::session::Session;

/// The tick rate a client assumes until its server tells its own (before its first
/// snapshot, so no input is paced by the guess).
pub const ASSUMED_TICK_HZ: u32 = 60;

/// A ticker at `tick_hz` (clamped to what a server may run) that skips the ticks it
/// missed: a client's loop paces its inputs by it, and makes a new one when the server
/// tells its rate.
pub fn pacer(tick_hz: u32) -> tokio::time::Interval {
    let hz = tick_hz.clamp(1, arena_shared::protocol::messages::MAX_TICK_HZ);
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(hz)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    ticker
}

/// The server a connect token names first (an admin API's token lists its standbys
/// after it), for [`SessionSocket::bind`]; the unspecified address if the token cannot
/// be read (the session then fails with the reason).
pub fn token_server(token: &[u8]) -> SocketAddr {
    arena_shared::netcode::ConnectToken::read(token)
        .ok()
        .and_then(|t| t.server_addresses.first().copied())
        .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)))
}

/// A session's UDP socket, with an optional conditioned link each way.
pub struct SessionSocket {
    socket: UdpSocket,
    up: Option<Conditioner>,
    down: Option<Conditioner>,
    buf: Vec<u8>,
}

impl SessionSocket {
    /// Binds a socket suited to reach `server` (loopback for a loopback server).
    pub async fn bind(
        server: SocketAddr,
        link: Option<LinkSpec>,
        seed: u64,
    ) -> anyhow::Result<Self> {
        let socket = UdpSocket::bind(local_bind_address(server))
            .await
            .context("cannot open a UDP socket")?;
        Ok(Self {
            socket,
            up: link.map(|spec| Conditioner::new(spec, seed)),
            down: link.map(|spec| Conditioner::new(spec, seed.wrapping_add(1))),
            buf: vec![0u8; 2048],
        })
    }

    /// Waits until datagrams can be read.
    pub async fn readable(&self) -> std::io::Result<()> {
        self.socket.readable().await
    }

    /// Reads every waiting datagram into the session (or into the conditioned link).
    pub fn receive<G: Game>(&mut self, session: &mut Session<G>, now: impl Fn() -> Duration) {
        while let Ok((len, from)) = self.socket.try_recv_from(&mut self.buf) {
            match &mut self.down {
                Some(link) => link.push(now(), from, self.buf[..len].to_vec()),
                None => session.handle_datagram(now(), from, &mut self.buf[..len]),
            }
        }
    }

    /// Hands the session what the conditioned link lets through by `now`.
    pub fn deliver_due<G: Game>(&mut self, session: &mut Session<G>, now: Duration) {
        if let Some(link) = &mut self.down {
            while let Some((from, mut bytes)) = link.pop(now) {
                session.handle_datagram(now, from, &mut bytes);
            }
        }
    }

    /// Sends what the session queued (through the conditioned link, if any).
    pub async fn flush<G: Game>(&mut self, session: &mut Session<G>, now: Duration) {
        while let Some(transmit) = session.poll_transmit() {
            match &mut self.up {
                Some(link) => link.push(now, transmit.destination, transmit.contents),
                None => {
                    let _ = self
                        .socket
                        .send_to(&transmit.contents, transmit.destination)
                        .await;
                }
            }
        }
        if let Some(link) = &mut self.up {
            while let Some((to, bytes)) = link.pop(now) {
                let _ = self.socket.send_to(&bytes, to).await;
            }
        }
    }

    /// Sends what the session queued straight out (goodbyes do not wait on a simulation).
    pub async fn flush_direct<G: Game>(&mut self, session: &mut Session<G>) {
        while let Some(transmit) = session.poll_transmit() {
            let _ = self
                .socket
                .send_to(&transmit.contents, transmit.destination)
                .await;
        }
    }
}

/// Binds on the loopback of the server's family when the server is on loopback, so tests
/// never open a socket beyond this machine.
pub fn local_bind_address(server: SocketAddr) -> SocketAddr {
    let ip = match server.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_loopback() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    SocketAddr::new(ip, 0)
}
