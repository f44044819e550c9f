//! Svix signature verification on the raw body, with several secrets during a rotation.

use http::HeaderMap;
use svix::webhooks::{Webhook, WebhookError};

/// Why a webhook was refused (the text is returned to the sender).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// A required header is missing.
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    /// The id or signature header is not visible ASCII.
    #[error("invalid {0} header")]
    InvalidHeader(&'static str),
    /// The timestamp header is not a number.
    #[error("invalid timestamp header")]
    BadTimestamp,
    /// Older than 5 minutes.
    #[error("timestamp too old")]
    Stale,
    /// More than 5 minutes in the future.
    #[error("timestamp in the future")]
    Future,
    /// No `v1` signature matches any configured secret.
    #[error("invalid signature")]
    BadSignature,
}

impl Rejection {
    /// Every metric label.
    pub const LABELS: [&'static str; 6] = [
        "missing_header",
        "bad_header",
        "bad_timestamp",
        "stale_timestamp",
        "future_timestamp",
        "bad_signature",
    ];

    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Rejection::MissingHeader(_) => "missing_header",
            Rejection::InvalidHeader(_) => "bad_header",
            Rejection::BadTimestamp => "bad_timestamp",
            Rejection::Stale => "stale_timestamp",
            Rejection::Future => "future_timestamp",
            Rejection::BadSignature => "bad_signature",
        }
    }
}

/// The header the svix crate means by `name` (`id`, `timestamp`, `signature`).
fn header(name: &str) -> &'static str {
    match name {
        "id" => "svix-id",
        "timestamp" => "svix-timestamp",
        _ => "svix-signature",
    }
}

fn classify(e: WebhookError) -> Rejection {
    match e {
        WebhookError::MissingHeader(h) => Rejection::MissingHeader(header(h)),
        WebhookError::InvalidHeader("timestamp") | WebhookError::InvalidTimestamp => {
            Rejection::BadTimestamp
        }
        WebhookError::InvalidHeader(h) => Rejection::InvalidHeader(header(h)),
        WebhookError::TimestampTooOldError => Rejection::Stale,
        WebhookError::FutureTimestampError => Rejection::Future,
        _ => Rejection::BadSignature,
    }
}

/// Verifies against every configured secret; any match passes.
pub struct Verifier {
    hooks: Vec<Webhook>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("secrets", &self.hooks.len())
            .finish()
    }
}

impl Verifier {
    /// `secrets`: one or more `whsec_...` values separated by spaces or commas.
    pub fn new(secrets: &str) -> Result<Self, String> {
        let hooks = secrets
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .enumerate()
            .map(|(i, s)| {
                Webhook::new(s).map_err(|_| {
                    format!(
                        "CLERK_WEBHOOK_SECRET entry {} is not a whsec_<base64> secret",
                        i + 1
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if hooks.is_empty() {
            return Err("CLERK_WEBHOOK_SECRET must hold at least one whsec_... secret".into());
        }
        Ok(Self { hooks })
    }

    /// Verifies signature and timestamp (±5 minutes).
    pub fn verify(&self, body: &[u8], headers: &HeaderMap) -> Result<(), Rejection> {
        self.check(|h| h.verify(body, headers))
    }

    /// Verifies the signature only (for replaying recorded test vectors).
    pub fn verify_ignoring_timestamp(
        &self,
        body: &[u8],
        headers: &HeaderMap,
    ) -> Result<(), Rejection> {
        self.check(|h| h.verify_ignoring_timestamp(body, headers))
    }

    fn check(&self, f: impl Fn(&Webhook) -> Result<(), WebhookError>) -> Result<(), Rejection> {
        let mut worst = Rejection::BadSignature;
        for h in &self.hooks {
            match f(h) {
                Ok(()) => return Ok(()),
                // Header and timestamp problems are the same for every secret.
                Err(e) => match classify(e) {
                    Rejection::BadSignature => {}
                    other => worst = other,
                },
            }
        }
        Err(worst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(id: &str, ts: &str, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("svix-id", id.parse().unwrap());
        h.insert("svix-timestamp", ts.parse().unwrap());
        h.insert("svix-signature", sig.parse().unwrap());
        h
    }

    // Test vectors of the reference file (section 2.3).
    const A_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const A_ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const A_BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
    const A_SIG: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";
    const B_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn vector_a() {
        let v = Verifier::new(A_SECRET).unwrap();
        assert_eq!(
            v.verify_ignoring_timestamp(A_BODY, &headers(A_ID, "1649367553", A_SIG)),
            Ok(())
        );
        let wrong = "v1,R3PTzyfHASBKHH98a7yexTwaJ4yNIcGhFQc1yuN+BPU=";
        assert_eq!(
            v.verify_ignoring_timestamp(A_BODY, &headers(A_ID, "1649367553", wrong)),
            Err(Rejection::BadSignature)
        );
        // Years old: refused when the timestamp is enforced.
        assert_eq!(
            v.verify(A_BODY, &headers(A_ID, "1649367553", A_SIG)),
            Err(Rejection::Stale)
        );
    }

    #[test]
    fn vector_b_with_and_without_prefix() {
        let h = headers(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        );
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            Verifier::new(B_SECRET)
                .unwrap()
                .verify_ignoring_timestamp(body, &h),
            Ok(())
        );
        assert_eq!(
            Verifier::new("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
                .unwrap()
                .verify_ignoring_timestamp(body, &h),
            Ok(())
        );
    }

    #[test]
    fn vector_c_clerk_user_deleted() {
        let body = br#"{"data":{"deleted":true,"id":"user_29wBMCtzATuFJut8jO2VNTVekS4","object":"user"},"event_attributes":{"http_request":{"client_ip":"0.0.0.0","user_agent":"Mozilla/5.0"}},"instance_id":"ins_123","object":"event","timestamp":1661861640000,"type":"user.deleted"}"#;
        assert_eq!(body.len(), 257);
        let h = headers(
            "msg_2a8UXoh6ZCBFpH6ilsdkxNBR9qa",
            "1661861641",
            "v1,xJmqKgtQG/lK59DAss/TwQSplM6UgAG90SZWRitsWec=",
        );
        assert_eq!(
            Verifier::new(B_SECRET)
                .unwrap()
                .verify_ignoring_timestamp(body, &h),
            Ok(())
        );
    }

    #[test]
    fn any_of_several_signatures_passes_and_none_fails() {
        let v = Verifier::new(A_SECRET).unwrap();
        let others = "v1,tFtCZ5RDCPxzWQRWXWPgrCgE2frDBe9gjpbWQxnVfsQ= v1,Mm7xgUVICxZfQ3bgf0h0Dof65L/IFx+PnZvnDWPCX6Q=";
        let tail = "v1,9DfC1c3eeOrXB6w/5dIDydLNQaEyww5KalE5jLBZucE=";
        let with = format!("{others} {A_SIG} {tail}");
        let without = format!("{others} {tail}");
        assert_eq!(
            v.verify_ignoring_timestamp(A_BODY, &headers(A_ID, "1649367553", &with)),
            Ok(())
        );
        assert_eq!(
            v.verify_ignoring_timestamp(A_BODY, &headers(A_ID, "1649367553", &without)),
            Err(Rejection::BadSignature)
        );
    }

    #[test]
    fn rotation_accepts_either_secret() {
        let v = Verifier::new(&format!("{B_SECRET}, {A_SECRET}")).unwrap();
        assert_eq!(
            v.verify_ignoring_timestamp(A_BODY, &headers(A_ID, "1649367553", A_SIG)),
            Ok(())
        );
        assert!(Verifier::new("whsec_!!notbase64").is_err());
        assert!(Verifier::new("  ").is_err());
    }

    #[test]
    fn missing_headers_are_named() {
        let v = Verifier::new(A_SECRET).unwrap();
        let mut h = headers(A_ID, "1649367553", A_SIG);
        h.remove("svix-signature");
        assert_eq!(
            v.verify(A_BODY, &h),
            Err(Rejection::MissingHeader("svix-signature"))
        );
    }

    /// A header that is not visible ASCII is named as such, not counted as a bad timestamp.
    #[test]
    fn unreadable_headers_are_named() {
        let v = Verifier::new(A_SECRET).unwrap();
        let opaque = |name: &'static str| {
            let mut h = headers(A_ID, "1649367553", A_SIG);
            h.insert(name, http::HeaderValue::from_bytes(b"\xff").unwrap());
            v.verify(A_BODY, &h)
        };
        assert_eq!(opaque("svix-id"), Err(Rejection::InvalidHeader("svix-id")));
        assert_eq!(
            opaque("svix-signature"),
            Err(Rejection::InvalidHeader("svix-signature"))
        );
        assert_eq!(opaque("svix-timestamp"), Err(Rejection::BadTimestamp));
        assert_eq!(Rejection::InvalidHeader("svix-id").label(), "bad_header");
    }

    #[test]
    fn every_label_is_listed() {
        for r in [
            Rejection::MissingHeader("svix-id"),
            Rejection::InvalidHeader("svix-id"),
            Rejection::BadTimestamp,
            Rejection::Stale,
            Rejection::Future,
            Rejection::BadSignature,
        ] {
            assert!(Rejection::LABELS.contains(&r.label()), "{r:?}");
        }
    }
}
