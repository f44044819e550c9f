//! Reads an HTTP response's body up to a cap. Every body we read from a provider (Clerk's JWKS
//! and Backend API, Liveblocks) is bounded: a misbehaving or hostile server answering gigabytes
//! must cost at most the cap, refused as soon as it is passed (by `Content-Length` before
//! reading, or while reading), never buffered whole.

use bytes::{Bytes, BytesMut};

/// Why a body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body is (or announced itself as) longer than the cap.
    #[error("body over {cap} bytes")]
    TooLarge {
        /// The cap it passed.
        cap: usize,
    },
    /// The connection failed or timed out while reading.
    #[error("reading the body: {0}")]
    Read(#[from] reqwest::Error),
}

/// The body of `resp`, refused once it exceeds `cap` bytes.
pub async fn read(mut resp: reqwest::Response, cap: usize) -> Result<Bytes, BodyError> {
    if resp.content_length().is_some_and(|n| n > cap as u64) {
        return Err(BodyError::TooLarge { cap });
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > cap {
            return Err(BodyError::TooLarge { cap });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// The body of `resp` as text (invalid UTF-8 replaced), refused once it exceeds `cap` bytes.
pub async fn text(resp: reqwest::Response, cap: usize) -> Result<String, BodyError> {
    let body = read(resp, cap).await?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Serves one connection: `head` (status line and headers), then `body` in 1 KiB writes.
    async fn serve_once(head: &'static str, body: Vec<u8>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 1024];
            let _ = s.read(&mut request).await;
            let _ = s.write_all(head.as_bytes()).await;
            for piece in body.chunks(1024) {
                if s.write_all(piece).await.is_err() {
                    return;
                }
            }
        });
        url
    }

    async fn get(url: &str) -> reqwest::Response {
        reqwest::get(url).await.unwrap()
    }

    #[tokio::test]
    async fn a_body_within_the_cap_is_read_whole() {
        let url = serve_once(
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\n",
            b"hello".to_vec(),
        )
        .await;
        assert_eq!(text(get(&url).await, 5).await.unwrap(), "hello");
    }

    #[tokio::test]
    async fn a_body_announced_over_the_cap_is_refused_before_reading() {
        let url = serve_once(
            "HTTP/1.1 200 OK\r\ncontent-length: 100000000\r\nconnection: close\r\n\r\n",
            Vec::new(),
        )
        .await;
        let err = read(get(&url).await, 4096).await.unwrap_err();
        assert!(matches!(err, BodyError::TooLarge { cap: 4096 }), "{err}");
    }

    #[tokio::test]
    async fn a_body_without_length_is_cut_off_at_the_cap() {
        // No content-length: the server streams until it closes; only the cap stops the read.
        let url = serve_once(
            "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n",
            vec![b'x'; 64 * 1024],
        )
        .await;
        let err = read(get(&url).await, 4096).await.unwrap_err();
        assert!(matches!(err, BodyError::TooLarge { cap: 4096 }), "{err}");
    }
}
