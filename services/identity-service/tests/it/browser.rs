//! Browsers call the service with gRPC-Web over HTTP/1.1 on its gRPC port, with CORS for the
//! allowed origins only.

use crate::support::*;
use prost::Message;
use service_harness::BROWSER_ORIGIN;
use vbase_proto::identity::v1 as pb;

const PATH: &str = "/vbase.identity.v1.IdentityService/StoreUser";

/// The frames of a gRPC-Web answer: (the message bytes, the trailers as text).
fn frames(body: &[u8]) -> (Vec<u8>, String) {
    let (mut data, mut trailers) = (Vec::new(), String::new());
    let mut rest = body;
    while rest.len() >= 5 {
        let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
        let payload = &rest[5..5 + len];
        if rest[0] & 0x80 != 0 {
            trailers.push_str(&String::from_utf8_lossy(payload));
        } else {
            data.extend_from_slice(payload);
        }
        rest = &rest[5 + len..];
    }
    (data, trailers)
}

#[tokio::test]
async fn a_page_of_an_allowed_origin_calls_with_grpc_web_and_others_get_no_grant() {
    let env = start().await;
    let base = format!("http://{}", env.server.addr);
    let http = reqwest::Client::new();

    // The preflight of an allowed origin is granted, with the headers gRPC-Web needs.
    let preflight = |origin: &'static str| {
        http.request(reqwest::Method::OPTIONS, format!("{base}{PATH}"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type,x-grpc-web",
            )
            .send()
    };
    let granted = preflight(BROWSER_ORIGIN).await.unwrap();
    assert!(granted.status().is_success(), "{granted:?}");
    let h = granted.headers();
    assert_eq!(h["access-control-allow-origin"], BROWSER_ORIGIN);
    let allowed = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_owned();
    for needed in ["authorization", "content-type", "x-grpc-web"] {
        assert!(allowed.contains(needed), "{allowed}");
    }
    let other = preflight("https://evil.example").await.unwrap();
    assert!(
        other.headers().get("access-control-allow-origin").is_none(),
        "no grant for another origin: {:?}",
        other.headers()
    );

    // The call itself, over HTTP/1.1, with the user's token.
    let token = env
        .issuers
        .clerk
        .user_token("user_web", "Web User", "web@example.com", None);
    let call = |token: Option<String>, origin: &'static str| {
        let mut r = http
            .post(format!("{base}{PATH}"))
            .header("origin", origin)
            .header("content-type", "application/grpc-web+proto")
            .header("x-grpc-web", "1")
            .body(service_harness::grpc_frame(&pb::StoreUserRequest {}));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let answer = call(Some(token.clone()), BROWSER_ORIGIN).await.unwrap();
    assert_eq!(answer.version(), reqwest::Version::HTTP_11);
    assert_eq!(answer.status(), 200);
    let h = answer.headers().clone();
    assert_eq!(h["access-control-allow-origin"], BROWSER_ORIGIN);
    let exposed = h["access-control-expose-headers"].to_str().unwrap();
    for name in ["grpc-status", "retry-after", "grpc-retry-pushback-ms"] {
        assert!(exposed.contains(name), "{name}: {h:?}");
    }
    assert!(
        h["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/grpc-web")
    );
    let (data, trailers) = frames(&answer.bytes().await.unwrap());
    assert!(trailers.contains("grpc-status:0"), "{trailers}");
    let stored = pb::StoreUserResponse::decode(data.as_slice()).unwrap();
    assert!(stored.created);
    assert_eq!(stored.user.unwrap().clerk_id, "user_web");

    // Without a token: UNAUTHENTICATED, readable by the page.
    let refused = call(None, BROWSER_ORIGIN).await.unwrap();
    let status = refused
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_owned());
    let (_, trailers) = frames(&refused.bytes().await.unwrap());
    assert!(
        status.as_deref() == Some("16") || trailers.contains("grpc-status:16"),
        "{status:?} {trailers}"
    );

    // Another origin's page: the service answers, but grants nothing, so the browser keeps
    // the answer from the page.
    let foreign = call(Some(token), "https://evil.example").await.unwrap();
    assert!(
        foreign
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}
