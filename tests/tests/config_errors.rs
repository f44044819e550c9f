//! A setting out of its range stops each service binary before it serves: one line naming the
//! setting, exit status 2, never a silently adjusted value. Runs the real binaries (built by
//! `scripts/test` before the tests).

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn binary(name: &str) -> PathBuf {
    // target/debug/deps/config_errors-xxxx -> target/debug/<name>
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join(name)
}

/// Runs `name` with the required settings plus `extra`; returns (exit code, stderr). A binary
/// still running after 10 s accepted the setting: it is killed and reported as `None`.
fn run(name: &str, extra: &[(&str, &str)]) -> (Option<i32>, String) {
    run_args(name, &[], extra)
}

/// Like [`run`], with command-line arguments.
fn run_args(name: &str, args: &[&str], extra: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut child = Command::new(binary(name))
        .args(args)
        .env_clear()
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:9/none")
        .env("CLERK_JWT_ISSUER_DOMAIN", "https://clerk.example.com")
        .env("SERVICE_JWKS_FILE", "/nonexistent/jwks.json")
        .env(
            "CLERK_WEBHOOK_SECRET",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        )
        .env("SERVICE_JWT_SIGNING_KEY_FILE", "/nonexistent/key.pem")
        .env("HTTP_ADDR", "127.0.0.1:0")
        .env("GRPC_ADDR", "127.0.0.1:0")
        .env("METRICS_ADDR", "127.0.0.1:0")
        .envs(extra.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{name} did not run (build the binaries first): {e}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (code, stderr)
}

#[test]
fn out_of_range_settings_exit_2_with_one_line_naming_them() {
    let cases: &[(&str, (&str, &str))] = &[
        ("workspace-service", ("LIVEBLOCKS_LEASE_SECS", "5")),
        ("workspace-service", ("LIVEBLOCKS_CONCURRENCY", "0")),
        ("workspace-service", ("LIVEBLOCKS_POLL_MS", "1")),
        (
            "workspace-service",
            ("PROCESSED_EVENT_RETENTION_HOURS", "24"),
        ),
        ("identity-service", ("GROUP_COMMIT_SLOTS", "0")),
        ("identity-service", ("LOOKUP_SLOTS", "17")),
        ("identity-service", ("DB_POOL_SIZE", "0")),
        ("identity-service", ("GRPC_MAX_CONCURRENT_STREAMS", "0")),
        ("workspace-service", ("GRPC_REQUEST_TIMEOUT_SECS", "0")),
        ("workspace-service", ("GRPC_KEEPALIVE_SECS", "1")),
        ("identity-service", ("GRPC_MAX_CONNECTIONS", "0")),
        ("workspace-service", ("USER_WRITES_PER_MINUTE", "0")),
        ("webhook-gateway", ("DOWNSTREAM_TIMEOUT_SECS", "20")),
        ("webhook-gateway", ("REQUEST_READ_TIMEOUT_SECS", "0")),
        ("webhook-gateway", ("MAX_CONNECTIONS", "0")),
        ("workspace-service", ("LIVEBLOCKS_MAX_ATTEMPTS", "0")),
        ("workspace-service", ("PURGE_LANES", "9")),
        // 2 purges x 8 lanes would take every one of the 16 pooled connections; x 5, more
        // than the half that purges may hold.
        ("workspace-service", ("PURGE_LANES", "8")),
        ("workspace-service", ("PURGE_LANES", "5")),
        // More watches than connections (4096 by default), or one user holding them all.
        ("workspace-service", ("WATCH_MAX_STREAMS", "5000")),
        ("workspace-service", ("WATCH_MAX_PER_USER", "4096")),
        ("workspace-service", ("WATCH_BUFFER_BYTES", "1000")),
        ("workspace-service", ("WATCH_MEMORY_BYTES", "1000")),
        ("workspace-service", ("RESPONSE_MAX_BYTES", "100")),
        ("workspace-service", ("USER_READS_PER_MINUTE", "0")),
        ("workspace-service", ("USER_WATCH_OPENS_PER_MINUTE", "0")),
        ("workspace-service", ("USER_CALLS_IN_FLIGHT", "0")),
        ("workspace-service", ("LIVEBLOCKS_KEY_CHECK_SECS", "1")),
        ("identity-service", ("QUARANTINE_RETENTION_DAYS", "0")),
        ("workspace-service", ("QUARANTINE_RETENTION_DAYS", "400")),
        ("identity-service", ("OPERATOR_SUBJECTS", "webhook-gateway")),
        ("workspace-service", ("SERVICE_CALLERS", "reporting")),
        (
            "identity-service",
            ("CORS_ALLOWED_ORIGINS", "https://*.example.com"),
        ),
    ];
    for (binary, (var, value)) in cases {
        let (code, stderr) = run(binary, &[(var, value)]);
        assert_eq!(code, Some(2), "{binary} {var}={value}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{binary} {var}={value}: {stderr}");
        assert!(
            lines[0].contains("configuration error") && lines[0].contains(var),
            "{binary} {var}={value}: {stderr}"
        );
    }
}

/// The gateway's operator commands: a bad option or setting is one line and status 2.
#[test]
fn the_gateways_operator_commands_refuse_bad_settings_with_status_2() {
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (
            &[
                "mint-token",
                "--subject",
                "operator",
                "--audience",
                "billing-service",
            ],
            &[],
            "--audience",
        ),
        (
            &[
                "mint-token",
                "--subject",
                "operator",
                "--audience",
                "identity-service",
                "--ttl",
                "2h",
            ],
            &[],
            "ttl",
        ),
        (
            &[
                "mint-token",
                "--subject",
                "operator",
                "--audience",
                "identity-service",
            ],
            &[],
            "SERVICE_JWT_SIGNING_KEY_FILE",
        ),
        (&["replay-quarantined"], &[], "--id"),
        (
            &["replay-quarantined", "--all"],
            &[("DOWNSTREAM_TIMEOUT_SECS", "30")],
            "DOWNSTREAM_TIMEOUT_SECS",
        ),
    ];
    for (args, env, names) in cases {
        let (code, stderr) = run_args("webhook-gateway", args, env);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: {stderr}");
        assert!(lines[0].contains(names), "{args:?}: {stderr}");
    }
}
