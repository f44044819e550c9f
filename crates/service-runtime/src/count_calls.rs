//! The outermost layer of the gRPC server: every call counts on its connection's
//! [`Activity`] from its request until its response body ends or is dropped.

#[cfg(doc)]
use crate::activity::Activity;
use crate::activity::Call;
use crate::connect_info::AdmittedInfo;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The layer that counts every call on its connection's [`Activity`]; outermost, so that every
/// call counts whatever the inner layers answer.
#[derive(Debug, Clone, Copy, Default)]
pub struct CountCalls;

impl<S> tower::Layer<S> for CountCalls {
    type Service = Counting<S>;

    fn layer(&self, inner: S) -> Counting<S> {
        Counting(inner)
    }
}

/// A service whose calls count on their connection's [`Activity`].
#[derive(Debug, Clone)]
pub struct Counting<S>(S);

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Counting<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    ResBody: http_body::Body + Send + 'static,
{
    type Response = http::Response<Counted<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let info = request.extensions().get::<AdmittedInfo>().cloned();
        let call = info.map(|info| {
            // tonic's `Request::remote_addr` looks for the TCP information itself.
            request.extensions_mut().insert(info.tcp);
            info.activity.begin()
        });
        let answer = self.0.call(request);
        Box::pin(async move {
            let response = answer.await?;
            Ok(response.map(|inner| Counted {
                inner: Box::pin(inner),
                _call: call,
            }))
        })
    }
}

/// A response body that keeps its call in flight until it is dropped.
#[derive(Debug)]
pub struct Counted<B> {
    inner: Pin<Box<B>>,
    _call: Option<Call>,
}

impl<B: http_body::Body> http_body::Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        self.inner.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
