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
    run_without(name, args, extra, &[])
}

/// Like [`run_args`], without the required settings named in `unset`.
fn run_without(
    name: &str,
    args: &[&str],
    extra: &[(&str, &str)],
    unset: &[&str],
) -> (Option<i32>, String) {
    let mut command = Command::new(binary(name));
    command
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
        .env("METRICS_ADDR", "127.0.0.1:0");
    for name in unset {
        command.env_remove(name);
    }
    let mut child = command
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
        // Without DATABASE_DIRECT_URL: the caches' LISTEN would go through the pooler.
        ("identity-service", ("DB_POOL_MODE", "transaction")),
        ("workspace-service", ("DB_POOL_MODE", "transaction")),
        ("identity-service", ("GRPC_MAX_CONCURRENT_STREAMS", "0")),
        ("workspace-service", ("GRPC_REQUEST_TIMEOUT_SECS", "0")),
        ("workspace-service", ("GRPC_KEEPALIVE_SECS", "1")),
        ("identity-service", ("GRPC_MAX_CONNECTIONS", "0")),
        ("workspace-service", ("USER_WRITES_PER_MINUTE", "0")),
        ("identity-service", ("GRPC_HANDSHAKE_TIMEOUT_SECS", "0")),
        ("workspace-service", ("GRPC_MAX_CONNECTION_AGE_SECS", "5")),
        // Less than GRPC_REQUEST_TIMEOUT_SECS (30): a call in flight could be cut.
        (
            "identity-service",
            ("GRPC_MAX_CONNECTION_AGE_GRACE_SECS", "10"),
        ),
        ("webhook-gateway", ("DOWNSTREAM_TIMEOUT_SECS", "20")),
        ("webhook-gateway", ("REQUEST_READ_TIMEOUT_SECS", "0")),
        ("webhook-gateway", ("MAX_CONNECTIONS", "0")),
        // Less than one largest body (1 MiB): such a delivery could never be read.
        ("webhook-gateway", ("MAX_BODY_BYTES_IN_FLIGHT", "1000")),
        // 0 would read as "off"; past 24 h too little is left of Svix's ~27 h 35 min.
        ("webhook-gateway", ("QUARANTINE_FAILED_AFTER_SECS", "0")),
        ("webhook-gateway", ("QUARANTINE_FAILED_AFTER_SECS", "90000")),
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
        ("workspace-service", ("USER_ROOM_TOKENS_PER_MINUTE", "0")),
        ("workspace-service", ("USER_CALLS_IN_FLIGHT", "0")),
        ("identity-service", ("USER_READS_PER_MINUTE", "0")),
        ("identity-service", ("USER_CALLS_IN_FLIGHT", "1001")),
        ("workspace-service", ("LIVEBLOCKS_KEY_CHECK_SECS", "1")),
        // A public key, or a secret key copied with a newline: Liveblocks' SDK refuses both.
        ("workspace-service", ("LIVEBLOCKS_SECRET_KEY", "pk_live_x")),
        (
            "workspace-service",
            ("LIVEBLOCKS_SECRET_KEY", "sk_live_x\n"),
        ),
        // No admin role at all, or a key Clerk could not have (it would match no token).
        ("workspace-service", ("ORG_ADMIN_ROLES", ",")),
        ("workspace-service", ("ORG_ADMIN_ROLES", "org:Owner")),
        (
            "workspace-service",
            ("ORG_EDITOR_ROLES", "org:editor,editor!"),
        ),
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

/// The operators' commands (`vbase-token`, the gateway's `replay-quarantined`): a bad option or
/// setting is one line and status 2.
#[test]
fn the_operators_commands_refuse_bad_settings_with_status_2() {
    type Case<'a> = (&'a str, &'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (
            "vbase-token",
            &[
                "mint",
                "--key-file",
                "/nonexistent/op.pem",
                "--audience",
                "billing-service",
            ],
            &[],
            "--audience",
        ),
        (
            "vbase-token",
            &[
                "mint",
                "--key-file",
                "/nonexistent/op.pem",
                "--audience",
                "identity-service",
                "--ttl",
                "2h",
            ],
            &[],
            "ttl",
        ),
        (
            "vbase-token",
            &["mint", "--audience", "identity-service"],
            &[],
            "--key-file",
        ),
        (
            "vbase-token",
            &["mint", "--audience", "identity-service"],
            &[("OPERATOR_KEY_FILE", "/nonexistent/op.pem")],
            "OPERATOR_KEY_FILE",
        ),
        (
            "vbase-token",
            &["keygen", "--subject", "not a subject", "--out-dir", "/tmp"],
            &[],
            "subject",
        ),
        ("webhook-gateway", &["replay-quarantined"], &[], "--id"),
        (
            "webhook-gateway",
            &["replay-quarantined", "--all"],
            &[("DOWNSTREAM_TIMEOUT_SECS", "30")],
            "DOWNSTREAM_TIMEOUT_SECS",
        ),
    ];
    for (binary, args, env, names) in cases {
        let (code, stderr) = run_args(binary, args, env);
        assert_eq!(code, Some(2), "{binary} {args:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{binary} {args:?}: {stderr}");
        assert!(lines[0].contains(names), "{binary} {args:?}: {stderr}");
    }
}

/// A secret setting `X` may come from the file `X_FILE` names, read and trimmed; both at once,
/// an unreadable or an empty file stop the binary with one line naming the variable (status 2).
#[test]
fn secret_settings_come_from_files_or_stop_with_status_2() {
    let dir = std::env::temp_dir().join(format!("vbase-secret-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let url = file("url", "postgres://nobody@127.0.0.1:9/none\n");
    let key = file("key", "  sk_test_from_a_file\n");
    let empty = file("empty", "\n");
    let missing = dir.join("missing").display().to_string();

    // Read and trimmed: the key passes its check (a space or newline in it would not), and
    // the run stops later, at Clerk (status 1), not at the settings (2).
    let (code, stderr) = run_without(
        "webhook-gateway",
        &["reconcile"],
        &[
            ("CLERK_SECRET_KEY_FILE", key.as_str()),
            ("CLERK_API_URL", "http://127.0.0.1:9"),
            ("CLERK_API_MAX_RETRIES", "0"),
        ],
        &[],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(!stderr.contains("configuration error"), "{stderr}");
    assert!(!stderr.contains("sk_test_from_a_file"), "{stderr}");
    // `migrate` reads DATABASE_URL from its file and tries that database (status 1).
    let (code, stderr) = run_without(
        "identity-service",
        &["migrate"],
        &[("DATABASE_URL_FILE", url.as_str())],
        &["DATABASE_URL"],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("connecting to the database"), "{stderr}");

    type Case<'a> = (
        &'a str,
        &'a [&'a str],
        Vec<(&'a str, &'a str)>,
        &'a [&'a str],
        &'a str,
    );
    let cases: Vec<Case> = vec![
        // Both ways at once.
        (
            "identity-service",
            &[],
            vec![("DATABASE_URL_FILE", url.as_str())],
            &[],
            "both",
        ),
        (
            "identity-service",
            &["serve", "--database-url", "postgres://x@h/db"],
            vec![("DATABASE_URL_FILE", url.as_str())],
            &["DATABASE_URL"],
            "both",
        ),
        // Unreadable, empty.
        (
            "workspace-service",
            &[],
            vec![("DATABASE_URL_FILE", missing.as_str())],
            &["DATABASE_URL"],
            "cannot be read",
        ),
        (
            "webhook-gateway",
            &[],
            vec![("CLERK_WEBHOOK_SECRET_FILE", missing.as_str())],
            &["CLERK_WEBHOOK_SECRET"],
            "cannot be read",
        ),
        (
            "workspace-service",
            &[],
            vec![("LIVEBLOCKS_SECRET_KEY_FILE", empty.as_str())],
            &[],
            "empty",
        ),
        (
            "webhook-gateway",
            &["reconcile"],
            vec![("CLERK_SECRET_KEY_FILE", empty.as_str())],
            &[],
            "empty",
        ),
        (
            "identity-service",
            &["migrate"],
            vec![("DATABASE_MIGRATION_URL_FILE", missing.as_str())],
            &[],
            "cannot be read",
        ),
    ];
    for (binary, args, env, unset, why) in cases {
        let var = env[0].0;
        let (code, stderr) = run_without(binary, args, &env, unset);
        assert_eq!(code, Some(2), "{binary} {var}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{binary} {var}: {stderr}");
        assert!(
            lines[0].contains("configuration error")
                && lines[0].contains(var)
                && lines[0].contains(why),
            "{binary} {var}: {stderr}"
        );
        assert!(!stderr.contains("nobody@"), "the secret shows: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
