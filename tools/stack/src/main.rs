//! `vbase-stack`: the whole backend locally in one command, plus helpers to poke at it.
//!
//! - `vbase-stack [up]` starts PostgreSQL (or uses `DATABASE_URL`), migrates, runs the three
//!   services wired together and prints how to reach them; Ctrl-C stops everything.
//! - `vbase-stack mint-token --user user_123 [--org org_1 --role org:admin]` prints a development
//!   user token accepted by the running stack.
//! - `vbase-stack send-sample --event TYPE [--user ..] [--org ..] [--role ..] [--name ..]
//!   [--malformed]` sends a signed sample Clerk event and prints how to see its effect.
//! - `vbase-stack story` runs the scripted story of the product against the running stack.

mod admin_rpc;
mod console;
mod grpc;
mod sample;
mod story;
mod tokens;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;
use vbase_stack::clerk_events::{EVENT_TYPES, Sample};
use vbase_stack::{Stack, StackConfig, StackState};

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
    /// Print a development user token for the running stack (or, with `--operator` or
    /// `--service`, a service token).
    MintToken {
        #[arg(long, default_value = "user_local")]
        user: String,
        /// An operator's token for this service's admin service (`identity-service` or
        /// `workspace-service`).
        #[arg(long, conflicts_with = "service")]
        operator: Option<String>,
        /// The stack's own service token for this service (granted every service method).
        #[arg(long)]
        service: Option<String>,
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
    /// Send a signed sample Clerk event to the running gateway; prints the gateway's answer
    /// and the grpcurl command that shows its effect.
    SendSample {
        /// One of the event types the gateway handles.
        #[arg(long, default_value = "user.created", value_parser = clap::builder::PossibleValuesParser::new(EVENT_TYPES))]
        event: String,
        /// The user (`user.*`, the member of `organizationMembership.*`, the creator of
        /// `organization.*`).
        #[arg(long, default_value = "user_local")]
        user: String,
        /// The organization (`organization.*`, `organizationMembership.*`).
        #[arg(long, default_value = "org_local")]
        org: String,
        /// The member's role (`organizationMembership.*`).
        #[arg(long, default_value = "org:member")]
        role: String,
        /// The user's first name or the organization's name.
        #[arg(long, default_value = "Sample")]
        name: String,
        /// Sign an event the gateway cannot apply (its resource has no id): it lands in the
        /// owning service's quarantine.
        #[arg(long)]
        malformed: bool,
    },
    /// Run the scripted story (sign-up, an organization, a member, a chat, the member's
    /// removal, the organization's deletion and purge) against the running stack.
    Story,
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
            operator,
            service,
            org,
            role,
            name,
            email,
        } => {
            let state = read_state(&cli.state_dir)?;
            let token = match (operator, service) {
                (Some(svc), _) => tokens::operator(&state, &svc)?,
                (None, Some(svc)) => tokens::stack_caller(&state, &svc)?,
                (None, None) => tokens::user(&state, &user, org.as_deref(), &role, &name, &email)?,
            };
            println!("{token}");
            Ok(())
        }
        Cmd::SendSample {
            event,
            user,
            org,
            role,
            name,
            malformed,
        } => {
            let state = read_state(&cli.state_dir)?;
            let s = Sample {
                user,
                org,
                role,
                name,
            };
            sample::send(&state, &event, &s, malformed).await
        }
        Cmd::Story => story::run(&read_state(&cli.state_dir)?).await,
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
    // The console's port is taken first: the services' CORS must name its origins.
    let console_listener =
        tokio::net::TcpListener::bind(("127.0.0.1", if random_ports { 0 } else { 8090 }))
            .await
            .context("binding the console's port 8090")?;
    let console_port = console_listener.local_addr()?.port();
    let cors = vec![(
        "CORS_ALLOWED_ORIGINS".to_owned(),
        console::origins(console_port),
    )];
    config.extra_env.insert("identity-service", cors.clone());
    let mut workspace_env = cors;
    // An open watch of a removed member ends within 2 s, so the console and the story show it.
    workspace_env.push(("WATCH_ACCESS_RECHECK_SECS".to_owned(), "2".to_owned()));
    config.extra_env.insert("workspace-service", workspace_env);
    tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_target(false)
        .compact()
        .init();
    println!(
        "starting the VBase stack (PostgreSQL, migrations, identity-service, workspace-service, webhook-gateway)..."
    );
    let mut stack = Stack::start(config).await?;
    let console_url = format!("http://localhost:{console_port}/");
    stack.state.console_url = Some(console_url.clone());
    let console = Arc::new(console::Console {
        state: stack.state.clone(),
        port: console_port,
        identity_db: stack.identity_db.clone(),
        workspace_db: stack.workspace_db.clone(),
        gateway: stack.binary_path(vbase_stack::Which::Gateway),
    });
    tokio::spawn(console::serve(console_listener, console));
    // Written last: its console_url tells the helper subcommands (and tests) the stack is up.
    std::fs::write(
        state_dir.join("state.json"),
        serde_json::to_string_pretty(&stack.state)?,
    )?;
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
    println!("  console               : {console_url}");
    println!("  (a) send a signed sample of any Clerk event, or run the whole story:");
    println!("      {exe} send-sample --event organization.created --org org_demo --name Demo");
    println!("      {exe} story");
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
