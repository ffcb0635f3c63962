//! `arena-server`: parses flags, binds, and runs the match until Ctrl-C or SIGTERM.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use arena_server::admin::{self, AdminState, TokenMinter};
use arena_server::config::{Args, load_or_create_key};
use arena_server::core::{CoreConfig, ServerCore};
use arena_server::net::{bind_udp, run_loop};
use arena_server::status::Status;
use arena_shared::netcode;
use arena_shared::sim::WorldConfig;
use clap::Parser;
use tokio::sync::watch;

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("arena-server: {error:#}");
            ExitCode::FAILURE
        }
    }
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

fn run(args: Args) -> anyhow::Result<()> {
    let private_key = load_or_create_key(&args)?;
    let max_players = args.max_players as usize;
    let udp = bind_udp(args.listen, max_players)?;
    let bound = udp.local_addr()?;
    let public_addr = args.public_addr.unwrap_or(bound);
    if public_addr.ip().is_unspecified() {
        anyhow::bail!(
            "--listen {bound} is a wildcard address: give --public-addr, the address clients reach"
        );
    }
    let seed = args
        .seed
        .unwrap_or_else(arena_shared::identity::random_client_id);
    let core = ServerCore::new(CoreConfig {
        match_id: args.match_id.clone(),
        netcode: netcode::ServerConfig {
            protocol_id: args.protocol_id,
            private_key,
            max_clients: max_players,
            addresses: vec![bound, public_addr],
        },
        world: WorldConfig {
            max_players: args.max_players,
            tick_hz: args.tick_hz,
            seed,
        },
        view_radius_m: args.view_radius,
        tokens: arena_server::core::TokenConfig {
            own_address: public_addr,
            peers: Vec::new(),
            timeout_s: args.client_timeout_s,
            expire_s: args.token_expire_s,
        },
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let admin_listener = tokio::net::TcpListener::bind(args.admin)
            .await
            .with_context(|| format!("cannot bind the admin API on {}", args.admin))?;
        let admin_addr = admin_listener.local_addr()?;
        let (status_tx, status_rx) = watch::channel(Status::default());
        let (shutdown_tx, shutdown_rx) = watch::channel(false);

        let tick_hz = args.tick_hz;
        let loop_shutdown = shutdown_rx.clone();
        let tick_loop = std::thread::Builder::new()
            .name("tick-loop".into())
            .spawn(move || -> anyhow::Result<()> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("cannot start the tick loop's runtime")?;
                runtime.block_on(run_loop(core, udp, tick_hz, status_tx, loop_shutdown))
            })
            .context("cannot start the tick loop thread")?;

        let state = Arc::new(AdminState {
            status: status_rx,
            tokens: TokenMinter {
                protocol_id: args.protocol_id,
                private_key,
                server_addresses: vec![public_addr],
                expire_s: args.token_expire_s,
                timeout_s: args.client_timeout_s,
            },
        });
        let mut admin_shutdown = shutdown_rx.clone();
        let admin = tokio::spawn(async move {
            axum::serve(admin_listener, admin::router(state))
                .with_graceful_shutdown(async move {
                    let _ = admin_shutdown.wait_for(|stop| *stop).await;
                })
                .await
        });
        tracing::info!(
            match_id = %args.match_id,
            udp = %bound,
            public = %public_addr,
            admin = %admin_addr,
            max_players,
            tick_hz,
            seed,
            "serving"
        );

        wait_for_signal().await;
        tracing::info!("shutdown requested");
        let _ = shutdown_tx.send(true);
        let joined = tokio::task::spawn_blocking(move || tick_loop.join())
            .await
            .context("tick loop join failed")?;
        let _ = admin.await;
        match joined {
            Ok(result) => result,
            Err(_) => anyhow::bail!("the tick loop panicked"),
        }
    })
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
