//! The connection opened ahead of a handoff (make before break): opened on a `Prepare`
//! token, kept alive with netcode keep-alives while play goes on where it is, promoted at
//! the new owner's first snapshot (or its redirect), dropped if it fails.
//!
//! What the new owner says on it before the switch is kept: its reconnect token, and its
//! reliable notices in an inbox of its own. Its ack tracker acknowledges those packets,
//! so the server will not send them again: on promotion the session's inbox adopts them.

use std::net::SocketAddr;
use std::time::Duration;

use arena_shared::game::Game;
use arena_shared::netcode::{self, ClientState};
use arena_shared::protocol::baselines::Baselines;
use arena_shared::protocol::reliable::Inbox;
use arena_shared::protocol::{AckTracker, ServerMessage, TokenPurpose};

use super::tokens::TokenInbox;
use super::{Layers, Received, Session, receive_message};

/// A second connection, opened ahead of a handoff to the server the match is about to
/// move to (make before break). Until it is promoted the client sends netcode keep-alives
/// only on it.
#[derive(Debug)]
pub(super) struct Prepared<G: Game> {
    pub(super) netcode: netcode::Client,
    pub(super) acks: AckTracker,
    /// The views its snapshots left: its own, as its acks are.
    pub(super) baselines: Baselines<G>,
    pub(super) tokens: TokenInbox,
    /// The new server's reliable notices so far (numbered on this connection).
    pub(super) inbox: Inbox<G>,
    /// The new server's reconnect token, if it arrived before the switch.
    pub(super) reconnect_token: Option<Vec<u8>>,
}

impl<G: Game> Session<G> {
    /// Whether a datagram from `from` belongs to the connection opened ahead.
    pub(super) fn is_from_prepared(&self, from: SocketAddr) -> bool {
        self.netcode.server_address() != Some(from)
            && self
                .next
                .as_ref()
                .is_some_and(|next| next.netcode.server_address() == Some(from))
    }

    /// A datagram on the connection opened ahead. The new owner's first snapshot means
    /// the match has moved: switch at once, without waiting for the old owner's redirect.
    pub(super) fn handle_prepared_datagram(
        &mut self,
        now: Duration,
        from: SocketAddr,
        datagram: &mut [u8],
    ) {
        let Some(next) = self.next.as_mut() else {
            return;
        };
        let layers = Layers {
            netcode: &mut next.netcode,
            acks: &mut next.acks,
            baselines: &mut next.baselines,
            inbox: &mut next.inbox,
            // The same match: the settings are those already known, unless it told its own.
            config: self.inbox.config().copied(),
        };
        let Some(message) = receive_message(layers, &mut self.stats, now, from, datagram) else {
            return;
        };
        match message {
            Received::Snapshot(snapshot) => {
                self.promote_prepared(now);
                self.receive_snapshot(now, snapshot);
            }
            // Kept for the switch: the new owner's reconnect token may come first.
            Received::Message(ServerMessage::TokenPart(part)) => {
                if let Some((TokenPurpose::Reconnect, token)) = next.tokens.add(part) {
                    next.reconnect_token = Some(token);
                }
            }
            // Acknowledged by this connection's acks: kept for the switch, or lost.
            Received::Message(ServerMessage::Reliable(reliable)) => next.inbox.handle(reliable),
            Received::Message(
                ServerMessage::Scoreboard(_)
                | ServerMessage::Snapshot
                | ServerMessage::NoticesAndSnapshot(_),
            ) => {}
        }
    }

    /// Phase one of a handoff: connects ahead to the server the match is about to move
    /// to, and keeps playing here.
    pub(super) fn open_prepared(&mut self, now: Duration, token: &[u8]) {
        let parsed = match netcode::ConnectToken::read(token) {
            Ok(parsed) => parsed,
            Err(error) => {
                tracing::debug!(%error, "prepare token refused");
                return;
            }
        };
        let Some(to) = parsed.server_addresses.first().copied() else {
            return;
        };
        let already_there = self.netcode.server_address() == Some(to)
            || self.next.as_ref().is_some_and(|next| {
                next.netcode.server_address() == Some(to) && !next.netcode.state().is_error()
            });
        if already_there {
            return;
        }
        if self.close_prepared(now) {
            self.stats.prepares_abandoned += 1;
        }
        tracing::info!(%to, "the match is about to move: connecting there ahead");
        self.next = Some(Prepared {
            netcode: netcode::Client::with_token(now, parsed),
            acks: AckTracker::default(),
            baselines: Baselines::default(),
            tokens: TokenInbox::default(),
            inbox: Inbox::default(),
            reconnect_token: None,
        });
    }

    /// The commit of a handoff. A redirect to the server a connection was opened ahead to
    /// switches to it at once; any other goes through a new handshake.
    pub(super) fn follow_redirect(&mut self, now: Duration, token: &[u8]) {
        let first = netcode::ConnectToken::read(token)
            .ok()
            .and_then(|t| t.server_addresses.first().copied());
        let prepared = first.is_some()
            && self.next.as_ref().is_some_and(|next| {
                next.netcode.is_connected() && next.netcode.server_address() == first
            });
        if prepared {
            self.promote_prepared(now);
            return;
        }
        tracing::info!(from = ?self.server_address(), "match moved: following the redirect");
        self.stats.handoffs_followed += 1;
        self.replace_transport(now, token, 0, true);
    }

    /// Makes the connection opened ahead the current one: the match moved there.
    pub(super) fn promote_prepared(&mut self, now: Duration) {
        let Some(next) = self.next.take() else {
            return;
        };
        let from = self.netcode.server_address();
        tracing::info!(?from, to = ?next.netcode.server_address(), "match moved: switching to the connection opened ahead");
        self.say_goodbye(now);
        self.netcode = next.netcode;
        self.acks = next.acks;
        self.baselines = next.baselines;
        self.tokens = next.tokens;
        // Its numbering goes on from what that connection received.
        self.inbox.adopt(next.inbox);
        if next.reconnect_token.is_some() {
            self.reconnect_token = next.reconnect_token;
        }
        self.stats.handoffs_followed += 1;
        self.stats.handoffs_prepared += 1;
        // The player has been waiting since the old server's last snapshot.
        let waiting_since = self.latest_at.min(now);
        self.begin_new_server(now, from, true, waiting_since);
    }

    /// Closes the connection opened ahead, if any (disconnect packets when connected, so
    /// its server frees the slot). Returns whether there was one.
    pub(super) fn close_prepared(&mut self, now: Duration) -> bool {
        let Some(mut next) = self.next.take() else {
            return false;
        };
        next.netcode.disconnect(now);
        while let Some(t) = next.netcode.poll_transmit() {
            self.outbox.push_back(t);
        }
        true
    }

    /// Keeps the connection opened ahead alive; drops it if it failed (denied, timed out,
    /// disconnected): the handoff was called off, and play goes on here.
    pub(super) fn update_prepared(&mut self, now: Duration) {
        let Some(next) = &mut self.next else {
            return;
        };
        next.netcode.update(now);
        let state = next.netcode.state();
        if state.is_error() || state == ClientState::Disconnected {
            tracing::debug!(server = ?next.netcode.server_address(), ?state, "the connection opened ahead failed; staying here");
            self.next = None;
            self.stats.prepares_abandoned += 1;
        }
    }
}
