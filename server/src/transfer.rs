//! The owner's side of a two-phase handoff, and the rule that decides its outcome.
//!
//! 1. *Prepare*, while the match keeps ticking: the standby says whether it can take the
//!    match; every client gets a connect token for it and connects ahead (bounded by
//!    [`handoff::PREPARE_WAIT`]).
//! 2. *Commit*: the loop freezes after tick T and hands back the match; it is sealed for
//!    this standby, this prepare, this epoch and a deadline, and posted to the standby,
//!    which takes epoch e+1 in the store and ticks T+1 over the open connections.
//! 3. *The outcome is read from the store*, whatever the HTTP answer said:
//!    - epoch e+1 is the standby's: the match is given away. The loop redirects anyone
//!      left and keeps the frozen world until the successor's own snapshot is durable;
//!      if the successor's lease lapses first (it died before serving), this process
//!      takes the match back at e+2 from exactly what it shipped (`watch_successor`).
//!    - the lease is still at e: nobody took e+1, so we take it ourselves, which makes
//!      sure nobody can any more (a standby waking from a pause finds it taken), and the
//!      match resumes here. Clients felt only the pause.
//!    - anything else: another process owns the match; this one stops.
//!
//! An abort before the freeze (the standby refused, or does not answer) cancels the
//! prepare tokens; the match never stopped.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arena_shared::snapshot;
use tokio::sync::oneshot;

use crate::handoff::{self, Accepted, Commit, PrepareRequest, Prepared};
use crate::host::Host;
use crate::net::{Frozen, LoopCommand, RETIRED_LIMIT, wall_ms};
use crate::ownership::{Ownership, renew_every};
use crate::store::StoreError;
use arena_shared::game::Game;

/// What the store says after a commit.
enum Outcome {
    /// The standby owns epoch e+1.
    GivenAway,
    /// Nobody took e+1; we did: the match resumes here at e+1 (`Some`), or, when the
    /// store cannot take a new epoch (a full disk) but still holds ours and the commit's
    /// deadline has passed, at e (`None`).
    Kept(Option<Box<Ownership>>),
    /// Someone else owns the match.
    Lost(String),
}

/// Hands the running match to the standby whose admin API is at `to`.
/// With `make_before_break` off, clients are told nothing before the commit.
pub async fn hand_off<G: Game>(
    host: &Arc<Host<G>>,
    to: &str,
    make_before_break: bool,
) -> Result<Accepted, String> {
    if host.role() != "owner" {
        return Err(format!("this process is {}, not an owner", host.role()));
    }
    let token = host.admin_token().map(str::to_owned);
    let token = token.as_deref();
    let (match_id, epoch, tick, players) =
        ask(host, |reply| LoopCommand::Describe { reply }).await?;
    let request = PrepareRequest {
        match_id: match_id.clone(),
        epoch,
        tick,
        players,
        snapshot_format: snapshot::FORMAT_VERSION,
        from_udp: host.config.core.tokens.own_address,
    };
    let prepared = handoff::prepare(to, token, &request)
        .await
        .map_err(|e| format!("{e:#}; the match stays here"))?;
    let (told, ahead) = if make_before_break {
        let told = ask(host, |reply| LoopCommand::Prepare {
            to: prepared.udp,
            reply,
        })
        .await?;
        (
            told,
            wait_for_clients(to, token, prepared.handoff_id, told).await,
        )
    } else {
        (0, 0)
    };
    tracing::info!(%match_id, told, connected_ahead = ahead, standby = %prepared.udp, "prepared; committing");

    let frozen = match ask(host, |reply| LoopCommand::Freeze { reply }).await? {
        Ok(frozen) => frozen,
        Err(reason) => {
            let _ = host.commands.send(LoopCommand::CancelPrepare);
            return Err(reason);
        }
    };
    let commit = Commit {
        recipient: prepared.instance.clone(),
        match_id: match_id.clone(),
        epoch: frozen.epoch,
        handoff_id: prepared.handoff_id,
        deadline_unix_ms: wall_ms() + handoff::COMMIT_TIMEOUT.as_millis() as u64,
        from_udp: host.config.core.tokens.own_address,
    };
    let sealed = handoff::seal(&host.config.private_key, &commit, &frozen.bytes);
    let answer = handoff::commit(to, token, sealed, frozen.frozen_at_us).await;
    if let Err(error) = &answer {
        tracing::warn!(%match_id, %error, "the commit's answer was not a yes; reading the store");
    }

    let decided = {
        let host = Arc::clone(host);
        let (commit, prepared, tick) = (commit.clone(), prepared.clone(), frozen.tick);
        tokio::task::spawn_blocking(move || decide(&host, &commit, &prepared, tick))
            .await
            .unwrap_or_else(|_| Outcome::Lost("deciding the outcome failed".into()))
    };
    match decided {
        Outcome::GivenAway => {
            tracing::info!(%match_id, epoch = frozen.epoch + 1, standby = %prepared.udp,
                "the store says the standby owns the match; redirecting players");
            host.set_role("retired");
            let _ = host.commands.send(LoopCommand::Commit { to: prepared.udp });
            tokio::spawn(watch_successor(
                Arc::clone(host),
                frozen.clone(),
                prepared.instance.clone(),
            ));
            Ok(Accepted {
                udp: prepared.udp,
                epoch: frozen.epoch + 1,
                tick: frozen.tick,
            })
        }
        Outcome::Kept(ownership) => {
            let epoch = ownership.as_ref().map_or(frozen.epoch, |o| o.epoch);
            let _ = host.commands.send(LoopCommand::Resume { ownership });
            let why = answer.err().map_or_else(
                || "it answered, but the store shows no new owner".to_owned(),
                |e| format!("{e:#}"),
            );
            Err(format!(
                "the standby did not take the match ({why}); it resumes here at epoch {epoch}"
            ))
        }
        Outcome::Lost(reason) => {
            let _ = host.commands.send(LoopCommand::Lost {
                reason: reason.clone(),
            });
            Err(format!("the match is no longer ours: {reason}"))
        }
    }
}

/// Sends the loop a command that answers, and waits for the answer.
async fn ask<G: Game, T>(
    host: &Host<G>,
    command: impl FnOnce(oneshot::Sender<T>) -> LoopCommand,
) -> Result<T, String> {
    let (reply, answer) = oneshot::channel();
    host.commands
        .send(command(reply))
        .map_err(|_| "the match loop has ended".to_owned())?;
    answer
        .await
        .map_err(|_| "the match loop ended during the handoff".to_owned())
}

/// Polls the standby until `told` clients connected ahead, at most
/// [`handoff::PREPARE_WAIT`]. Returns how many did; stragglers follow the redirect.
async fn wait_for_clients(to: &str, token: Option<&str>, handoff_id: u64, told: usize) -> usize {
    let connected = std::sync::atomic::AtomicUsize::new(0);
    let poll = async {
        loop {
            match handoff::progress(to, token, handoff_id).await {
                Ok(progress) => connected.store(progress.connected, Ordering::Relaxed),
                Err(error) => {
                    tracing::warn!(%error, "cannot read the prepare's progress");
                    return;
                }
            }
            if connected.load(Ordering::Relaxed) >= told {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    // Bounded by time, however slowly the standby answers.
    let _ = tokio::time::timeout(handoff::PREPARE_WAIT, poll).await;
    connected.load(Ordering::Relaxed)
}

/// Reads the outcome of a commit from the store (and settles it, if nobody had).
fn decide<G: Game>(host: &Host<G>, commit: &Commit, prepared: &Prepared, tick: u64) -> Outcome {
    let next = commit.epoch + 1;
    // A store that fails is asked again: the frozen match waits, it is not lost.
    let mut still_ours = false;
    for attempt in 0..20 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(100));
        }
        let lease = match host.store.lease(&commit.match_id) {
            Ok(Some(lease)) => lease,
            Ok(None) => return Outcome::Lost("the store holds no lease of the match".into()),
            Err(error) => {
                tracing::warn!(%error, "cannot read the lease after a commit; trying again");
                continue;
            }
        };
        if lease.epoch == next && lease.owner == prepared.instance {
            return Outcome::GivenAway;
        }
        if lease.epoch != commit.epoch {
            return Outcome::Lost(format!("epoch {} is owned by {}", lease.epoch, lease.owner));
        }
        still_ours = lease.owner == host.config.owner_id;
        // Nobody took e+1: take it, so that nobody can any more.
        let now_ms = host.clock_ms();
        let ours = host.lease(next, tick);
        match host.store.acquire(&commit.match_id, &ours, wall_ms(), true) {
            Ok(()) => {
                return match host.ownership(&commit.match_id, next, now_ms, tick) {
                    Ok(ownership) => Outcome::Kept(Some(Box::new(ownership))),
                    Err(error) => {
                        Outcome::Lost(format!("cannot start the snapshot writer: {error}"))
                    }
                };
            }
            // Lost the race for e+1: read who won.
            Err(StoreError::Fenced { .. }) => continue,
            Err(error) => tracing::warn!(%error, "cannot take epoch {next} back; trying again"),
        }
    }
    // Epoch e+1 cannot be written (a full disk), but e is still ours, renewed in place,
    // and past the deadline the standby refuses the commit: resume at e.
    if still_ours && wall_ms() > commit.deadline_unix_ms {
        tracing::warn!(match_id = %commit.match_id, epoch = commit.epoch,
            "the store cannot take a new epoch; resuming at the one we hold");
        return Outcome::Kept(None);
    }
    Outcome::Lost("the store did not answer after the commit".into())
}

/// After a handoff: keeps the frozen world until the successor's own snapshot is
/// durable, then lets the loop leave. If the successor's lease lapses first (it died
/// before serving), takes the match back at the next epoch from the frozen world,
/// unless a watching standby did so first.
async fn watch_successor<G: Game>(host: Arc<Host<G>>, frozen: Frozen, successor: String) {
    let step = renew_every(host.config.lease);
    let polls = (RETIRED_LIMIT.as_millis() / step.as_millis().max(1)) as usize;
    let successor_epoch = frozen.epoch + 1;
    for _ in 0..polls {
        tokio::time::sleep(step).await;
        let check = {
            let host = Arc::clone(&host);
            let (frozen, successor) = (frozen.clone(), successor.clone());
            tokio::task::spawn_blocking(move || check_successor(&host, &frozen, &successor)).await
        };
        if let Ok(Some(command)) = check {
            if let LoopCommand::Resume { .. } = command {
                host.set_role("owner");
            }
            let _ = host.commands.send(command);
            return;
        }
    }
    tracing::warn!(
        epoch = successor_epoch,
        "the successor's first snapshot never showed in the store"
    );
}

/// One look at the successor: `Some(Leave)` once it is durable or the match moved on,
/// `Some(Resume)` once we took the match back.
fn check_successor<G: Game>(
    host: &Host<G>,
    frozen: &Frozen,
    successor: &str,
) -> Option<LoopCommand> {
    let match_id = &frozen.match_id;
    let successor_epoch = frozen.epoch + 1;
    let lease = host.store.lease(match_id).ok()??;
    if lease.epoch > successor_epoch {
        return Some(LoopCommand::Leave);
    }
    let durable = host
        .store
        .newest_snapshot_id(match_id)
        .ok()?
        .is_some_and(|(epoch, _)| epoch >= successor_epoch);
    if durable {
        return Some(LoopCommand::Leave);
    }
    let now_ms = host.clock_ms();
    let wall = wall_ms();
    if !lease.lapsed(wall) {
        return None;
    }
    let epoch = successor_epoch + 1;
    let ours = host.lease(epoch, frozen.tick);
    host.store.acquire(match_id, &ours, wall, false).ok()?;
    tracing::warn!(%match_id, %successor, epoch, tick = frozen.tick,
        "the successor died before its first snapshot: took the match back from the frozen world");
    let ownership = host.ownership(match_id, epoch, now_ms, frozen.tick).ok()?;
    Some(LoopCommand::Resume {
        ownership: Some(Box::new(ownership)),
    })
}
