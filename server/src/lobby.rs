//! A standby's transport before it has a match.
//!
//! A process that neither owns the match nor is being prepared to receive it answers
//! every valid connection request with netcode's connection-denied packet, so a client
//! whose token lists it moves to the next address at once instead of waiting out a
//! connect timeout. While a handoff is being prepared ([`PrepareSlot`]), it admits: the
//! match's clients connect ahead (make before break) and wait, connected, for the match
//! to arrive. Their connection events stay queued in the transport, which the match's
//! core takes over at the commit ([`crate::core::ServerCore::with_transport`]).

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arena_shared::netcode;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

use crate::net::Clock;

/// How often the lobby does its upkeep (and beats the heartbeat) when no datagram wakes it.
pub const LOBBY_PERIOD: Duration = Duration::from_millis(50);

/// A handoff being prepared on this standby.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preparation {
    /// The match coming.
    pub match_id: String,
    /// The prepare's id; the commit must carry it.
    pub handoff_id: u64,
    /// The match's epoch at the owner (we would own epoch + 1).
    pub epoch: u64,
    /// Our clock's ms after which the prepare lapses without a commit.
    pub until_ms: u64,
    /// Whether a commit used it already (a commit is accepted once).
    pub committed: bool,
}

/// What the admin API and the lobby share about a prepare.
#[derive(Debug, Default)]
pub struct PrepareSlot {
    preparation: Mutex<Option<Preparation>>,
    connected: AtomicUsize,
    /// The lobby's transport drops by reason, over every transport it had.
    drops: Mutex<BTreeMap<&'static str, u64>>,
}

impl PrepareSlot {
    /// Opens (or replaces) a prepare.
    pub fn open(&self, preparation: Preparation) {
        if let Ok(mut slot) = self.preparation.lock() {
            *slot = Some(preparation);
        }
    }

    /// The prepare under way, if any.
    pub fn current(&self) -> Option<Preparation> {
        self.preparation.lock().ok().and_then(|p| p.clone())
    }

    /// Marks prepare `handoff_id` committed; `None` unless it is open and uncommitted.
    pub fn commit(&self, handoff_id: u64) -> Option<Preparation> {
        let mut slot = self.preparation.lock().ok()?;
        let preparation = slot.as_mut()?;
        if preparation.handoff_id != handoff_id || preparation.committed {
            return None;
        }
        preparation.committed = true;
        Some(preparation.clone())
    }

    /// Ends the prepare (a commit that failed, or one that lapsed).
    pub fn clear(&self) {
        if let Ok(mut slot) = self.preparation.lock() {
            *slot = None;
        }
    }

    /// Clients connected ahead.
    pub fn connected(&self) -> usize {
        self.connected.load(Ordering::SeqCst)
    }

    /// What the lobby's transport dropped, by reason (`not_admitting`: requests denied).
    pub fn drops(&self) -> BTreeMap<&'static str, u64> {
        self.drops.lock().map(|d| d.clone()).unwrap_or_default()
    }

    fn record_drops(&self, earlier: &BTreeMap<&'static str, u64>, transport: &netcode::Server) {
        if let Ok(mut drops) = self.drops.lock() {
            for (reason, n) in transport.stats().drop_counts() {
                drops.insert(
                    reason.name(),
                    earlier.get(reason.name()).copied().unwrap_or(0) + n,
                );
            }
        }
    }
}

/// Serves the socket until a match arrives on `start` (returned with the transport,
/// which holds the clients that connected ahead) or shutdown (`None`).
pub async fn serve<T>(
    socket: &UdpSocket,
    config: &netcode::ServerConfig,
    slot: &PrepareSlot,
    clock: Clock,
    start: &mut mpsc::UnboundedReceiver<T>,
    shutdown: &mut watch::Receiver<bool>,
    heartbeat: &crate::status::Heartbeat,
) -> Option<(T, netcode::Server)> {
    let period = LOBBY_PERIOD;
    let mut lobby = Lobby {
        config,
        slot,
        transport: denying(config),
        earlier: BTreeMap::new(),
        admitting_for: None,
    };
    let mut buf = vec![0u8; 2048];
    loop {
        tokio::select! {
            biased;
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return None;
                }
            }
            arrived = start.recv() => return arrived.map(|s| (s, lobby.transport)),
            ready = socket.readable() => {
                if ready.is_ok() {
                    heartbeat.beat(clock.now());
                    // A prepare opened a moment ago admits its clients' first requests.
                    lobby.follow_prepare(socket, clock.now()).await;
                    // Bounded: a flood cannot keep the lobby from its upkeep.
                    for _ in 0..10_000 {
                        match socket.try_recv_from(&mut buf) {
                            // Payloads are not for us yet: only the handshake and keep-alives matter.
                            Ok((len, from)) => {
                                let _ = lobby.transport.handle_packet(clock.now(), from, &mut buf[..len]);
                            }
                            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                            Err(_) => {}
                        }
                    }
                    // Challenges and denials go out at once, not at the next upkeep.
                    flush(socket, &mut lobby.transport).await;
                }
            }
            () = tokio::time::sleep(period) => {
                let now = clock.now();
                heartbeat.beat(now);
                lobby.follow_prepare(socket, now).await;
                lobby.transport.update(now);
                slot.connected.store(lobby.transport.num_connected(), Ordering::SeqCst);
                slot.record_drops(&lobby.earlier, &lobby.transport);
                flush(socket, &mut lobby.transport).await;
            }
        }
    }
}

/// A transport that denies every connection request.
fn denying(config: &netcode::ServerConfig) -> netcode::Server {
    let mut server = netcode::Server::new(config.clone());
    server.set_admitting(false);
    server
}

/// The lobby's state between wake-ups.
struct Lobby<'a> {
    config: &'a netcode::ServerConfig,
    slot: &'a PrepareSlot,
    transport: netcode::Server,
    /// Drops of the transports replaced so far, so the counts never go down.
    earlier: BTreeMap<&'static str, u64>,
    /// The prepare whose clients are admitted, if any.
    admitting_for: Option<u64>,
}

impl Lobby<'_> {
    /// Admits while a prepare is open (or committed, until its match arrives); when it
    /// ends without a match, lets its clients go and denies again.
    async fn follow_prepare(&mut self, socket: &UdpSocket, now: Duration) {
        let wanted = self
            .slot
            .current()
            .filter(|p| p.committed || now.as_millis() as u64 <= p.until_ms)
            .map(|p| p.handoff_id);
        if wanted == self.admitting_for {
            return;
        }
        if self.admitting_for.is_some() {
            let clients = self.transport.num_connected();
            self.transport.disconnect_all(now);
            flush(socket, &mut self.transport).await;
            tracing::info!(
                clients,
                "the handoff being prepared lapsed; dropped its clients"
            );
            self.slot.record_drops(&self.earlier, &self.transport);
            self.earlier = self.slot.drops();
            self.transport = denying(self.config);
            if wanted.is_none() {
                self.slot.clear();
            }
        }
        if wanted.is_some() {
            self.transport.set_admitting(true);
        }
        self.admitting_for = wanted;
    }
}

async fn flush(socket: &UdpSocket, transport: &mut netcode::Server) {
    while let Some(transmit) = transport.poll_transmit() {
        let _ = socket
            .send_to(&transmit.contents, transmit.destination)
            .await;
    }
}
