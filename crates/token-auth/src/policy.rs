//! Per-method access policy and the tower layer that enforces it on a tonic server.
//!
//! tonic's `Interceptor` does not see which method is called, so the check runs one step earlier,
//! as a layer over the whole server (`Server::builder().layer(AuthLayer::new(..))`). It is fully
//! synchronous (keys come from the in-memory [`crate::KeyStore`]); a refused call never reaches
//! the handler. The verified [`Principal`] goes into the request extensions, where handlers read
//! it with `request.extensions().get::<Principal>()`.

use crate::claims::Principal;
use crate::error::AuthError;
use crate::verify::Authenticator;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::Status;

/// gRPC services that need no token: health checks (Kubernetes probes) and reflection (grpcurl).
const OPEN_SERVICES: &[&str] = &[
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Who may call a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Clerk user tokens only.
    User,
    /// Internal service tokens only.
    Service,
    /// Either.
    UserOrService,
    /// Only the internal service whose token's `sub` is this name.
    ServiceNamed(&'static str),
    /// Only service tokens whose `sub` is an operator (`OPERATOR_SUBJECTS`): the admin services.
    Operator,
}

impl Access {
    /// Whether a user may call a method with this access.
    fn admits_users(self) -> bool {
        matches!(self, Access::User | Access::UserOrService)
    }
}

/// The declared access of every method of the gRPC services one server serves. Undeclared
/// methods, and every method of an undeclared service, are denied.
#[derive(Debug, Clone, Default)]
pub struct MethodPolicy {
    /// The service that [`MethodPolicy::allow`] declares methods of.
    current: String,
    /// Access by full path, `/package.Service/Method`.
    methods: HashMap<String, Access>,
    /// Full paths of the methods that change data (a user's calls to them are rate-limited).
    writes: std::collections::HashSet<String>,
}

/// What the policy says about a request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Health or reflection: no token needed.
    Open,
    /// A declared method of a protected service.
    Protected(Access),
    /// Anything else: denied.
    Undeclared,
}

impl MethodPolicy {
    /// A policy for the fully-qualified service name, e.g. `vbase.identity.v1.IdentityService`.
    pub fn new(service: impl Into<String>) -> Self {
        Self {
            current: service.into(),
            methods: HashMap::new(),
            writes: std::collections::HashSet::new(),
        }
    }

    /// Declares a method of this policy's service.
    #[must_use]
    pub fn allow(mut self, method: &str, access: Access) -> Self {
        self.methods
            .insert(format!("/{}/{method}", self.current), access);
        self
    }

    /// Declares `methods`, each with `access`.
    #[must_use]
    pub fn allow_all(self, methods: &[&str], access: Access) -> Self {
        methods.iter().fold(self, |p, m| p.allow(m, access))
    }

    /// Marks `methods` of this policy's service as writes: a user's calls to them count
    /// against the per-user write rate.
    #[must_use]
    pub fn writes(mut self, methods: &[&str]) -> Self {
        for m in methods {
            self.writes.insert(format!("/{}/{m}", self.current));
        }
        self
    }

    /// Whether the method at `path` changes data.
    pub fn is_write(&self, path: &str) -> bool {
        self.writes.contains(path)
    }

    /// This policy and `other` together (a server serving both services).
    #[must_use]
    pub fn merge(mut self, other: MethodPolicy) -> Self {
        self.methods.extend(other.methods);
        self.writes.extend(other.writes);
        if self.current.is_empty() {
            self.current = other.current;
        }
        self
    }

    /// The services that have at least one declared method, sorted.
    pub fn services(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .methods
            .keys()
            .filter_map(|p| p.strip_prefix('/')?.split_once('/').map(|(s, _)| s))
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// Decides a request path of the form `/package.Service/Method`.
    pub fn decide(&self, path: &str) -> Decision {
        if let Some(access) = self.methods.get(path) {
            return Decision::Protected(*access);
        }
        let Some((service, _)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
            return Decision::Undeclared;
        };
        if OPEN_SERVICES.contains(&service) {
            Decision::Open
        } else {
            Decision::Undeclared
        }
    }

    /// Authenticates and authorizes one call: `Ok(None)` for open methods, the principal for
    /// protected ones, the status to answer otherwise.
    pub fn authorize(
        &self,
        auth: &Authenticator,
        path: &str,
        authorization: Option<&str>,
    ) -> Result<Option<Principal>, Status> {
        match self.decide(path) {
            Decision::Open => Ok(None),
            Decision::Undeclared => Err(Status::permission_denied(
                "method is not declared in the access policy",
            )),
            Decision::Protected(access) => {
                let principal = auth
                    .verify_header(authorization)
                    .map_err(|e: AuthError| Status::unauthenticated(e.to_string()))?;
                permit(access, principal, path, auth.service_callers()).map(Some)
            }
        }
    }
}

/// The principal, if `access` admits it: a user where users may call; the gateway's subject
/// on the methods for service tokens only (the sync commands) and those named for it; another
/// internal caller on what `callers` grants it.
fn permit(
    access: Access,
    principal: Principal,
    path: &str,
    callers: &crate::ServiceCallers,
) -> Result<Principal, Status> {
    let method = path.rsplit('/').next().unwrap_or_default();
    let allowed = match (&principal, access) {
        (Principal::User(_), a) => a.admits_users(),
        (Principal::Service(s), Access::ServiceNamed(name)) => s.name == name,
        (Principal::Service(s), Access::Operator) => callers.is_operator(&s.name),
        (Principal::Service(_), Access::User) => false,
        (Principal::Service(s), Access::Service) => {
            s.name == crate::GATEWAY_SUBJECT || callers.allows(&s.name, method)
        }
        (Principal::Service(s), Access::UserOrService) => callers.allows(&s.name, method),
    };
    if allowed {
        return Ok(principal);
    }
    Err(Status::permission_denied(match (&principal, access) {
        (_, Access::ServiceNamed(name)) => format!("this method is only for the {name} service"),
        (_, Access::Operator) => {
            "this method is for operators: a service token whose sub is in OPERATOR_SUBJECTS, signed with the operators' key (vbase-token mint)".to_owned()
        }
        (Principal::User(_), _) => "this method does not accept user tokens".to_owned(),
        (Principal::Service(_), Access::User) => {
            "this method does not accept service tokens".to_owned()
        }
        (Principal::Service(s), _) => format!(
            "service caller {} may not call {method}: grant it in SERVICE_CALLERS",
            s.name
        ),
    }))
}

/// The caller's deadline (`grpc-timeout`: at most 8 digits and a unit, H M S m u n), if any.
fn grpc_timeout(headers: &http::HeaderMap) -> Option<std::time::Duration> {
    use std::time::Duration;
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Tower layer enforcing a [`MethodPolicy`] with an [`Authenticator`].
#[derive(Debug, Clone)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
    policy: Arc<MethodPolicy>,
}

impl AuthLayer {
    /// Creates the layer.
    pub fn new(auth: Arc<Authenticator>, policy: MethodPolicy) -> Self {
        Self {
            auth,
            policy: Arc::new(policy),
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: Arc::clone(&self.auth),
            policy: Arc::clone(&self.policy),
        }
    }
}

/// The service produced by [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
    policy: Arc<MethodPolicy>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

/// A principal as the `caller` field of a call's span: `service:<name>` or `user:<id>`.
struct Caller<'a>(&'a Principal);

impl std::fmt::Display for Caller<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Principal::Service(s) => write!(f, "service:{}", s.name),
            Principal::User(u) => write!(f, "user:{}", u.user_id),
        }
    }
}

/// The span of one call. Made once its caller is known where it can be: recording a field
/// later re-encodes every field of the span (JSON logs), on every call.
/// An impersonated user's call also names who acts (`actor`: `user:<impersonator>`).
fn rpc_span(method: &str, caller: Option<&Principal>) -> tracing::Span {
    match caller {
        Some(p) => match actor(p) {
            Some(a) => {
                tracing::info_span!("rpc", method, caller = %Caller(p), actor = %format_args!("user:{a}"))
            }
            None => tracing::info_span!("rpc", method, caller = %Caller(p)),
        },
        None => tracing::info_span!(
            "rpc",
            method,
            caller = tracing::field::Empty,
            actor = tracing::field::Empty
        ),
    }
}

fn actor(p: &Principal) -> Option<&str> {
    p.as_user().and_then(|u| u.actor.as_deref())
}

fn record_caller(span: &tracing::Span, principal: &Principal) {
    span.record("caller", tracing::field::display(Caller(principal)));
    if let Some(a) = actor(principal) {
        span.record("actor", tracing::field::display(format_args!("user:{a}")));
    }
}

fn refuse<E: Send + 'static>(
    span: &tracing::Span,
    status: Status,
) -> BoxFuture<http::Response<tonic::body::Body>, E> {
    let _entered = span.enter();
    tracing::debug!(code = ?status.code(), reason = status.message(), "call refused");
    Box::pin(std::future::ready(Ok(status.into_http())))
}

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        let access = match self.policy.decide(path) {
            Decision::Open => {
                let span = rpc_span(path, None);
                return Box::pin(tracing::Instrument::instrument(self.inner.call(req), span));
            }
            Decision::Undeclared => {
                return refuse(
                    &rpc_span(path, None),
                    Status::permission_denied("method is not declared in the access policy"),
                );
            }
            Decision::Protected(access) => access,
        };
        let authorization = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        match self.auth.verify_header(authorization) {
            Ok(principal) => match permit(access, principal, path, self.auth.service_callers()) {
                Ok(principal) => {
                    let span = rpc_span(path, Some(&principal));
                    req.extensions_mut().insert(principal);
                    Box::pin(tracing::Instrument::instrument(self.inner.call(req), span))
                }
                Err(status) => refuse(&rpc_span(path, None), status),
            },
            // A key Clerk rotated in since the last fetch: wait for the next fetch, within the
            // caller's deadline (the key store bounds the wait too).
            Err(AuthError::UnknownKey) => {
                let bound = grpc_timeout(req.headers()).unwrap_or(std::time::Duration::MAX);
                let authorization = authorization.map(str::to_owned);
                let auth = Arc::clone(&self.auth);
                // The ready service goes into the future; a clone takes its place.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let span = rpc_span(path, None);
                let waiting = span.clone();
                let path = path.to_owned();
                Box::pin(tracing::Instrument::instrument(
                    async move {
                        let verified = auth
                            .verify_header_waiting(authorization.as_deref(), bound)
                            .await
                            .map_err(|e| Status::unauthenticated(e.to_string()))
                            .and_then(|p| permit(access, p, &path, auth.service_callers()));
                        match verified {
                            Ok(principal) => {
                                record_caller(&waiting, &principal);
                                req.extensions_mut().insert(principal);
                                inner.call(req).await
                            }
                            Err(status) => refuse(&waiting, status).await,
                        }
                    },
                    span,
                ))
            }
            Err(e) => refuse(
                &rpc_span(path, None),
                Status::unauthenticated(e.to_string()),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decides_paths() {
        let p = MethodPolicy::new("a.v1.S")
            .allow("Get", Access::User)
            .merge(MethodPolicy::new("a.v1.Admin").allow("Get", Access::Service));
        assert_eq!(p.decide("/a.v1.S/Get"), Decision::Protected(Access::User));
        assert_eq!(
            p.decide("/a.v1.Admin/Get"),
            Decision::Protected(Access::Service)
        );
        assert_eq!(p.decide("/a.v1.Admin/Other"), Decision::Undeclared);
        assert_eq!(p.services(), vec!["a.v1.Admin", "a.v1.S"]);
        assert_eq!(p.decide("/a.v1.S/Other"), Decision::Undeclared);
        assert_eq!(p.decide("/b.v1.S/Get"), Decision::Undeclared);
        assert_eq!(p.decide("/grpc.health.v1.Health/Check"), Decision::Open);
        assert_eq!(
            p.decide("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            Decision::Open
        );
        assert_eq!(p.decide("garbage"), Decision::Undeclared);
    }

    #[test]
    fn reads_the_callers_deadline() {
        use std::time::Duration;
        let deadline = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert("grpc-timeout", http::HeaderValue::from_str(v).unwrap());
            grpc_timeout(&h)
        };
        assert_eq!(deadline("1500m"), Some(Duration::from_millis(1500)));
        assert_eq!(deadline("2S"), Some(Duration::from_secs(2)));
        assert_eq!(deadline("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(
            deadline("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "S", "123456789S", "5x", "-1S", "1.5S"] {
            assert_eq!(deadline(bad), None, "{bad}");
        }
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }
}
