//! Why a token was refused.

/// Why a token was refused. The `Display` text is safe to return to the caller.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No `authorization` metadata.
    #[error("missing bearer token: send `authorization: Bearer <JWT>`")]
    Missing,
    /// Not `Bearer <token>`, or not a JWT.
    #[error("malformed bearer token")]
    Malformed,
    /// The `iss` claim names no issuer we trust.
    #[error("token issuer is not trusted")]
    UntrustedIssuer,
    /// No `kid` header.
    #[error("token has no key id (kid)")]
    MissingKeyId,
    /// The `kid` is not in the current key set (a refresh was requested).
    #[error(
        "token signed with an unknown key; keys are refreshed in the background, retry shortly"
    )]
    UnknownKey,
    /// `alg` is not the algorithm pinned for the key.
    #[error("token algorithm is not allowed")]
    AlgorithmNotAllowed,
    /// Signature does not verify.
    #[error("token signature is invalid")]
    BadSignature,
    /// `exp` passed (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("token not valid yet")]
    NotYetValid,
    /// `aud` does not contain the expected audience.
    #[error("token audience is not accepted")]
    WrongAudience,
    /// `azp` is not an authorized party.
    #[error("token authorized party (azp) is not allowed")]
    UnauthorizedParty,
    /// Required claims are missing or have the wrong type.
    #[error("token claims are invalid")]
    InvalidClaims,
    /// No `iat`: how long the token lives cannot be checked.
    #[error("token has no issue time (iat)")]
    MissingIssuedAt,
    /// `exp - iat` is longer than this service accepts.
    #[error("token lifetime (exp - iat) is longer than this service accepts")]
    LifetimeTooLong,
    /// An authorized-party list is configured and the token names none (`azp`).
    #[error("token has no authorized party (azp), which this service requires")]
    MissingParty,
    /// The service key that signed the token may not sign its `sub` (each service key is
    /// bound to its own subjects: the gateway's key signs the gateway's subject only).
    #[error(
        "token subject is not one its signing key may sign (the key's JWK lists the subjects it may sign)"
    )]
    SubjectNotAllowed,
    /// The token names an active organization but no role in it: which permissions the user
    /// has there cannot be told, so nothing is granted.
    #[error(
        "token names an active organization (org_id) but no role: add `\"org_role\": \"{{{{org.role}}}}\"` to the Clerk JWT template"
    )]
    MissingOrgRole,
    /// The Clerk session is `pending` (`sts`): the user signed in but has not finished the
    /// session's tasks, and Clerk's SDKs treat such a session as signed out.
    #[error(
        "the Clerk session is pending (sts): finish the sign-in tasks (for example choosing an organization), then retry with a fresh token"
    )]
    PendingSession,
    /// `sts` names a session status other than `active` or `pending`: no session Clerk signs a
    /// token for, so nothing is granted.
    #[error("the Clerk session is not active (sts)")]
    InactiveSession,
}
