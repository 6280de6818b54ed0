//! The `hub-server` binary: serve a data folder, or administer its accounts.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use hub_server::{Hub, HubConfig};

/// ModelHub server: publish, search and pull dlv models.
#[derive(Debug, Parser)]
#[command(name = "hub-server", version, about)]
struct Cli {
    /// Data folder (created if missing).
    #[arg(long, value_name = "DIR", env = "HUB_DATA")]
    data: PathBuf,
    /// Address to listen on; port 0 picks a free port. The bound address is printed on stdout.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    listen: String,
    /// URL clients reach the hub at (for absolute links); default http://ADDR.
    #[arg(long, value_name = "URL")]
    public_url: Option<String>,
    /// Largest object accepted in one upload, in bytes.
    #[arg(long, value_name = "BYTES")]
    max_object_bytes: Option<u64>,
    /// Largest JSON request body, in bytes.
    #[arg(long, value_name = "BYTES")]
    max_json_bytes: Option<usize>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage accounts and tokens.
    #[command(subcommand)]
    User(UserCommand),
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create a user and print its token (shown once; only its hash is stored).
    Add { name: String },
    /// Issue another token for a user (also re-enables a revoked user).
    Token { name: String },
    /// Revoke every token of a user.
    Revoke { name: String },
    /// List users.
    List,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tower_http=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprint!("error: {e}");
            for c in e.chain().skip(1) {
                eprint!(": {c}");
            }
            eprintln!();
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Some(Command::User(cmd)) => user(&cli.data, cmd),
        None => serve(cli),
    }
}

fn user(data: &std::path::Path, cmd: UserCommand) -> Result<()> {
    let users = Hub::users_of(data)?;
    let mut out = std::io::stdout().lock();
    match cmd {
        UserCommand::Add { name } => {
            let token = users.add(&name)?;
            writeln!(out, "{token}")?;
            eprintln!("created user {name}; the token above is shown only once");
        }
        UserCommand::Token { name } => {
            let token = users.new_token(&name)?;
            writeln!(out, "{token}")?;
            eprintln!("new token for {name}; shown only once");
        }
        UserCommand::Revoke { name } => {
            let n = users.revoke(&name)?;
            writeln!(out, "revoked {n} token(s) of {name}")?;
        }
        UserCommand::List => {
            for u in users.list()? {
                let state = if u.revoked_ms.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                writeln!(out, "{}\t{state}\t{} token(s)", u.name, u.tokens.len())?;
            }
        }
    }
    Ok(())
}

fn serve(cli: Cli) -> Result<()> {
    let mut cfg = HubConfig::new(&cli.data);
    cfg.public_url = cli.public_url;
    if let Some(n) = cli.max_object_bytes {
        cfg.max_object_bytes = n;
    }
    if let Some(n) = cli.max_json_bytes {
        cfg.max_json_bytes = n;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        let hub = Hub::open(cfg)?;
        let listener = tokio::net::TcpListener::bind(&cli.listen)
            .await
            .with_context(|| format!("cannot listen on {}", cli.listen))?;
        let addr = listener.local_addr()?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "listening on http://{addr}")?;
            out.flush()?;
        }
        tracing::info!(%addr, "serving");
        hub_server::serve(listener, hub, shutdown_signal()).await?;
        tracing::info!("stopped");
        Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}
