//! A gRPC service behind each user's quotas ([`WithUserQuotas`]): before a user's call reaches
//! the generated server, the rates per minute of its method (`USER_READS_PER_MINUTE` for the
//! reads, others a service adds), then a place among the user's calls in flight
//! (`USER_CALLS_IN_FLIGHT`, held until the answer has been sent), and its request is capped in
//! bytes. Internal callers (service tokens) are not limited here. The settings are
//! [`UserQuotaArgs`], which every service with user callers flattens into its own.

use crate::user_quotas::{Holding, InFlight, UserInFlight, UserRate, capped_request};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use token_auth::Principal;
use tonic::Status;
use tonic::server::NamedService;

/// What one user's unary calls may take of a replica.
#[derive(Debug, Clone, clap::Args)]
pub struct UserQuotaArgs {
    /// A user's read calls (`Get...`, `List...`) per minute, as a burst of as many (1 to
    /// 1000000); beyond, RESOURCE_EXHAUSTED with when to retry.
    #[arg(long, env = "USER_READS_PER_MINUTE", default_value_t = 1200)]
    pub user_reads_per_minute: u32,
    /// A user's calls in flight at once, watches aside (1 to 1000): each holds its request
    /// and its answer until the client has read it; beyond, RESOURCE_EXHAUSTED.
    #[arg(long, env = "USER_CALLS_IN_FLIGHT", default_value_t = 16)]
    pub user_calls_in_flight: usize,
    /// Of a user's calls in flight, how many run their handler at once (1 to 1000): each may
    /// hold a database connection, so one user takes at most this many of a replica's
    /// `DB_POOL_SIZE`; their other calls wait in line (within their deadline).
    #[arg(long, env = "USER_CALLS_RUNNING", default_value_t = 4)]
    pub user_calls_running: usize,
}

impl Default for UserQuotaArgs {
    fn default() -> Self {
        Self {
            user_reads_per_minute: 1200,
            user_calls_in_flight: 16,
            user_calls_running: 4,
        }
    }
}

impl UserQuotaArgs {
    /// What is out of range, if anything.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=1_000_000).contains(&self.user_reads_per_minute) {
            return Err(format!(
                "USER_READS_PER_MINUTE ({}) must be from 1 to 1000000",
                self.user_reads_per_minute
            ));
        }
        if !(1..=1000).contains(&self.user_calls_in_flight) {
            return Err(format!(
                "USER_CALLS_IN_FLIGHT ({}) must be from 1 to 1000",
                self.user_calls_in_flight
            ));
        }
        if !(1..=1000).contains(&self.user_calls_running) {
            return Err(format!(
                "USER_CALLS_RUNNING ({}) must be from 1 to 1000",
                self.user_calls_running
            ));
        }
        Ok(())
    }
}

/// Each user's quotas on one replica: rates per minute of named methods, calls in flight, and
/// the largest request.
#[derive(Debug)]
pub struct UserQuotas {
    rates: Vec<(&'static [&'static str], UserRate)>,
    in_flight: UserInFlight,
    max_request: usize,
}

impl UserQuotas {
    /// `args`' reads per minute on the methods `reads` names and its calls in flight;
    /// requests of at most `max_request` bytes.
    pub fn new(args: &UserQuotaArgs, reads: &'static [&'static str], max_request: usize) -> Self {
        Self {
            rates: vec![(
                reads,
                UserRate::per_minute(args.user_reads_per_minute, "reads"),
            )],
            in_flight: UserInFlight::new(
                args.user_calls_in_flight,
                args.user_calls_running,
                "USER_CALLS_IN_FLIGHT",
            ),
            max_request,
        }
    }

    /// Adds `rate` on the calls of `methods` (names without the service, e.g. `GetUser`).
    #[must_use]
    pub fn with_rate(mut self, methods: &'static [&'static str], rate: UserRate) -> Self {
        self.rates.push((methods, rate));
        self
    }

    /// Admits `user`'s call of `method`: every rate that names the method, then a place in
    /// flight, which the call holds until the returned guard is dropped.
    #[allow(clippy::ptr_arg)] // the limiters' keys are Strings: no copy made per call
    pub fn admit(&self, user: &String, method: &str) -> Result<InFlight, Status> {
        for (methods, rate) in &self.rates {
            if methods.contains(&method) {
                rate.check(user)?;
            }
        }
        self.in_flight.enter(user)
    }
}

/// `S`, a generated server of unary methods, behind [`UserQuotas`].
#[derive(Debug)]
pub struct WithUserQuotas<S> {
    inner: S,
    quotas: Arc<UserQuotas>,
}

impl<S: Clone> Clone for WithUserQuotas<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            quotas: Arc::clone(&self.quotas),
        }
    }
}

impl<S> WithUserQuotas<S> {
    /// `inner` under `quotas`.
    pub fn new(inner: S, quotas: UserQuotas) -> Self {
        Self {
            inner,
            quotas: Arc::new(quotas),
        }
    }
}

impl<S: NamedService> NamedService for WithUserQuotas<S> {
    const NAME: &'static str = S::NAME;
}

type Answer = http::Response<tonic::body::Body>;

impl<S> tower::Service<http::Request<tonic::body::Body>> for WithUserQuotas<S>
where
    S: tower::Service<http::Request<tonic::body::Body>, Response = Answer, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Answer;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Answer, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Each call is made on a clone of the generated server, which is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let mut inner = self.inner.clone();
        // Users only: internal callers (the gateway, other services) are not limited here.
        let user = match req.extensions().get::<Principal>() {
            Some(Principal::User(u)) => u.user_id.clone(),
            _ => return Box::pin(async move { inner.call(req).await }),
        };
        let method = req.uri().path().rsplit_once('/').map_or("", |(_, m)| m);
        let held = match self.quotas.admit(&user, method) {
            Ok(held) => held,
            Err(status) => return Box::pin(std::future::ready(Ok(status.into_http()))),
        };
        let mut req = capped_request(req, self.quotas.max_request);
        Box::pin(async move {
            // The turn ends with the handler (its connection given back), or with work it left
            // running ([`Turn`]); the place in flight with the answer sent.
            let turn = held.turn().await;
            if let Some(turn) = &turn {
                req.extensions_mut().insert(turn.clone());
            }
            let answer = inner.call(req).await?;
            drop(turn);
            Ok(answer.map(|body| tonic::body::Body::new(Holding::new(body, held))))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_method_counts_against_each_rate_that_names_it_then_takes_a_place_in_flight() {
        let args = UserQuotaArgs {
            user_reads_per_minute: 2,
            user_calls_in_flight: 3,
            user_calls_running: 2,
        };
        let quotas = UserQuotas::new(&args, &["GetUser"], 1024)
            .with_rate(&["Authorize"], UserRate::per_minute(1, "room tokens"));
        let user = "user_a".to_owned();
        let _one = quotas.admit(&user, "GetUser").unwrap();
        let _two = quotas.admit(&user, "GetUser").unwrap();
        let refused = quotas.admit(&user, "GetUser").unwrap_err();
        assert!(refused.message().contains("too many reads"), "{refused:?}");
        let three = quotas.admit(&user, "Authorize").unwrap();
        let refused = quotas.admit(&user, "Authorize").unwrap_err();
        assert!(
            refused.message().contains("too many room tokens"),
            "{refused:?}"
        );
        let full = quotas.admit(&user, "StoreUser").unwrap_err();
        assert!(full.message().contains("USER_CALLS_IN_FLIGHT"), "{full:?}");
        drop(three);
        quotas.admit(&user, "StoreUser").unwrap();
    }

    #[test]
    fn out_of_range_settings_are_refused() {
        let mut args = UserQuotaArgs::default();
        assert_eq!(args.check(), Ok(()));
        args.user_reads_per_minute = 0;
        assert!(args.check().unwrap_err().contains("USER_READS_PER_MINUTE"));
        args = UserQuotaArgs {
            user_calls_in_flight: 1001,
            ..UserQuotaArgs::default()
        };
        assert!(args.check().unwrap_err().contains("USER_CALLS_IN_FLIGHT"));
        args = UserQuotaArgs {
            user_calls_running: 0,
            ..UserQuotaArgs::default()
        };
        assert!(args.check().unwrap_err().contains("USER_CALLS_RUNNING"));
    }
}
