//! `vbase-stack`: the whole backend locally in one command, plus helpers to poke at it.
//!
//! - `vbase-stack [up]` starts PostgreSQL (or uses `DATABASE_URL`), migrates, runs the three
//!   services wired together and prints how to reach them; Ctrl-C stops everything.
//! - `vbase-stack mint-token --user user_123 [--org org_1 --role org:admin]` prints a development
//!   user token accepted by the running stack.
//! - `vbase-stack send-sample [--user user_123]` sends a signed sample `user.created` webhook.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use token_auth::signing::SigningKey;
use vbase_stack::{
    Stack, StackConfig, StackState, dev_user_claims, sample_user_created, sign_webhook,
};

#[derive(Parser)]
#[command(
    name = "vbase-stack",
    version,
    about = "Run the whole VBase backend locally"
)]
struct Cli {
    /// Where keys, state and logs go.
    #[arg(long, env = "STACK_STATE_DIR", default_value = ".stack", global = true)]
    state_dir: PathBuf,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start everything (the default).
    Up {
        /// Pick free ports instead of 50051/50052/8080/9091/9092.
        #[arg(long)]
        random_ports: bool,
    },
    /// Print a development user token for the running stack.
    MintToken {
        #[arg(long, default_value = "user_local")]
        user: String,
        /// Active organization (`org_...`).
        #[arg(long)]
        org: Option<String>,
        #[arg(long, default_value = "org:admin")]
        role: String,
        #[arg(long, default_value = "Local User")]
        name: String,
        #[arg(long, default_value = "local@example.com")]
        email: String,
    },
    /// Run `webhook-gateway reconcile` against the running stack (in development mode, against
    /// its stand-in of Clerk's Backend API, instance `ins_local`); options after `--` go to it,
    /// e.g. `-- --instance ins_local --dry-run`.
    Reconcile {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Send a signed sample `user.created` webhook to the running gateway.
    SendSample {
        #[arg(long, default_value = "user_local")]
        user: String,
    },
}

fn read_state(dir: &std::path::Path) -> Result<StackState> {
    let text = std::fs::read_to_string(dir.join("state.json")).with_context(|| {
        format!(
            "no running stack found in {} (start one with scripts/stack)",
            dir.display()
        )
    })?;
    Ok(serde_json::from_str(&text)?)
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Cmd::Up {
        random_ports: false,
    }) {
        Cmd::MintToken {
            user,
            org,
            role,
            name,
            email,
        } => {
            let state = read_state(&cli.state_dir)?;
            let key_file = state
                .clerk_signing_key_file
                .clone()
                .context("the stack uses a real Clerk issuer: get tokens from Clerk")?;
            let key = SigningKey::from_pem(&std::fs::read_to_string(key_file)?)?;
            println!(
                "{}",
                key.sign(&dev_user_claims(
                    &state,
                    &user,
                    org.as_deref(),
                    &role,
                    &name,
                    &email
                ))?
            );
            Ok(())
        }
        Cmd::SendSample { user } => {
            let state = read_state(&cli.state_dir)?;
            let body = sample_user_created(&user, "Sample", &format!("{user}@example.com"))
                .to_string()
                .into_bytes();
            let id = format!("msg_local_{}", rand::random::<u64>());
            let headers = sign_webhook(&state.webhook_secret, &id, &body)?;
            let mut req = reqwest::Client::new()
                .post(format!("{}/clerk", state.gateway_url))
                .body(body);
            for (k, v) in headers {
                req = req.header(k, v);
            }
            let resp = req.send().await?;
            println!(
                "{} {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            );
            Ok(())
        }
        Cmd::Reconcile { args } => {
            let state = read_state(&cli.state_dir)?;
            let gateway = std::env::current_exe()?
                .parent()
                .context("the binary's directory")?
                .join("webhook-gateway");
            let status = std::process::Command::new(gateway)
                .arg("reconcile")
                .args(args)
                .envs(state.reconcile_env.iter().map(|(k, v)| (k, v)))
                .env("LOG_FORMAT", "pretty")
                .status()?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Cmd::Up { random_ports } => up(cli.state_dir, random_ports).await,
    }
}

async fn up(state_dir: PathBuf, random_ports: bool) -> Result<()> {
    let bin_dir = std::env::current_exe()?
        .parent()
        .context("binary directory")?
        .to_path_buf();
    let mut config = StackConfig::dev(bin_dir, state_dir.clone());
    config.database_url = env("DATABASE_URL");
    config.clerk_issuer = env("CLERK_JWT_ISSUER_DOMAIN");
    config.webhook_secret = env("CLERK_WEBHOOK_SECRET");
    config.liveblocks_secret = env("LIVEBLOCKS_SECRET_KEY");
    config.echo_logs = true;
    if !random_ports {
        config.ports = Some([50051, 50052, 8080, 9091, 9092]);
    }
    tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_target(false)
        .compact()
        .init();
    println!(
        "starting the VBase stack (PostgreSQL, migrations, identity-service, workspace-service, webhook-gateway)..."
    );
    let stack = Stack::start(config).await?;
    let s = &stack.state;
    let exe = std::env::current_exe()?;
    let exe = exe.display();
    let dev = s.clerk_signing_key_file.is_some();
    println!();
    println!(
        "VBase stack is up{}",
        if dev {
            " (development mode: stand-in Clerk issuer and Liveblocks)"
        } else {
            ""
        }
    );
    println!("  webhook URL for Clerk : {}/clerk", s.gateway_url);
    println!(
        "  identity-service gRPC : {}    workspace-service gRPC: {}",
        s.identity_addr, s.workspace_addr
    );
    println!("  webhook secret        : {}", s.webhook_secret);
    println!("  Clerk issuer          : {}", s.clerk_issuer);
    println!("  (a) send a signed sample user.created:");
    println!("      {exe} send-sample --user user_local");
    if dev {
        println!("  (b) call GetCurrentUser with a development token:");
        println!(
            "      grpcurl -plaintext -H \"authorization: Bearer $({exe} mint-token --user user_local --org org_local)\" {} vbase.identity.v1.IdentityService/GetCurrentUser",
            s.identity_addr
        );
    }
    println!(
        "  Ctrl-C stops everything{}.",
        if dev { " and removes the database" } else { "" }
    );
    println!();
    tokio::signal::ctrl_c().await?;
    println!("stopping...");
    let stopped = stack.stop().await;
    let _ = std::fs::remove_file(state_dir.join("state.json"));
    stopped
}
