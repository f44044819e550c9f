//! The local stack as a newcomer runs it: `vbase-stack up` (the binary), samples sent with
//! `vbase-stack send-sample`, the console page it serves driven in headless Chromium
//! (`testing/e2e/browser/console.mjs`: a workspace listed, a message live across two panes
//! within a second, a quarantined delivery in the operator pane), and `vbase-stack story` run
//! to its end. Needs node and the npm packages of `testing/e2e/browser` (installed when
//! missing, as the browser test does).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(|p| p.parent()).unwrap().join(name)
}

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// `vbase-stack ARGS` against the stack of `state_dir`; must succeed. Returns its stdout.
fn stack_cmd(state_dir: &Path, args: &[&str]) -> String {
    let out = Command::new(bin("vbase-stack"))
        .args(args)
        .env("STACK_STATE_DIR", state_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "vbase-stack {args:?}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The stack process; interrupted (Ctrl-C) when dropped.
struct Up(Child);

impl Drop for Up {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// Starts `vbase-stack up` and waits for its console (the state file names it once up).
fn up(state_dir: &Path) -> (Up, String) {
    let log = std::fs::File::create(state_dir.join("up.log")).unwrap();
    let child = Command::new(bin("vbase-stack"))
        .args(["up", "--random-ports"])
        .env("STACK_STATE_DIR", state_dir)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("vbase-stack is built (cargo build --bins)");
    let up = Up(child);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let state = std::fs::read_to_string(state_dir.join("state.json")).unwrap_or_default();
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&state)
            && let Some(url) = v["console_url"].as_str()
        {
            return (up, url.to_owned());
        }
        assert!(
            Instant::now() < deadline,
            "the stack did not come up: {}",
            std::fs::read_to_string(state_dir.join("up.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The status of a GET of `path` from the console with these `Host` and `Origin` headers.
fn status(port: u16, path: &str, host: &str, origin: Option<&str>) -> u16 {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let origin = origin
        .map(|o| format!("Origin: {o}\r\n"))
        .unwrap_or_default();
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\n{origin}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    answer.split(' ').nth(1).unwrap().parse().unwrap()
}

#[test]
fn the_console_shows_the_samples_live_and_the_story_runs_to_its_end() {
    let dir = browser_dir();
    if !dir.join("node_modules").exists() {
        let ok = Command::new("npm").arg("ci").current_dir(&dir).status();
        assert!(
            ok.is_ok_and(|s| s.success()),
            "npm ci in testing/e2e/browser failed"
        );
    }
    let state_dir = std::env::temp_dir().join(format!("vbase-console-{}", std::process::id()));
    std::fs::create_dir_all(&state_dir).unwrap();
    let (stack, console_url) = up(&state_dir);

    let (a, b, org, name) = (
        "user_console_a",
        "user_console_b",
        "org_console",
        "Console Demo",
    );
    for (user, first) in [(a, "Ann"), (b, "Bo")] {
        stack_cmd(
            &state_dir,
            &[
                "send-sample",
                "--event",
                "user.created",
                "--user",
                user,
                "--name",
                first,
            ],
        );
    }
    let created = stack_cmd(
        &state_dir,
        &[
            "send-sample",
            "--event",
            "organization.created",
            "--user",
            a,
            "--org",
            org,
            "--name",
            name,
        ],
    );
    assert!(
        created.contains(r#"200 {"outcome":"applied"}"#),
        "{created}"
    );
    for (user, role) in [(a, "org:admin"), (b, "org:member")] {
        let event = "organizationMembership.created";
        stack_cmd(
            &state_dir,
            &[
                "send-sample",
                "--event",
                event,
                "--user",
                user,
                "--org",
                org,
                "--role",
                role,
            ],
        );
    }
    let malformed = stack_cmd(
        &state_dir,
        &["send-sample", "--event", "user.updated", "--malformed"],
    );
    assert!(
        malformed.contains(r#"200 {"outcome":"quarantined"}"#),
        "{malformed}"
    );
    let quarantined = malformed
        .split("svix-id ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .unwrap()
        .to_owned();

    let out = Command::new("node")
        .arg(dir.join("console.mjs"))
        .env("CONSOLE_URL", &console_url)
        .env("USER_A", a)
        .env("USER_B", b)
        .env("ORG", org)
        .env("ORG_NAME", name)
        .env("QUARANTINED", &quarantined)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches("ok: ").count(), 6, "{stdout}");

    // The development helpers answer the console's own origin only.
    let port: u16 = console_url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let helper = "/dev/operator-token?service=workspace-service";
    let host = format!("localhost:{port}");
    assert_eq!(status(port, helper, &host, None), 200);
    assert_eq!(
        status(port, helper, &host, Some(&format!("http://{host}"))),
        200
    );
    assert_eq!(
        status(port, helper, &host, Some("http://evil.example")),
        403
    );
    assert_eq!(
        status(port, helper, &format!("evil.example:{port}"), None),
        421
    );

    let story = stack_cmd(&state_dir, &["story"]);
    println!("{story}");
    assert!(story.contains("The story ran to its end."), "{story}");
    drop(stack);
    let _ = std::fs::remove_dir_all(&state_dir);
}
