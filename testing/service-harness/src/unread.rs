//! A call whose client never reads its answer, to hold a service's answer in flight.

use prost::Message;
use std::net::SocketAddr;
use tonic::Request;

/// A call whose answer its client never reads: an HTTP/2 connection with 16 KiB windows whose
/// response body is never polled, so no window is ever granted back (the connection still
/// answers pings). Dropping it closes the connection.
pub struct Unread {
    _client: h2::client::SendRequest<bytes::Bytes>,
    pub response: http::Response<h2::RecvStream>,
    connection: tokio::task::JoinHandle<()>,
}

impl Drop for Unread {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// Sends `req` to `path` (`/package.Service/Method`) at `addr` and returns once the answer's
/// headers arrived, never reading its body.
pub async fn unread_call<T: Message>(addr: SocketAddr, path: &str, req: Request<T>) -> Unread {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(16 * 1024)
        .initial_connection_window_size(16 * 1024)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .unwrap();
    let connection = tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.unwrap();
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
    let message = req.into_inner().encode_to_vec();
    let mut framed = vec![0];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    let (answer, mut body) = client.send_request(head, false).unwrap();
    body.send_data(framed.into(), true).unwrap();
    let response = answer.await.unwrap();
    Unread {
        _client: client,
        response,
        connection,
    }
}
