//! Raw gRPC over HTTP/2 for tests that need what tonic's client hides: a client that never
//! reads its answers, or a message framed by hand.

use bytes::Bytes;
use prost::Message;
use std::net::SocketAddr;
use tonic::Request;

/// One gRPC message as framed on the wire: uncompressed, its length, the message.
pub fn grpc_frame(message: &impl Message) -> Bytes {
    let message = message.encode_to_vec();
    let mut framed = Vec::with_capacity(5 + message.len());
    framed.push(0);
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    framed.into()
}

/// An HTTP/2 client with 16 KiB windows, stream and connection: a body it never polls gets no
/// window back, so its server holds the rest (the connection still answers pings). Returns the
/// client, ready, and the task driving its connection.
pub async fn stingy_h2_client(
    addr: SocketAddr,
) -> (h2::client::SendRequest<Bytes>, tokio::task::JoinHandle<()>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(16 * 1024)
        .initial_connection_window_size(16 * 1024)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    let connection = tokio::spawn(async move {
        let _ = connection.await;
    });
    (client.ready().await.unwrap(), connection)
}

/// A call whose answer its client never reads, on a [`stingy_h2_client`] of its own. Dropping
/// it closes the connection.
pub struct Unread {
    _client: h2::client::SendRequest<Bytes>,
    pub response: http::Response<h2::RecvStream>,
    connection: tokio::task::JoinHandle<()>,
}

impl Drop for Unread {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// Sends `req` (with its `authorization`) to `path` (`/package.Service/Method`) at `addr` and
/// returns once the answer's headers arrived, never reading its body.
pub async fn unread_call<T: Message>(addr: SocketAddr, path: &str, req: Request<T>) -> Unread {
    let (mut client, connection) = stingy_h2_client(addr).await;
    let auth = req
        .metadata()
        .get("authorization")
        .unwrap()
        .to_str()
        .unwrap();
    let head = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", auth)
        .body(())
        .unwrap();
    let (answer, mut body) = client.send_request(head, false).unwrap();
    body.send_data(grpc_frame(req.get_ref()), true).unwrap();
    let response = answer.await.unwrap();
    Unread {
        _client: client,
        response,
        connection,
    }
}
