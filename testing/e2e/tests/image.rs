//! The whole stack from the container image (run by `deploy/image-check`, which builds the
//! image and names it in `VBASE_IMAGE`): migrations inside the image, the three services in
//! containers on the host network, a signed webhook through the gateway container, a gRPC call
//! with a token into a service container, a TLS request from inside the image trusting a test
//! CA, and a clean SIGTERM stop of every container.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use token_auth::signing::SigningKey;
use vbase_proto::identity::v1 as idp;
use vbase_proto::identity::v1::identity_service_client::IdentityServiceClient;
use vbase_stack::{Stack, StackConfig, Which, dev_user_claims, sample_user_created, sign_webhook};

fn image() -> String {
    std::env::var("VBASE_IMAGE").expect("VBASE_IMAGE names the image to check (deploy/image-check)")
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The uid of every process of the image whose command name starts with `comm` (the
/// containers' processes are visible from the host; their executable is the image's
/// `/usr/local/bin/...`, which tells them from the same binaries run by other builds on this
/// machine).
fn uids_of(comm: &str) -> Vec<u32> {
    let mut uids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let from_the_image = std::fs::read_link(entry.path().join("exe"))
            .is_ok_and(|exe| exe.starts_with("/usr/local/bin"));
        if !from_the_image {
            continue;
        }
        let status = entry.path().join("status");
        let Ok(text) = std::fs::read_to_string(&status) else {
            continue;
        };
        let name = text
            .lines()
            .find_map(|l| l.strip_prefix("Name:"))
            .unwrap_or("")
            .trim();
        if !name.starts_with(comm) {
            continue;
        }
        if let Some(uid) = text
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|u| u.parse().ok())
        {
            uids.push(uid);
        }
    }
    uids
}

/// A test CA and a certificate for 127.0.0.1 signed by it, in `dir`.
fn test_ca(dir: &Path) {
    let d = |f: &str| dir.join(f).to_string_lossy().into_owned();
    run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=vbase test CA",
            "-keyout",
            &d("ca.key"),
            "-out",
            &d("ca.pem"),
        ],
    );
    run(
        "openssl",
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            &d("server.key"),
            "-out",
            &d("server.csr"),
        ],
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            &d("server.csr"),
            "-CA",
            &d("ca.pem"),
            "-CAkey",
            &d("ca.key"),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &d("san.ext"),
            "-out",
            &d("server.pem"),
        ],
    );
}

/// Serves `dir` over HTTPS on `port` with the certificate from [`test_ca`].
fn https_server(dir: &Path, port: u16) -> Child {
    let script = "import http.server, ssl, sys, functools\n\
        port, root = int(sys.argv[1]), sys.argv[2]\n\
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=root)\n\
        server = http.server.HTTPServer(('127.0.0.1', port), handler)\n\
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n\
        ctx.load_cert_chain(root + '/server.pem', root + '/server.key')\n\
        server.socket = ctx.wrap_socket(server.socket, server_side=True)\n\
        server.serve_forever()\n";
    Command::new("python3")
        .args(["-c", script, &port.to_string(), &dir.to_string_lossy()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// An identity-service container whose Clerk keys come from `jwks_url`, trusting `ca` if given.
fn identity_container(
    image: &str,
    stack: &Stack,
    jwks_url: &str,
    ca: Option<&Path>,
    port: u16,
) -> Child {
    let metrics = ephemeral_postgres::unused_local_port().unwrap();
    let mut args: Vec<String> = ["run", "--rm", "--network", "host"]
        .map(String::from)
        .to_vec();
    if let Some(ca) = ca {
        args.extend([
            "-v".into(),
            format!("{}:/ca:ro", ca.display()),
            "-e".into(),
            "SSL_CERT_FILE=/ca/ca.pem".into(),
        ]);
    }
    let state = stack.state_dir().display().to_string();
    args.extend(["-v".into(), format!("{state}:{state}:ro")]);
    for (k, v) in [
        ("DATABASE_URL", stack.identity_db.clone()),
        ("CLERK_JWT_ISSUER_DOMAIN", stack.state.clerk_issuer.clone()),
        ("CLERK_JWKS_URL", jwks_url.to_owned()),
        ("SERVICE_JWKS_FILE", format!("{state}/service-jwks.json")),
        ("GRPC_ADDR", format!("127.0.0.1:{port}")),
        ("METRICS_ADDR", format!("127.0.0.1:{metrics}")),
        ("LOG_FORMAT", "pretty".into()),
    ] {
        args.extend(["-e".into(), format!("{k}={v}")]);
    }
    args.extend([
        "--entrypoint".into(),
        "/usr/local/bin/identity-service".into(),
        image.to_owned(),
    ]);
    Command::new("podman")
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn current_user(port: u16, token: &str) -> Result<idp::User, tonic::Status> {
    let channel = service_harness::connect(format!("127.0.0.1:{port}").parse().unwrap()).await;
    let mut c = IdentityServiceClient::new(channel);
    c.get_current_user(service_harness::bearer(
        idp::GetCurrentUserRequest {},
        token,
    ))
    .await
    .map(|r| r.into_inner().user.unwrap())
}

fn terminate(mut child: Child) -> std::process::ExitStatus {
    run("kill", &["-TERM", &child.id().to_string()]);
    child.wait().unwrap()
}

#[tokio::test]
#[ignore = "needs the image: run by deploy/image-check"]
async fn the_stack_runs_from_the_image() {
    let image = image();
    let state = std::env::temp_dir().join(format!("vbase-image-{}", std::process::id()));
    std::fs::create_dir_all(&state).unwrap();
    let mut cfg = StackConfig::dev(PathBuf::from("/nonexistent"), state.clone());
    let mount = format!("{0}:{0}", state.display());
    cfg.launcher = Some(
        [
            "podman",
            "run",
            "--rm",
            "--network",
            "host",
            "--env-host",
            "-v",
            &mount,
            "--entrypoint",
            "/usr/local/bin/{binary}",
            &image,
        ]
        .map(String::from)
        .to_vec(),
    );
    // Migrations run inside the image (`<binary> migrate`), then the three services.
    let mut stack = Stack::start(cfg)
        .await
        .expect("the stack starts from the image");
    for comm in ["identity-servic", "workspace-serv", "webhook-gateway"] {
        let uids = uids_of(comm);
        assert!(
            !uids.is_empty() && uids.iter().all(|&u| u == 65532),
            "{comm} runs as {uids:?}"
        );
    }

    // A signed webhook through the gateway container into the identity container.
    let body = sample_user_created("user_image", "Image", "image@example.com")
        .to_string()
        .into_bytes();
    let mut req = reqwest::Client::new()
        .post(format!("{}/clerk", stack.state.gateway_url))
        .body(body.clone());
    for (k, v) in sign_webhook(&stack.state.webhook_secret, "msg_image", &body).unwrap() {
        req = req.header(k, v);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);

    // A gRPC call with a user token into the service container.
    let clerk_key = SigningKey::from_pem(
        &std::fs::read_to_string(stack.state.clerk_signing_key_file.as_ref().unwrap()).unwrap(),
    )
    .unwrap();
    let token = clerk_key
        .sign(&dev_user_claims(
            &stack.state,
            "user_image",
            None,
            "org:member",
            "Image",
            "image@example.com",
        ))
        .unwrap();
    let identity_port: u16 = stack
        .state
        .identity_addr
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let user = current_user(identity_port, &token).await.unwrap();
    assert_eq!(user.name, "Image Example");

    // TLS from inside the image: Clerk's keys served over HTTPS with a certificate of a test CA.
    // Trusting that CA (SSL_CERT_FILE), the container loads the keys and accepts the token;
    // without it, it cannot, and refuses the token.
    let tls = state.join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    test_ca(&tls);
    let jwks = reqwest::get(format!(
        "{}/.well-known/jwks.json",
        stack.state.clerk_issuer
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    std::fs::write(tls.join("jwks.json"), jwks).unwrap();
    let https_port = ephemeral_postgres::unused_local_port().unwrap();
    let mut https = https_server(&tls, https_port);
    let jwks_url = format!("https://127.0.0.1:{https_port}/jwks.json");
    let trusting_port = ephemeral_postgres::unused_local_port().unwrap();
    let trusting = identity_container(&image, &stack, &jwks_url, Some(&tls), trusting_port);
    let mut last = None;
    for _ in 0..100 {
        last = Some(current_user(trusting_port, &token).await);
        if matches!(&last, Some(Ok(_))) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        matches!(last, Some(Ok(_))),
        "over TLS with the test CA trusted: {last:?}"
    );
    let distrusting_port = ephemeral_postgres::unused_local_port().unwrap();
    let distrusting = identity_container(&image, &stack, &jwks_url, None, distrusting_port);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let refused = current_user(distrusting_port, &token).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert!(terminate(trusting).success());
    assert!(terminate(distrusting).success());
    let _ = https.kill();
    let _ = https.wait();

    // SIGTERM drains and every container exits 0.
    for w in [Which::Gateway, Which::Workspace, Which::Identity] {
        let status = stack.terminate(w).await.unwrap();
        assert!(status.success(), "{} exited with {status}", w.binary());
    }
    stack.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&state);
}
