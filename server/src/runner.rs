//! The whole server process, generic over the game: parse flags, bind, and run (or wait
//! for) a match until Ctrl-C or SIGTERM. `arena-server` is `main::<Shooter>()`; a game of
//! your own gets every flag, the admin API, the store, handoffs and crash recovery with
//! `main::<YourGame>()`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use arena_shared::game::{Game, MatchConfig};
use arena_shared::netcode;
use tokio::sync::watch;

use crate::admin::{self, AdminState, TokenMinter};
use crate::agones::{self as agones_sdk, Agones, Probe};
use crate::config::{Args, MatchFlags, load_or_create_key};
use crate::core::{CoreConfig, TokenConfig};
use crate::faults::Faults;
use crate::host::{Host, HostConfig};
use crate::net::{LoopExit, bind_udp};

/// A server binary's whole `main`: the flags from the command line, logs to stderr, the
/// match of game `G` until a signal; an error is printed and exits 1.
pub fn main<G: Game>() -> ExitCode {
    let (args, match_flags) = Args::parse_with_sources();
    if let Some(path) = &args.make_key {
        return match crate::config::make_key_file(path) {
            Ok(()) => {
                println!("wrote a new private key to {}", path.display());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("{}: {error:#}", program_name());
                ExitCode::FAILURE
            }
        };
    }
    init_logging();
    match run::<G>(args, match_flags) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("{}: {error:#}", program_name());
            ExitCode::FAILURE
        }
    }
}

/// This program's name, for messages (`arena-server`, `tag-server`...).
fn program_name() -> String {
    std::env::args()
        .next()
        .as_deref()
        .map(std::path::Path::new)
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "arena-server".to_owned())
}

fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Runs the process with parsed flags (`match_flags`: which match-shaping flags were given
/// on the command line). Returns the exit code: 0 after a stop or a handoff, 3 when
/// another process took the match.
pub fn run<G: Game>(args: Args, match_flags: MatchFlags) -> anyhow::Result<ExitCode> {
    args.check().map_err(anyhow::Error::msg)?;
    if !args.admin.ip().is_loopback() && args.admin_token.is_none() {
        bail!(
            "--admin {} is not a loopback address: set --admin-token so strangers cannot mint tokens or move the match",
            args.admin
        );
    }
    if !(args.snapshot_every.is_finite() && (0.05..=3600.0).contains(&args.snapshot_every)) {
        bail!(
            "--snapshot-every must be 0.05 to 3600 seconds, got {}",
            args.snapshot_every
        );
    }
    let agones = if args.agones {
        Some(Agones::from_env().map_err(|e| anyhow::anyhow!("--agones: {e}"))?)
    } else {
        None
    };
    // Under Agones, SIGTERM means "this pod is going away": hand the match to the standby
    // fleet unless told where.
    let handoff_to = args
        .handoff_to
        .clone()
        .or_else(|| args.agones.then(|| crate::host::AUTO.to_owned()));
    let private_key = load_or_create_key(&args)?;
    let max_players = args.max_players as usize;
    let udp = bind_udp(args.listen, max_players)?;
    let bound = udp.local_addr()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let public_addr = match (args.public_addr, &agones) {
        (Some(public), _) => public,
        // Under Agones, listening on a wildcard: the address players reach is the one
        // Agones gave the game server (node address and host port).
        (None, Some(sdk)) if bound.ip().is_unspecified() => runtime
            .block_on(sdk.wait_for_public_address("default", bound.port()))
            .map_err(|e| {
                anyhow::anyhow!("--agones with a wildcard --listen and no --public-addr: {e}")
            })?,
        (None, _) => bound,
    };
    if public_addr.ip().is_unspecified() {
        bail!(
            "--listen {bound} is a wildcard address: give --public-addr, the address clients reach"
        );
    }
    let seed = args
        .seed
        .unwrap_or_else(arena_shared::identity::random_client_id);
    let world = MatchConfig {
        max_players: args.max_players,
        tick_hz: args.tick_hz,
        seed,
    };
    let core = CoreConfig {
        match_id: args.match_id.clone(),
        netcode: netcode::ServerConfig {
            protocol_id: args.protocol_id,
            private_key,
            max_clients: max_players,
            addresses: vec![bound, public_addr],
        },
        world,
        view_radius_m: args.view_radius,
        client_bytes_per_s: args.client_bytes_per_s,
        workers: match args.workers {
            0 => crate::fanout::default_workers(),
            n => usize::from(n),
        },
        tokens: TokenConfig {
            own_address: public_addr,
            peers: args.peers.clone(),
            timeout_s: args.client_timeout_s,
            expire_s: args.token_expire_s,
        },
    };

    runtime.block_on(async move {
        let admin_listener = tokio::net::TcpListener::bind(args.admin)
            .await
            .with_context(|| format!("cannot bind the admin API on {}", args.admin))?;
        let admin_addr = admin_listener.local_addr()?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (host, mut loop_thread) = Host::<G>::start(
            HostConfig {
                core,
                private_key,
                owner_id: format!("pid{}@{}", std::process::id(), admin_addr),
                lease: Duration::from_millis(args.lease_ms),
                snapshot_every: Duration::from_secs_f64(args.snapshot_every),
                admin_token: args.admin_token.clone(),
                watch: args.watch.clone(),
                faults: Faults::from_env(),
                store: args.store.clone(),
                store_namespace: args.store_namespace.clone(),
                admin: admin_addr,
                match_flags,
            },
            &args.data_dir,
            udp,
            shutdown_rx.clone(),
        )?;
        // The settings the match runs with: a resumed match keeps its own.
        let mut settings = world;
        if !args.standby {
            let owner = Arc::clone(&host);
            let match_id = args.match_id.clone();
            settings = tokio::task::spawn_blocking(move || owner.own(&match_id))
                .await
                .context("starting the match failed")??;
        } else {
            if let Some(match_id) = args.watch.clone() {
                tokio::spawn(Arc::clone(&host).watch(match_id, shutdown_rx.clone()));
            }
            tokio::spawn(Arc::clone(&host).advertise(shutdown_rx.clone()));
        }
        tokio::spawn(Arc::clone(&host).follow_standbys(shutdown_rx.clone()));

        let state = Arc::new(AdminState {
            host: Arc::clone(&host),
            tokens: TokenMinter {
                protocol_id: args.protocol_id,
                private_key,
                server_addresses: std::iter::once(public_addr).chain(args.peers.iter().copied()).collect(),
                expire_s: args.token_expire_s,
                timeout_s: args.client_timeout_s,
            },
        });
        let admin = tokio::spawn(admin::serve(
            admin_listener,
            admin::router(state),
            admin::AdminLimits::default(),
            shutdown_rx.clone(),
        ));
        tracing::info!(
            match_id = %args.match_id,
            role = host.role(),
            udp = %bound,
            public = %public_addr,
            admin = %admin_addr,
            max_players = settings.max_players,
            tick_hz = settings.tick_hz,
            seed = settings.seed,
            store = %host.store().info().address,
            "serving"
        );
        let sidecar = agones.inspect(|sdk| {
            tokio::spawn(start_agones(sdk.clone(), Arc::clone(&host), shutdown_rx.clone()));
        });

        let exit = tokio::select! {
            () = wait_for_signal() => {
                tracing::info!("shutdown requested (a second Ctrl-C or SIGTERM exits at once)");
                tokio::spawn(async {
                    wait_for_signal().await;
                    eprintln!("{}: second signal; exiting at once", program_name());
                    std::process::exit(130);
                });
                let mut handed_off = false;
                // Agones' own choice of `auto` skips a match nobody plays (a fleet scaling
                // down its Ready servers): its final snapshot is kept, a standby is not
                // used up. An operator's --handoff-to always hands off.
                let empty = host.status().players == 0;
                let implied = args.handoff_to.is_none();
                if implied && empty && handoff_to.is_some() {
                    tracing::info!("SIGTERM with no players: stopping here instead of handing the match off");
                }
                let handoff_to = handoff_to.clone().filter(|_| !(implied && empty));
                if let (Some(to), "owner") = (&handoff_to, host.role()) {
                    match host.hand_off(to.clone(), true).await {
                        Ok((to, accepted)) => {
                            tracing::info!(%to, udp = %accepted.udp, "handed the match off on SIGTERM");
                            handed_off = true;
                        }
                        Err(reason) => tracing::error!(%reason, "handoff on SIGTERM failed; stopping the match here"),
                    }
                }
                // After a handoff the loop serves redirects until its clients have left
                // and the successor is durable; otherwise it stops: final snapshot,
                // lease released, clients sent to a standby that took over.
                if !handed_off {
                    let _ = shutdown_tx.send(true);
                }
                host.stop_waiting();
                (&mut loop_thread.done).await.unwrap_or(LoopExit::Shutdown)
            }
            exit = &mut loop_thread.done => exit.unwrap_or(LoopExit::Shutdown),
        };
        let _ = shutdown_tx.send(true);
        let _ = admin.await;
        if let Some(sdk) = sidecar {
            // The match is handed off or stopped (final snapshot, lease released).
            match sdk.shutdown().await {
                Ok(()) => tracing::info!("told Agones: Shutdown"),
                Err(error) => tracing::error!(%error, "could not tell Agones: Shutdown"),
            }
        }
        Ok(match exit {
            LoopExit::Shutdown | LoopExit::HandedOff => ExitCode::SUCCESS,
            LoopExit::LostOwnership(reason) => {
                eprintln!("{}: another process owns the match now ({reason}); exiting", program_name());
                ExitCode::from(3)
            }
        })
    })
}

/// The Agones lifecycle ([`agones_sdk::lifecycle`]) with this process's probe: the loop's
/// heartbeat, and whether it owns a match with players. A standby stays `Ready` until it
/// receives a match with players.
async fn start_agones<G: Game>(sdk: Agones, host: Arc<Host<G>>, stop: watch::Receiver<bool>) {
    let role = host.role();
    let probe = move || Probe {
        loop_alive: host.loop_alive(),
        has_players: host.role() == "owner" && host.status().players > 0,
    };
    agones_sdk::lifecycle(sdk, role, probe, stop).await;
}

/// Ctrl-C or SIGTERM.
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
