//! Live watches on the wire: `WatchChannel` and `WatchWorkspace` are answered here rather than
//! through the generated server, because their events go out as frames encoded once per
//! change and shared by every watcher (`crate::live::frames`). The request (one small gRPC
//! message) is read and checked here; the response body is the stream's outbox.
//!
//! Browsers call them with binary gRPC-Web over HTTP/1.1. The text form
//! (`application/grpc-web-text`) is refused: tonic-web would copy every event into a base64
//! allocation that the replica's count of live-event bytes (`WATCH_MEMORY_BYTES`) cannot see.

use crate::domain::access::Caller;
use crate::domain::roles::Roles;
use crate::live::outbox::Transport;
use crate::live::watch::{Live, Scope};
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use prost::Message;
use token_auth::Principal;
use tonic::Status;
use vbase_proto::workspace::v1 as pb;

/// The largest watch request read (its two fields are short).
const MAX_REQUEST: usize = 4096;

/// Which watch a request opens.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Channel,
    Workspace,
}

/// Answers a watch request from a caller whose role may do what `roles` says: the stream, or
/// the status that refused it.
pub async fn serve(
    live: Live,
    kind: Kind,
    req: http::Request<tonic::body::Body>,
    roles: Roles,
) -> http::Response<tonic::body::Body> {
    match open(&live, kind, req, &roles).await {
        Ok(body) => {
            let mut response = http::Response::new(tonic::body::Body::new(body));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/grpc"),
            );
            response
        }
        Err(status) => status.into_http(),
    }
}

async fn open(
    live: &Live,
    kind: Kind,
    req: http::Request<tonic::body::Body>,
    roles: &Roles,
) -> Result<crate::live::outbox::Body, Status> {
    let (parts, body) = req.into_parts();
    if answers_text(&parts.headers) {
        return Err(Status::unimplemented(
            "watches are served in binary gRPC-Web (application/grpc-web+proto) or gRPC, not grpc-web-text",
        ));
    }
    // tonic-web keeps the request's HTTP version.
    let transport = match parts.version {
        http::Version::HTTP_2 => Transport::Http2,
        _ => Transport::Http1(
            service_runtime::connect_info::link_of(&parts.extensions).ok_or_else(|| {
                // Fail closed: without the link, a stuck response could not be cut.
                Status::internal("this server cannot carry a watch over HTTP/1.1")
            })?,
        ),
    };
    let principal = parts.extensions.get::<Principal>();
    // The open is decided on the database, not the access cache: a stream outlives the call
    // (until its next access check), so a removal this replica has not heard yet must not
    // open one. Its re-checks use the cache.
    let caller = Caller::from_principal(principal, roles)?;
    let access = parts
        .extensions
        .get::<crate::domain::standing::AccessCache>();
    let expires_at = principal.map(Principal::expires_at);
    let read = Limited::new(body, MAX_REQUEST)
        .collect()
        .await
        .map_err(|e| match e.downcast::<Status>() {
            Ok(status) => *status,
            Err(_) => {
                Status::invalid_argument(format!("a watch request is at most {MAX_REQUEST} bytes"))
            }
        })?
        .to_bytes();
    let message = one_message(&read)?;
    let bad = |e: prost::DecodeError| Status::invalid_argument(format!("malformed request: {e}"));
    let (scope, token) = match kind {
        Kind::Channel => {
            let m = pb::WatchChannelRequest::decode(message).map_err(bad)?;
            let channel = input_validation::uuid("channel_id", &m.channel_id)
                .map_err(crate::error::Error::from)?;
            (Scope::Channel(channel), resume_token(&m.resume_token)?)
        }
        Kind::Workspace => {
            let m = pb::WatchWorkspaceRequest::decode(message).map_err(bad)?;
            let org = crate::model::OrgId::parse("clerk_org_id", &m.clerk_org_id)?;
            (Scope::Workspace(org), resume_token(&m.resume_token)?)
        }
    };
    live.open(transport, caller, access, expires_at, scope, token)
        .await
}

/// Whether tonic-web would answer in base64 (what it reads from `accept`).
fn answers_text(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(http::header::ACCEPT)
        .iter()
        .any(|v| v.as_bytes().starts_with(b"application/grpc-web-text"))
}

/// The one uncompressed gRPC message of a request body.
fn one_message(body: &Bytes) -> Result<Bytes, Status> {
    let not_one = || Status::invalid_argument("the request must be one gRPC message");
    if body.len() < 5 {
        return Err(not_one());
    }
    if body[0] != 0 {
        return Err(Status::unimplemented(
            "compressed requests are not accepted: send watch requests uncompressed",
        ));
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    if body.len() != 5 + len {
        return Err(not_one());
    }
    Ok(body.slice(5..))
}

/// The resume token of a watch request (`None`: from now).
fn resume_token(token: &str) -> Result<Option<String>, Status> {
    match token.trim() {
        "" => Ok(None),
        t if t.len() > 100 => Err(Status::invalid_argument(
            "resume_token is not one this service gave out",
        )),
        t => Ok(Some(t.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_exactly_one_uncompressed_message() {
        let m = pb::WatchChannelRequest {
            channel_id: "c".into(),
            resume_token: String::new(),
        }
        .encode_to_vec();
        let mut framed = vec![0];
        framed.extend_from_slice(&(m.len() as u32).to_be_bytes());
        framed.extend_from_slice(&m);
        assert_eq!(one_message(&Bytes::from(framed.clone())).unwrap(), m);
        let mut compressed = framed.clone();
        compressed[0] = 1;
        assert_eq!(
            one_message(&Bytes::from(compressed)).unwrap_err().code(),
            tonic::Code::Unimplemented
        );
        framed.push(0);
        assert!(one_message(&Bytes::from(framed)).is_err());
        assert!(one_message(&Bytes::from_static(b"\0\0")).is_err());
    }
}
