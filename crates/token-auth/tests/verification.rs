//! Token verification against real keys served by an in-process JWKS server.

use base64::Engine;
use serde_json::{Value, json};
use stand_ins::JwksServer;
use std::time::Duration;
use token_auth::signing::{SigningKey, now_secs};
use token_auth::{
    Access, AuthError, Authenticator, ClerkSettings, KeySource, KeyStoreOptions, MethodPolicy,
    Principal, ServiceSettings,
};
use tonic::Code;

const B64URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

struct Fixture {
    clerk_jwks: JwksServer,
    clerk_key: SigningKey,
    service_key: SigningKey,
    service_jwks: JwksServer,
    auth: Authenticator,
}

fn options() -> KeyStoreOptions {
    KeyStoreOptions {
        refresh_interval: Duration::from_secs(300),
        min_refetch_interval: Duration::from_millis(300),
        fetch_timeout: Duration::from_secs(2),
        ..KeyStoreOptions::default()
    }
}

async fn fixture(authorized_parties: &[&str]) -> Fixture {
    fixture_with(authorized_parties, "").await
}

/// A fixture whose internal callers are `service_callers` (as `SERVICE_CALLERS` reads).
async fn fixture_with(authorized_parties: &[&str], service_callers: &str) -> Fixture {
    let clerk_key = SigningKey::generate_rsa().unwrap();
    // One internal caller's key, bound to the subjects these tests sign with it.
    let service_key = SigningKey::generate_ed25519().unwrap().with_subjects(&[
        "webhook-gateway",
        "reporting",
        "ops",
        "unlisted",
    ]);
    let clerk_jwks = JwksServer::start(SigningKey::jwks(&[&clerk_key]))
        .await
        .unwrap();
    let service_jwks = JwksServer::start(SigningKey::jwks(&[&service_key]))
        .await
        .unwrap();
    let auth = Authenticator::new(
        Some(ClerkSettings {
            issuer: clerk_jwks.issuer(),
            jwks: KeySource::Url(clerk_jwks.jwks_url()),
            audience: "convex".into(),
            authorized_parties: authorized_parties.iter().map(|s| s.to_string()).collect(),
            require_azp: true,
            leeway_secs: 5,
            max_lifetime_secs: 3600,
            accept_pending_sessions: false,
        }),
        Some(ServiceSettings {
            issuer: "vbase-internal".into(),
            jwks: KeySource::Url(service_jwks.jwks_url()),
            audience: "identity-service".into(),
            max_lifetime_secs: 3600,
        }),
        options(),
    )
    .with_service_callers(token_auth::ServiceCallers::parse(service_callers).unwrap());
    for store in auth.key_stores() {
        assert!(
            store.wait_ready(Duration::from_secs(5)).await,
            "keys did not load"
        );
    }
    Fixture {
        clerk_jwks,
        clerk_key,
        service_key,
        service_jwks,
        auth,
    }
}

impl Fixture {
    fn user_claims(&self) -> Value {
        let now = now_secs();
        json!({
            "iss": self.clerk_jwks.issuer(), "sub": "user_2abc", "aud": "convex",
            "iat": now, "nbf": now - 5, "exp": now + 60,
            "name": "Ada Lovelace", "email": "ada@example.com",
            "org_id": "org_1", "org_role": "org:admin", "org_slug": "acme",
        })
    }

    fn user_token_with(&self, patch: Value) -> String {
        let mut claims = self.user_claims();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                claims.as_object_mut().unwrap().remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        self.clerk_key.sign(&claims).unwrap()
    }

    fn service_token(&self, aud: &str) -> String {
        self.service_token_of("webhook-gateway", aud)
    }

    fn service_token_of(&self, sub: &str, aud: &str) -> String {
        let now = now_secs();
        self.service_key
            .sign(&json!({"iss":"vbase-internal","sub":sub,"aud":aud,"iat":now,"nbf":now,"exp":now+120}))
            .unwrap()
    }
}

impl Fixture {
    /// The fixture's Clerk settings with `authorized_parties`.
    fn clerk_settings(&self, authorized_parties: &[&str]) -> ClerkSettings {
        ClerkSettings {
            issuer: self.clerk_jwks.issuer(),
            jwks: KeySource::Url(self.clerk_jwks.jwks_url()),
            audience: "convex".into(),
            authorized_parties: authorized_parties.iter().map(|s| s.to_string()).collect(),
            require_azp: true,
            leeway_secs: 5,
            max_lifetime_secs: 3600,
            accept_pending_sessions: false,
        }
    }
}

/// A Clerk-only verifier with `settings`, its keys loaded.
async fn clerk_only(settings: ClerkSettings) -> Authenticator {
    let auth = Authenticator::new(Some(settings), None, options());
    assert!(
        auth.key_stores()[0]
            .wait_ready(Duration::from_secs(5))
            .await
    );
    auth
}

fn raw_token(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        B64URL.encode(header.to_string()),
        B64URL.encode(claims.to_string()),
        B64URL.encode(signature)
    )
}

#[tokio::test]
async fn valid_v1_template_token_maps_to_user_with_org() {
    let f = fixture(&[]).await;
    let p = f.auth.verify(&f.user_token_with(json!({}))).unwrap();
    let Principal::User(u) = p else {
        panic!("not a user")
    };
    assert_eq!(u.user_id, "user_2abc");
    assert_eq!(u.email.as_deref(), Some("ada@example.com"));
    let org = u.org.unwrap();
    assert_eq!(
        (org.id.as_str(), org.role.as_str(), org.slug.as_deref()),
        ("org_1", "org:admin", Some("acme"))
    );
}

#[tokio::test]
async fn valid_v2_session_token_reads_org_from_o_claim() {
    let f = fixture(&[]).await;
    let token = f.user_token_with(json!({
        "org_id": null, "org_role": null, "org_slug": null, "v": 2, "sid": "sess_1",
        "o": {"id": "org_7", "slg": "team", "rol": "member", "per": "read"}
    }));
    let u = f.auth.verify(&token).unwrap().as_user().cloned().unwrap();
    let org = u.org.unwrap();
    assert_eq!(
        (org.id.as_str(), org.role.as_str()),
        ("org_7", "org:member")
    );
}

/// A session with sign-in tasks left (`sts: "pending"`, for example an organization to choose)
/// is signed out, as in Clerk's SDKs; an active one, or a template token without `sts`, passes.
/// The refusal is not remembered as a pass: the same token stays refused on the next call.
#[tokio::test]
async fn a_pending_session_is_refused_unless_accepted() {
    let f = fixture(&[]).await;
    let pending = f.user_token_with(json!({"v": 2, "sid": "sess_p", "sts": "pending"}));
    for _ in 0..2 {
        let err = f.auth.verify(&pending).unwrap_err();
        assert_eq!(err, AuthError::PendingSession);
        assert!(err.to_string().contains("pending"), "{err}");
    }
    let active = f.user_token_with(json!({"v": 2, "sid": "sess_a", "sts": "active"}));
    assert!(f.auth.verify(&active).is_ok());
    // A status Clerk signs no token for is refused, never taken as active.
    let ended = f.user_token_with(json!({"v": 2, "sid": "sess_e", "sts": "ended"}));
    assert_eq!(f.auth.verify(&ended), Err(AuthError::InactiveSession));
    // A JWT template's own `sts` (no `sid`, no `v: 2`) is not a session status.
    let template = f.user_token_with(json!({"sts": "pending"}));
    assert!(f.auth.verify(&template).is_ok());
    assert!(f.auth.verify(&f.user_token_with(json!({}))).is_ok());

    let accepting = clerk_only(ClerkSettings {
        accept_pending_sessions: true,
        ..f.clerk_settings(&[])
    })
    .await;
    let u = accepting
        .verify(&pending)
        .unwrap()
        .as_user()
        .cloned()
        .unwrap();
    assert_eq!(u.user_id, "user_2abc");
}

#[tokio::test]
async fn alg_none_is_rejected() {
    let f = fixture(&[]).await;
    let t = raw_token(
        &json!({"alg":"none","typ":"JWT","kid":f.clerk_key.kid()}),
        &f.user_claims(),
        b"",
    );
    assert!(f.auth.verify(&t).is_err());
    let t = format!("{}.", t.trim_end_matches('.'));
    assert!(f.auth.verify(&t).is_err());
}

#[tokio::test]
async fn hs256_signed_with_the_rsa_public_key_is_rejected() {
    let f = fixture(&[]).await;
    let jwk = f.clerk_key.public_jwk();
    let header = json!({"alg":"HS256","typ":"JWT","kid":f.clerk_key.kid()});
    let signing_input = format!(
        "{}.{}",
        B64URL.encode(header.to_string()),
        B64URL.encode(f.user_claims().to_string())
    );
    // Attackers use the public key material as the HMAC secret: try both usual encodings.
    for secret in [
        jwk.to_string().into_bytes(),
        jwk["n"].as_str().unwrap().as_bytes().to_vec(),
    ] {
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &secret);
        let sig = aws_lc_rs::hmac::sign(&key, signing_input.as_bytes());
        let token = format!("{signing_input}.{}", B64URL.encode(sig.as_ref()));
        assert_eq!(f.auth.verify(&token), Err(AuthError::AlgorithmNotAllowed));
    }
}

#[tokio::test]
async fn missing_and_unknown_kid_are_rejected() {
    let f = fixture(&[]).await;
    let other = SigningKey::generate_rsa().unwrap();
    assert_eq!(
        f.auth.verify(&other.sign(&f.user_claims()).unwrap()),
        Err(AuthError::UnknownKey)
    );
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = None;
    let key =
        jsonwebtoken::EncodingKey::from_rsa_pem(f.clerk_key.private_pem().as_bytes()).unwrap();
    let no_kid = jsonwebtoken::encode(&header, &f.user_claims(), &key).unwrap();
    assert_eq!(f.auth.verify(&no_kid), Err(AuthError::MissingKeyId));
}

#[tokio::test]
async fn a_different_key_under_a_known_kid_fails_the_signature() {
    let f = fixture(&[]).await;
    let impostor = SigningKey::generate_rsa().unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(f.clerk_key.kid().to_owned());
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(impostor.private_pem().as_bytes()).unwrap();
    let token = jsonwebtoken::encode(&header, &f.user_claims(), &key).unwrap();
    assert_eq!(f.auth.verify(&token), Err(AuthError::BadSignature));
}

#[tokio::test]
async fn tampered_payload_is_rejected() {
    let f = fixture(&[]).await;
    let token = f.user_token_with(json!({}));
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: Value = serde_json::from_slice(&B64URL.decode(parts[1]).unwrap()).unwrap();
    claims["sub"] = json!("user_attacker");
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        B64URL.encode(claims.to_string()),
        parts[2]
    );
    assert_eq!(f.auth.verify(&forged), Err(AuthError::BadSignature));
}

#[tokio::test]
async fn exp_and_nbf_are_checked_with_at_most_five_seconds_leeway() {
    let f = fixture(&[]).await;
    let now = now_secs();
    // Inside the leeway: accepted.
    assert!(
        f.auth
            .verify(&f.user_token_with(json!({"exp": now - 2})))
            .is_ok()
    );
    assert!(
        f.auth
            .verify(&f.user_token_with(json!({"nbf": now + 2})))
            .is_ok()
    );
    // Beyond it: refused.
    assert_eq!(
        f.auth.verify(&f.user_token_with(json!({"exp": now - 9}))),
        Err(AuthError::Expired)
    );
    assert_eq!(
        f.auth
            .verify(&f.user_token_with(json!({"exp": now - 3600}))),
        Err(AuthError::Expired)
    );
    assert_eq!(
        f.auth.verify(&f.user_token_with(json!({"nbf": now + 9}))),
        Err(AuthError::NotYetValid)
    );
    // exp is required.
    assert!(
        f.auth
            .verify(&f.user_token_with(json!({"exp": null})))
            .is_err()
    );
}

#[tokio::test]
async fn issuer_must_match_exactly() {
    let f = fixture(&[]).await;
    let iss = f.clerk_jwks.issuer();
    for bad in [
        format!("{iss}/"),
        "https://evil.clerk.accounts.dev".to_owned(),
        String::new(),
    ] {
        let t = f.user_token_with(json!({ "iss": bad }));
        assert_eq!(
            f.auth.verify(&t),
            Err(AuthError::UntrustedIssuer),
            "iss {bad:?}"
        );
    }
    assert!(
        f.auth
            .verify(&f.user_token_with(json!({"iss": null})))
            .is_err()
    );
}

#[tokio::test]
async fn audience_must_contain_the_configured_value() {
    let f = fixture(&[]).await;
    assert_eq!(
        f.auth.verify(&f.user_token_with(json!({"aud": "other"}))),
        Err(AuthError::WrongAudience)
    );
    assert!(
        f.auth
            .verify(&f.user_token_with(json!({"aud": ["other", "convex"]})))
            .is_ok()
    );
    assert!(
        f.auth
            .verify(&f.user_token_with(json!({"aud": null})))
            .is_err()
    );
}

#[tokio::test]
async fn azp_must_be_an_authorized_party_when_configured() {
    let f = fixture(&["https://app.example.com"]).await;
    assert!(
        f.auth
            .verify(&f.user_token_with(json!({"azp": "https://app.example.com"})))
            .is_ok()
    );
    assert_eq!(
        f.auth
            .verify(&f.user_token_with(json!({"azp": "https://evil.example.com"}))),
        Err(AuthError::UnauthorizedParty)
    );
    // With an allow-list, a token that names no party is refused too.
    assert_eq!(
        f.auth.verify(&f.user_token_with(json!({"azp": null}))),
        Err(AuthError::MissingParty)
    );
    // Without one, `azp` is not required.
    let open = fixture(&[]).await;
    assert!(
        open.auth
            .verify(&open.user_token_with(json!({"azp": null})))
            .is_ok()
    );
    // Native apps (`CLERK_REQUIRE_AZP=false`): a token without `azp` passes, as in Clerk's
    // SDKs; one naming another party is still refused.
    let native = clerk_only(ClerkSettings {
        require_azp: false,
        ..f.clerk_settings(&["https://app.example.com"])
    })
    .await;
    assert!(
        native
            .verify(&f.user_token_with(json!({"azp": null})))
            .is_ok()
    );
    assert_eq!(
        native.verify(&f.user_token_with(json!({"azp": "https://evil.example.com"}))),
        Err(AuthError::UnauthorizedParty)
    );
}

#[tokio::test]
async fn tokens_without_iat_or_living_too_long_are_refused() {
    let f = fixture(&[]).await;
    let now = now_secs();
    assert_eq!(
        f.auth.verify(&f.user_token_with(json!({"iat": null}))),
        Err(AuthError::MissingIssuedAt)
    );
    // A JWT template valid for two hours, against the one-hour maximum.
    assert_eq!(
        f.auth
            .verify(&f.user_token_with(json!({"iat": now, "exp": now + 7200}))),
        Err(AuthError::LifetimeTooLong)
    );
    // Exactly the maximum is accepted.
    assert!(
        f.auth
            .verify(&f.user_token_with(json!({"iat": now, "exp": now + 3600})))
            .is_ok()
    );
    assert_eq!(
        f.auth
            .verify(&f.user_token_with(json!({"iat": now + 60, "nbf": now - 5}))),
        Err(AuthError::NotYetValid)
    );
    let service = f
        .service_key
        .sign(
            &json!({"iss": "vbase-internal", "sub": "webhook-gateway", "aud": "identity-service",
                      "nbf": now, "exp": now + 60}),
        )
        .unwrap();
    assert_eq!(f.auth.verify(&service), Err(AuthError::MissingIssuedAt));
    // A service token valid for two hours, against its own one-hour maximum.
    let service = f
        .service_key
        .sign(
            &json!({"iss": "vbase-internal", "sub": "webhook-gateway", "aud": "identity-service",
                      "iat": now, "nbf": now, "exp": now + 7200}),
        )
        .unwrap();
    assert_eq!(f.auth.verify(&service), Err(AuthError::LifetimeTooLong));
}

#[test]
fn jwks_urls_must_be_https_except_to_this_machine() {
    for (url, ok) in [
        ("https://clerk.example.com/.well-known/jwks.json", true),
        ("http://127.0.0.1:8080/jwks.json", true),
        ("http://localhost/jwks.json", true),
        ("http://[::1]:9/jwks.json", true),
        ("http://clerk.example.com/.well-known/jwks.json", false),
        ("http://127.0.0.2/jwks.json", false),
        ("ftp://clerk.example.com/jwks.json", false),
        ("not a url", false),
    ] {
        assert_eq!(token_auth::acceptable_jwks_url(url), ok, "{url}");
    }
    let args = token_auth::AuthArgs {
        clerk_jwt_issuer_domain: "https://clerk.example.com".into(),
        clerk_jwks_url: Some("http://clerk.example.com/.well-known/jwks.json".into()),
        clerk_jwt_audience: "convex".into(),
        clerk_authorized_parties: vec![],
        service_jwt_issuer: "vbase-internal".into(),
        service_jwks_file: Some("/dev/null".into()),
        service_jwks_url: None,
        jwks_refresh_secs: 300,
        token_max_lifetime_secs: 3600,
        clerk_require_azp: true,
        clerk_accept_pending_sessions: false,
        service_callers: String::new(),
        operator_subjects: "operator".into(),
    };
    let err = args.build("identity-service").unwrap_err();
    assert!(err.contains("CLERK_JWKS_URL"), "{err}");
}

#[tokio::test]
async fn a_jwks_over_64_kib_is_refused() {
    let key = SigningKey::generate_rsa().unwrap();
    let mut jwks = SigningKey::jwks(&[&key]);
    jwks["padding"] = json!("x".repeat(1024 * 1024));
    let server = JwksServer::start(jwks).await.unwrap();
    let store = token_auth::KeyStore::spawn(
        KeySource::Url(server.jwks_url()),
        vec![jsonwebtoken::Algorithm::RS256],
        options(),
    );
    assert!(
        !store.wait_ready(Duration::from_secs(2)).await,
        "a 1 MiB JWKS was accepted"
    );
    assert!(server.hits() >= 1, "it was fetched");
    // The same keys in a document of normal size load.
    server.set_jwks(SigningKey::jwks(&[&key]));
    assert!(store.wait_ready(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn service_tokens_must_name_this_service() {
    let f = fixture(&[]).await;
    let Principal::Service(service) = f.auth.verify(&f.service_token("identity-service")).unwrap()
    else {
        panic!("a service token names a service");
    };
    assert_eq!(service.name, "webhook-gateway");
    // Its `exp`, which ends the streams it opens.
    assert!(
        (service.expires_at - now_secs() - 120).abs() <= 2,
        "{service:?}"
    );
    assert_eq!(
        f.auth.verify(&f.service_token("workspace-service")),
        Err(AuthError::WrongAudience)
    );
    // A service key cannot sign user tokens: the Clerk domain only trusts RS256 Clerk keys.
    let forged = f.service_key.sign(&f.user_claims()).unwrap();
    assert!(f.auth.verify(&forged).is_err());
}

/// Each service key signs only the subjects its JWK is bound to (`subjects`): the gateway's key
/// is refused for `operator` and for any other subject, the operators' key for the gateway's;
/// a key bound to nothing, or with a malformed binding, signs nothing. Through the policy, a
/// forged operator token is UNAUTHENTICATED.
#[tokio::test]
async fn a_service_key_signs_only_the_subjects_it_is_bound_to() {
    let gateway = SigningKey::generate_ed25519()
        .unwrap()
        .with_subjects(&["webhook-gateway"]);
    let operator = SigningKey::generate_ed25519()
        .unwrap()
        .with_subjects(&["operator"]);
    let unbound = SigningKey::generate_ed25519().unwrap();
    // A binding that is not a list binds the key to nothing.
    let malformed_key = SigningKey::generate_ed25519().unwrap();
    let mut malformed = malformed_key.public_jwk();
    malformed["subjects"] = json!("webhook-gateway");
    let mut keys = SigningKey::jwks(&[&gateway, &operator, &unbound]);
    keys["keys"].as_array_mut().unwrap().push(malformed);
    let jwks = JwksServer::start(keys).await.unwrap();
    let auth = Authenticator::new(
        None,
        Some(ServiceSettings {
            issuer: "vbase-internal".into(),
            jwks: KeySource::Url(jwks.jwks_url()),
            audience: "identity-service".into(),
            max_lifetime_secs: 3600,
        }),
        options(),
    )
    .with_service_callers(
        token_auth::ServiceCallers::parse("reporting=*")
            .unwrap()
            .with_operators("operator")
            .unwrap(),
    );
    assert!(
        auth.key_stores()[0]
            .wait_ready(Duration::from_secs(5))
            .await
    );
    let token = |key: &SigningKey, sub: &str| {
        let now = now_secs();
        key.sign(&json!({"iss":"vbase-internal","sub":sub,"aud":"identity-service","iat":now,"nbf":now,"exp":now+120}))
            .unwrap()
    };
    let subject = |key: &SigningKey, sub: &str| match auth.verify(&token(key, sub)) {
        Ok(Principal::Service(s)) => Ok(s.name),
        Ok(other) => panic!("not a service: {other:?}"),
        Err(e) => Err(e),
    };
    assert_eq!(
        subject(&gateway, "webhook-gateway"),
        Ok("webhook-gateway".into())
    );
    assert_eq!(subject(&operator, "operator"), Ok("operator".into()));
    for sub in [
        "operator",
        "reporting",
        "internal-test",
        "webhook-gateway2",
        "Webhook-Gateway",
    ] {
        assert_eq!(
            subject(&gateway, sub),
            Err(AuthError::SubjectNotAllowed),
            "the gateway's key signed {sub}"
        );
    }
    assert_eq!(
        subject(&operator, "webhook-gateway"),
        Err(AuthError::SubjectNotAllowed)
    );
    for sub in ["webhook-gateway", "operator"] {
        assert_eq!(subject(&unbound, sub), Err(AuthError::SubjectNotAllowed));
        assert_eq!(
            subject(&malformed_key, sub),
            Err(AuthError::SubjectNotAllowed)
        );
    }
    // The admin services' policy: a forged operator token never reaches them.
    let policy = MethodPolicy::new("vbase.ops.v1.DeliveryAdminService")
        .allow("GetSyncStatus", Access::Operator);
    let call = |key: &SigningKey, sub: &str| {
        policy
            .authorize(
                &auth,
                "/vbase.ops.v1.DeliveryAdminService/GetSyncStatus",
                Some(&format!("Bearer {}", token(key, sub))),
            )
            .map(|_| ())
            .map_err(|s| s.code())
    };
    assert_eq!(call(&operator, "operator"), Ok(()));
    assert_eq!(call(&gateway, "operator"), Err(Code::Unauthenticated));
    assert_eq!(call(&gateway, "reporting"), Err(Code::Unauthenticated));
}

#[tokio::test]
async fn method_policy_separates_user_and_service_callers() {
    let f = fixture(&[]).await;
    let policy = MethodPolicy::new("vbase.identity.v1.IdentityService")
        .allow("StoreUser", Access::User)
        .allow("UpsertUser", Access::Service)
        .allow("GetUser", Access::UserOrService);
    let user = format!("Bearer {}", f.user_token_with(json!({})));
    let service = format!("Bearer {}", f.service_token("identity-service"));
    let path = |m: &str| format!("/vbase.identity.v1.IdentityService/{m}");
    let code = |m: &str, h: Option<&str>| {
        policy
            .authorize(&f.auth, &path(m), h)
            .err()
            .map(|s| s.code())
    };

    assert_eq!(code("StoreUser", Some(&user)), None);
    assert_eq!(
        code("StoreUser", Some(&service)),
        Some(Code::PermissionDenied)
    );
    assert_eq!(
        code("UpsertUser", Some(&user)),
        Some(Code::PermissionDenied)
    );
    assert_eq!(code("UpsertUser", Some(&service)), None);
    assert_eq!(code("GetUser", Some(&user)), None);
    assert_eq!(
        code("GetUser", Some(&service)),
        Some(Code::PermissionDenied),
        "the gateway's subject calls the sync commands only"
    );
    assert_eq!(code("GetUser", None), Some(Code::Unauthenticated));
    assert_eq!(
        code("GetUser", Some("Basic abc")),
        Some(Code::Unauthenticated)
    );
    assert_eq!(
        code("GetUser", Some("Bearer not.a.jwt")),
        Some(Code::Unauthenticated)
    );
    assert_eq!(
        code("Undeclared", Some(&service)),
        Some(Code::PermissionDenied)
    );
    assert!(
        policy
            .authorize(&f.auth, "/grpc.health.v1.Health/Check", None)
            .unwrap()
            .is_none()
    );
}

async fn eventually(mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn key_rotation_is_picked_up_and_retired_keys_stop_working() {
    let f = fixture(&[]).await;
    let old_token = f.user_token_with(json!({}));
    let next = SigningKey::generate_rsa().unwrap();
    f.clerk_jwks
        .set_jwks(SigningKey::jwks(&[&f.clerk_key, &next]));
    let new_token = next.sign(&f.user_claims()).unwrap();
    // The first sight of the new kid triggers a re-fetch; it then verifies.
    assert!(
        eventually(|| f.auth.verify(&new_token).is_ok()).await,
        "new key never accepted"
    );
    assert!(f.auth.verify(&old_token).is_ok());
    // The old key is retired from the JWKS: after a refresh its tokens fail.
    f.clerk_jwks.set_jwks(SigningKey::jwks(&[&next]));
    let probe = SigningKey::generate_rsa()
        .unwrap()
        .sign(&f.user_claims())
        .unwrap();
    assert!(
        eventually(|| {
            let _ = f.auth.verify(&probe); // an unknown kid asks for a refresh
            f.auth.verify(&old_token).is_err()
        })
        .await,
        "retired key still accepted"
    );
    assert!(f.auth.verify(&new_token).is_ok());
}

/// A token remembered as verified is accepted again only while its key is the very key loaded
/// for its `kid`, not merely some key under that `kid`: a JWKS that puts another key under the
/// same `kid` ends the old key's tokens at the next refresh, and a service key whose JWK now
/// binds fewer subjects ends the tokens of the subjects it lost.
#[tokio::test]
async fn a_key_replaced_under_the_same_kid_ends_the_tokens_it_verified() {
    let f = fixture(&[]).await;
    let old_token = f.user_token_with(json!({}));
    assert!(f.auth.verify(&old_token).is_ok());
    let successor = SigningKey::generate_rsa()
        .unwrap()
        .with_kid(f.clerk_key.kid());
    f.clerk_jwks.set_jwks(SigningKey::jwks(&[&successor]));
    let probe = SigningKey::generate_rsa()
        .unwrap()
        .sign(&f.user_claims())
        .unwrap();
    assert!(
        eventually(|| {
            let _ = f.auth.verify(&probe); // an unknown kid asks for a refresh
            f.auth.verify(&old_token) == Err(AuthError::BadSignature)
        })
        .await,
        "a token of the replaced key still accepted"
    );
    assert!(
        f.auth
            .verify(&successor.sign(&f.user_claims()).unwrap())
            .is_ok()
    );

    let reporting = f.service_token_of("reporting", "identity-service");
    let gateway = f.service_token("identity-service");
    assert!(f.auth.verify(&reporting).is_ok() && f.auth.verify(&gateway).is_ok());
    let narrowed = SigningKey::from_pem(&f.service_key.private_pem())
        .unwrap()
        .with_subjects(&["webhook-gateway"]);
    assert_eq!(narrowed.kid(), f.service_key.kid());
    f.service_jwks.set_jwks(SigningKey::jwks(&[&narrowed]));
    let now = now_secs();
    let probe = SigningKey::generate_ed25519()
        .unwrap()
        .sign(&json!({"iss":"vbase-internal","sub":"ops","aud":"identity-service","iat":now,"nbf":now,"exp":now+120}))
        .unwrap();
    assert!(
        eventually(|| {
            let _ = f.auth.verify(&probe);
            f.auth.verify(&reporting) == Err(AuthError::SubjectNotAllowed)
        })
        .await,
        "a subject the key no longer signs still accepted"
    );
    assert!(f.auth.verify(&gateway).is_ok());
}

#[tokio::test]
async fn jwks_down_keeps_known_keys_and_fails_unknown_ones_closed() {
    let f = fixture(&[]).await;
    f.clerk_jwks.set_up(false);
    let unknown = SigningKey::generate_rsa()
        .unwrap()
        .sign(&f.user_claims())
        .unwrap();
    assert_eq!(f.auth.verify(&unknown), Err(AuthError::UnknownKey));
    let hits = f.clerk_jwks.hits();
    assert!(
        eventually(|| f.clerk_jwks.hits() > hits).await,
        "no re-fetch attempted"
    );
    assert!(f.auth.verify(&f.user_token_with(json!({}))).is_ok());
    assert_eq!(f.auth.verify(&unknown), Err(AuthError::UnknownKey));
}

#[tokio::test]
async fn a_flood_of_unknown_kids_causes_a_bounded_number_of_fetches() {
    let f = fixture(&[]).await;
    let before = f.clerk_jwks.hits();
    // A fixed number of unknown kids (not as many as fit in a second: on a busy machine that
    // number falls with the CPU the signing gets), spread over at least 400 ms.
    let key =
        jsonwebtoken::EncodingKey::from_rsa_pem(f.clerk_key.private_pem().as_bytes()).unwrap();
    let n = 200;
    let started = tokio::time::Instant::now();
    for i in 0..n {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some(format!("kid-{i}"));
        let t = jsonwebtoken::encode(&header, &f.user_claims(), &key).unwrap();
        assert_eq!(f.auth.verify(&t), Err(AuthError::UnknownKey));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let fetches = f.clerk_jwks.hits() - before;
    // min_refetch_interval is 300 ms: at most one fetch per interval (+1 for the edge).
    let bound = started.elapsed().as_millis() as u64 / 300 + 2;
    assert!(
        fetches <= bound,
        "{fetches} fetches for {n} unknown kids (bound {bound})"
    );
    assert!(fetches >= 1, "an unknown kid must trigger a re-fetch");
}

#[tokio::test]
async fn oversized_and_garbage_tokens_are_malformed() {
    let f = fixture(&[]).await;
    assert_eq!(f.auth.verify(&"a".repeat(9000)), Err(AuthError::Malformed));
    assert_eq!(f.auth.verify("x.y"), Err(AuthError::Malformed));
    assert_eq!(f.auth.verify(""), Err(AuthError::Malformed));
}

#[tokio::test]
async fn a_token_verified_before_still_expires_on_time() {
    let f = fixture(&[]).await;
    // Expired 4 s ago: inside the 5 s leeway for about one more second.
    let exp = now_secs() - 4;
    let token = f.user_token_with(json!({ "exp": exp }));
    assert!(f.auth.verify(&token).is_ok());
    assert!(f.auth.verify(&token).is_ok(), "a repeat is accepted too");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    let refused = loop {
        match f.auth.verify(&token) {
            Ok(_) => assert!(now_secs() <= exp + 5, "accepted after exp + leeway"),
            Err(e) => break e,
        }
        assert!(tokio::time::Instant::now() < deadline, "never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(refused, AuthError::Expired);
    assert!(now_secs() > exp + 5 - 1);
}

/// Log lines written while `f` runs, as JSON (the services' production format).
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn each_call_runs_in_a_span_naming_its_method_and_caller() {
    use tower::{Layer, Service, ServiceExt};
    let f = fixture_with(&[], "reporting=GetUser").await;
    let policy = MethodPolicy::new("vbase.identity.v1.IdentityService")
        .allow("GetUser", Access::UserOrService);
    let tokens = [
        f.service_token_of("reporting", "identity-service"),
        f.user_token_with(json!({})),
        // Clerk's impersonation: support staff act as the user.
        f.user_token_with(json!({"act": {"iss": "https://dashboard.clerk.com", "sid": "sess_s", "sub": "user_support"}})),
        // A template's own `act` value (not an object) is no impersonation, and no refusal.
        f.user_token_with(json!({"act": "editor"})),
    ];
    let layer = token_auth::AuthLayer::new(std::sync::Arc::new(f.auth), policy);
    let handler = tower::service_fn(|_req: http::Request<()>| async {
        tracing::info!("handled");
        Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
    });
    let mut svc = layer.layer(handler);
    // The process-wide subscriber: a scoped one misses events once another test's thread
    // (the rotated-key test goes through the same layer) has decided the callsites' interest.
    static LOGS: std::sync::OnceLock<std::sync::Arc<std::sync::Mutex<Vec<u8>>>> =
        std::sync::OnceLock::new();
    let logs = std::sync::Arc::clone(LOGS.get_or_init(|| {
        let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&logs);
        tracing::subscriber::set_global_default(
            tracing_subscriber::fmt()
                .json()
                .with_writer(move || Captured(std::sync::Arc::clone(&sink)))
                .finish(),
        )
        .expect("no other subscriber in this test binary");
        logs
    }));
    for token in tokens {
        let req = http::Request::builder()
            .uri("/vbase.identity.v1.IdentityService/GetUser")
            .header("authorization", format!("Bearer {token}"))
            .body(())
            .unwrap();
        svc.ready().await.unwrap().call(req).await.unwrap();
    }
    let text = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("handled")).collect();
    assert_eq!(lines.len(), 4, "{text}");
    for (line, caller) in lines.iter().zip([
        "service:reporting",
        "user:user_2abc",
        "user:user_2abc",
        "user:user_2abc",
    ]) {
        assert!(
            line.contains(r#""method":"/vbase.identity.v1.IdentityService/GetUser""#),
            "{line}"
        );
        assert!(line.contains(&format!(r#""caller":"{caller}""#)), "{line}");
        assert!(!line.contains("Bearer"), "a token reached the log: {line}");
    }
    assert!(!lines[1].contains("actor"), "{}", lines[1]);
    assert!(!lines[3].contains("actor"), "{}", lines[3]);
    assert!(
        lines[2].contains(r#""actor":"user:user_support""#),
        "an impersonated call names who acts: {}",
        lines[2]
    );
}

/// After Clerk rotates its signing key, the first request with the new `kid` waits for the
/// re-fetch and is accepted; through the layer too. Unknown kids in a flood each wait at most
/// the bound and cost a bounded number of fetches.
#[tokio::test]
async fn a_rotated_key_is_accepted_on_first_sight() {
    use tower::{Layer, Service, ServiceExt};
    let f = fixture(&[]).await;
    // Past the throttle of the fixture's first fetch.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let next = SigningKey::generate_rsa().unwrap();
    f.clerk_jwks
        .set_jwks(SigningKey::jwks(&[&f.clerk_key, &next]));
    let rotated = format!("Bearer {}", next.sign(&f.user_claims()).unwrap());
    assert_eq!(
        f.auth.verify_header(Some(&rotated)),
        Err(AuthError::UnknownKey)
    );
    let principal = f
        .auth
        .verify_header_waiting(Some(&rotated), Duration::from_secs(3))
        .await
        .expect("the rotated key is fetched and the token accepted");
    assert_eq!(principal.as_user().unwrap().user_id, "user_2abc");

    // Through the auth layer, on the first call with a freshly rotated key.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let third = SigningKey::generate_rsa().unwrap();
    f.clerk_jwks
        .set_jwks(SigningKey::jwks(&[&f.clerk_key, &next, &third]));
    let policy = MethodPolicy::new("vbase.identity.v1.IdentityService")
        .allow("GetUser", Access::UserOrService);
    let fetches_before = f.auth.key_stores()[0].fetch_count();
    let auth = std::sync::Arc::new(f.auth);
    let handler = tower::service_fn(|req: http::Request<()>| async move {
        assert!(req.extensions().get::<Principal>().is_some());
        Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
    });
    let mut svc = token_auth::AuthLayer::new(std::sync::Arc::clone(&auth), policy).layer(handler);
    let call = |token: String| {
        http::Request::builder()
            .uri("/vbase.identity.v1.IdentityService/GetUser")
            .header("authorization", format!("Bearer {token}"))
            .body(())
            .unwrap()
    };
    let claims = json!({"iss": f.clerk_jwks.issuer(), "sub": "user_2abc", "aud": "convex",
                        "iat": now_secs(), "nbf": now_secs() - 5, "exp": now_secs() + 60});
    let resp = svc
        .ready()
        .await
        .unwrap()
        .call(call(third.sign(&claims).unwrap()))
        .await
        .unwrap();
    assert!(
        resp.headers().get("grpc-status").is_none(),
        "refused: {:?}",
        resp.headers()
    );

    // A flood of kids that exist nowhere: each waits at most the bound, and the store
    // fetches a bounded number of times.
    let forged: Vec<String> = (0..20)
        .map(|_| {
            format!(
                "Bearer {}",
                SigningKey::generate_rsa().unwrap().sign(&claims).unwrap()
            )
        })
        .collect();
    let started = std::time::Instant::now();
    let mut waits = tokio::task::JoinSet::new();
    for token in forged {
        let auth = std::sync::Arc::clone(&auth);
        waits.spawn(async move {
            auth.verify_header_waiting(Some(&token), Duration::from_millis(500))
                .await
        });
    }
    while let Some(r) = waits.join_next().await {
        assert_eq!(r.unwrap(), Err(AuthError::UnknownKey));
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let fetched = auth.key_stores()[0].fetch_count() - fetches_before;
    assert!(fetched <= 4, "{fetched} fetches");
}

/// A Clerk-only verifier on `jwks` with a re-fetch throttle of `min_refetch`.
async fn clerk_verifier(
    jwks: &JwksServer,
    min_refetch: Duration,
    max_waiting: usize,
) -> Authenticator {
    let auth = Authenticator::new(
        Some(ClerkSettings {
            issuer: jwks.issuer(),
            jwks: KeySource::Url(jwks.jwks_url()),
            audience: "convex".into(),
            authorized_parties: vec![],
            require_azp: true,
            leeway_secs: 5,
            max_lifetime_secs: 3600,
            accept_pending_sessions: false,
        }),
        None,
        KeyStoreOptions {
            refresh_interval: Duration::from_secs(300),
            min_refetch_interval: min_refetch,
            fetch_timeout: Duration::from_secs(4),
            max_waiting_calls: max_waiting,
        },
    );
    assert!(
        auth.key_stores()[0]
            .wait_ready(Duration::from_secs(5))
            .await
    );
    auth
}

fn clerk_claims(issuer: &str, session: usize) -> Value {
    let now = now_secs();
    json!({"iss": issuer, "sub": "user_2abc", "sid": format!("sess_{session}"), "aud": "convex",
           "iat": now, "nbf": now - 5, "exp": now + 60})
}

/// Clerk rotates its key right after our last fetch: the first calls naming the new `kid` wait
/// for the next fetch the throttle allows (4 s here, longer than any fixed short wait) and are
/// accepted, through the auth layer; calls arriving together share that one fetch. A forged
/// kid is refused once that fetch is done; a caller whose deadline ends before the next fetch
/// may start is refused at once.
#[tokio::test]
async fn an_unknown_kid_waits_for_the_next_allowed_fetch_which_calls_share() {
    use tower::{Layer, Service, ServiceExt};
    // Every key first: an RSA key can take a second to make on a busy machine, which must not
    // come out of the throttle's 4 s measured below.
    let old = SigningKey::generate_rsa().unwrap();
    let rotated = SigningKey::generate_rsa().unwrap();
    let forged = SigningKey::generate_rsa().unwrap();
    let jwks = JwksServer::start(SigningKey::jwks(&[&old])).await.unwrap();
    let auth = std::sync::Arc::new(clerk_verifier(&jwks, Duration::from_secs(4), 1024).await);
    let store = auth.key_stores()[0].clone();
    jwks.set_jwks(SigningKey::jwks(&[&old, &rotated]));
    let fetches = store.fetch_count();
    let hits = jwks.hits();

    let policy = MethodPolicy::new("vbase.identity.v1.IdentityService")
        .allow("GetUser", Access::UserOrService);
    let handler = tower::service_fn(|req: http::Request<()>| async move {
        let who = match req.extensions().get::<Principal>() {
            Some(Principal::User(u)) => u.user_id.clone(),
            other => panic!("no user principal: {other:?}"),
        };
        Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::new(who)))
    });
    let svc = token_auth::AuthLayer::new(std::sync::Arc::clone(&auth), policy).layer(handler);
    let call = |token: String, deadline: Option<&str>| {
        let mut svc = svc.clone();
        let mut req = http::Request::builder()
            .uri("/vbase.identity.v1.IdentityService/GetUser")
            .header("authorization", format!("Bearer {token}"));
        if let Some(d) = deadline {
            req = req.header("grpc-timeout", d);
        }
        let req = req.body(()).unwrap();
        async move {
            let started = tokio::time::Instant::now();
            let resp = svc.ready().await.unwrap().call(req).await.unwrap();
            let refused = resp
                .headers()
                .get("grpc-message")
                .map(|m| m.to_str().unwrap().to_owned());
            (refused, started.elapsed())
        }
    };

    // Ten first-sight calls with the rotated key, at once and with distinct tokens.
    let started = tokio::time::Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..10 {
        calls.spawn(call(
            rotated.sign(&clerk_claims(&jwks.issuer(), i)).unwrap(),
            Some("20S"),
        ));
    }
    while let Some(done) = calls.join_next().await {
        assert_eq!(
            done.unwrap().0,
            None,
            "a rotated key's first call is refused"
        );
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(3500),
        "accepted after {waited:?}: the throttle allowed no fetch before 4 s"
    );
    assert_eq!(
        store.fetch_count() - fetches,
        1,
        "the calls share one fetch"
    );
    assert_eq!(jwks.hits() - hits, 1);

    // A caller with 2 s left, while the next fetch may start in about 4 s: refused at once.
    let (refused, took) = call(
        forged.sign(&clerk_claims(&jwks.issuer(), 99)).unwrap(),
        Some("2000m"),
    )
    .await;
    let refused = refused.expect("refused");
    assert!(refused.contains("unknown"), "{refused}");
    assert!(took < Duration::from_millis(1000), "held {took:?}");

    // Without a deadline, a forged kid waits for that next fetch only, and is refused.
    let before = store.fetch_count();
    let (refused, took) = call(
        forged.sign(&clerk_claims(&jwks.issuer(), 100)).unwrap(),
        None,
    )
    .await;
    let refused = refused.expect("refused");
    assert!(refused.contains("unknown"), "{refused}");
    assert!(
        store.fetch_count() > before,
        "refused without the fetch it waited for"
    );
    assert!(
        took < Duration::from_secs(8),
        "held {took:?}, past the longest wait"
    );
}

/// At most `max_waiting_calls` calls wait for a fetch at once; the next unknown kid is refused
/// at once instead of holding its request.
#[tokio::test]
async fn waiting_calls_are_bounded() {
    // The keys first: making them must not come out of the throttle's 3 s measured below.
    let key = SigningKey::generate_rsa().unwrap();
    let forged_keys = [
        SigningKey::generate_rsa().unwrap(),
        SigningKey::generate_rsa().unwrap(),
    ];
    let jwks = JwksServer::start(SigningKey::jwks(&[&key])).await.unwrap();
    let auth = std::sync::Arc::new(clerk_verifier(&jwks, Duration::from_secs(3), 1).await);
    let forged = |i: usize| {
        format!(
            "Bearer {}",
            forged_keys[i - 1]
                .sign(&clerk_claims(&jwks.issuer(), i))
                .unwrap()
        )
    };
    let (first, second) = (forged(1), forged(2));
    let waiting = {
        let auth = std::sync::Arc::clone(&auth);
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let r = auth
                .verify_header_waiting(Some(&first), Duration::from_secs(10))
                .await;
            (r, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = tokio::time::Instant::now();
    assert_eq!(
        auth.verify_header_waiting(Some(&second), Duration::from_secs(10))
            .await,
        Err(AuthError::UnknownKey)
    );
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    let (r, took) = waiting.await.unwrap();
    assert_eq!(r, Err(AuthError::UnknownKey));
    assert!(
        took >= Duration::from_secs(2),
        "the first call did not wait: {took:?}"
    );
}

/// Internal callers other than the gateway are authorised per method by their token's `sub`
/// (`SERVICE_CALLERS`); an unlisted subject gets PERMISSION_DENIED, and the gateway's subject
/// keeps to the sync commands and the methods named for it.
#[tokio::test]
async fn service_callers_are_authorised_per_method_by_subject() {
    let f = fixture_with(&[], "reporting=GetUser;ops=*").await;
    let auth = &f.auth;
    let policy = MethodPolicy::new("vbase.identity.v1.IdentityService")
        .allow("UpsertUser", Access::Service)
        .allow("GetUser", Access::UserOrService)
        .allow("BatchGetUsers", Access::UserOrService)
        .allow("CompareUsers", Access::ServiceNamed("webhook-gateway"));
    let token = |sub: &str| format!("Bearer {}", f.service_token_of(sub, "identity-service"));
    let code = |m: &str, sub: &str| {
        let h = token(sub);
        policy
            .authorize(
                auth,
                &format!("/vbase.identity.v1.IdentityService/{m}"),
                Some(&h),
            )
            .err()
            .map(|s| s.code())
    };
    let denied = Some(Code::PermissionDenied);
    assert_eq!(code("GetUser", "reporting"), None);
    assert_eq!(code("BatchGetUsers", "reporting"), denied);
    assert_eq!(code("UpsertUser", "reporting"), denied);
    assert_eq!(code("CompareUsers", "reporting"), denied);
    assert_eq!(code("GetUser", "ops"), None);
    assert_eq!(code("UpsertUser", "ops"), None);
    assert_eq!(
        code("CompareUsers", "ops"),
        denied,
        "named methods are not in *"
    );
    assert_eq!(code("GetUser", "unlisted"), denied);
    assert_eq!(code("UpsertUser", "unlisted"), denied);
    assert_eq!(code("UpsertUser", "webhook-gateway"), None);
    assert_eq!(code("CompareUsers", "webhook-gateway"), None);
    assert_eq!(code("GetUser", "webhook-gateway"), denied);
    let why = policy
        .authorize(
            auth,
            "/vbase.identity.v1.IdentityService/BatchGetUsers",
            Some(&token("reporting")),
        )
        .unwrap_err();
    assert!(why.message().contains("SERVICE_CALLERS"), "{why:?}");
}

/// Whatever arrives in `authorization`, verification answers (never panics) and accepts only
/// what a key signed: arbitrary text, three base64url segments of arbitrary bytes, and real
/// tokens with one byte changed.
#[tokio::test(flavor = "multi_thread")]
async fn arbitrary_tokens_are_refused_without_panicking() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let f = fixture(&[]).await;
    let valid = f.user_token_with(json!({}));
    let mut runner = TestRunner::new(Config {
        cases: 2000,
        ..Config::default()
    });
    let segments = proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..5);
    let strategy = (any::<String>(), segments, any::<usize>(), any::<u8>());
    runner
        .run(&strategy, |(text, parts, at, byte)| {
            prop_assert!(f.auth.verify(&text).is_err());
            let joined = parts
                .iter()
                .map(|p| B64URL.encode(p))
                .collect::<Vec<_>>()
                .join(".");
            prop_assert!(f.auth.verify(&joined).is_err());
            let mut bytes = valid.clone().into_bytes();
            let i = at % bytes.len();
            if bytes[i] != byte && byte.is_ascii() {
                bytes[i] = byte;
                if let Ok(changed) = String::from_utf8(bytes) {
                    // A changed token verifies only if the change left its meaning intact
                    // (base64url's unused trailing bits): then it is the same principal.
                    if let Ok(p) = f.auth.verify(&changed) {
                        prop_assert_eq!(Ok(p), f.auth.verify(&valid));
                    }
                }
            }
            Ok(())
        })
        .unwrap();
}

/// A refresh that fails keeps the keys loaded before, and the time of the last load does not
/// move: what `verification_keys_loaded_timestamp_seconds` shows operators, since a key removed
/// from a broken file stays trusted until a load succeeds.
#[tokio::test]
async fn a_failed_refresh_keeps_the_keys_and_the_time_they_were_loaded() {
    let key = SigningKey::generate_rsa().unwrap();
    let dir = std::env::temp_dir().join(format!("vbase-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("jwks.json");
    std::fs::write(&file, SigningKey::jwks(&[&key]).to_string()).unwrap();
    let store = token_auth::KeyStore::spawn(
        KeySource::File(file.clone()),
        vec![jsonwebtoken::Algorithm::RS256],
        KeyStoreOptions {
            refresh_interval: Duration::from_millis(200),
            min_refetch_interval: Duration::from_millis(50),
            fetch_timeout: Duration::from_secs(4),
            max_waiting_calls: 16,
        },
    );
    assert!(store.wait_ready(Duration::from_secs(5)).await);
    let first = store.loaded_at().expect("loaded");
    let fetches = |n: u64| {
        let store = store.clone();
        async move {
            let target = store.fetch_count() + n;
            while store.fetch_count() < target {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // Refreshes that succeed move it (whole seconds).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    fetches(1).await;
    let refreshed = store.loaded_at().unwrap();
    assert!(refreshed > first, "{refreshed} after {first}");
    std::fs::write(&file, "{\"keys\": [").unwrap();
    fetches(2).await;
    let broken_since = store.loaded_at().unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    fetches(2).await;
    assert_eq!(
        store.loaded_at(),
        Some(broken_since),
        "a failed refresh moved it"
    );
    assert_eq!(store.key_count(), 1, "the keys loaded before are kept");
    std::fs::remove_dir_all(&dir).unwrap();
}
