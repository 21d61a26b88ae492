//! A hand-written backend for tests that need exact control over each answer (a status, a
//! body, a closed connection) and to see each request head, where `mockllm`'s modes would be
//! the longer way round: one request per connection, its head handed to a closure, the
//! closure's answer written back, the connection closed.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The most [`read_head`] reads looking for the end of a head.
pub const MAX_HEAD: usize = 64 * 1024;

/// Reads from `sock` up to the end of an HTTP head (the blank line) and returns all it read,
/// which may run into the body. `None` when the peer closes first, a read fails, or
/// [`MAX_HEAD`] bytes come without a blank line.
pub async fn read_head<R: AsyncRead + Unpin>(sock: &mut R) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => {
                // The blank line may straddle two reads: look from three bytes back.
                let from = got.len().saturating_sub(3);
                got.extend_from_slice(&buf[..n]);
                if got[from..].windows(4).any(|w| w == b"\r\n\r\n") {
                    return Some(got);
                }
                if got.len() >= MAX_HEAD {
                    return None;
                }
            }
        }
    }
}

/// Serves `listener` until accepting fails or the returned task is aborted: on each connection
/// the request head is read ([`read_head`]; the connection is dropped if there is none) and
/// given to `respond` as text (lossily decoded); its answer is written and the connection shut
/// down, or, on `None`, the connection is closed without an answer.
pub fn serve_heads<F>(listener: TcpListener, respond: F) -> JoinHandle<()>
where
    F: Fn(&str) -> Option<String> + Send + Sync + 'static,
{
    let respond = Arc::new(respond);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let respond = respond.clone();
            tokio::spawn(async move {
                let Some(head) = read_head(&mut sock).await else {
                    return;
                };
                if let Some(answer) = respond(&String::from_utf8_lossy(&head)) {
                    let _ = sock.write_all(answer.as_bytes()).await;
                    let _ = sock.shutdown().await;
                }
            });
        }
    })
}

/// A complete HTTP/1.1 answer that closes its connection: `status` is the status line's rest
/// (`"200 OK"`), `body` is sent with its `content-length`.
pub fn closing_answer(status: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpStream;

    /// Sends `request` to a backend answering with `respond`; all it sent back.
    async fn exchange(
        request: &[u8],
        respond: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = serve_heads(listener, respond);
        let mut sock = TcpStream::connect(addr).await.unwrap();
        sock.write_all(request).await.unwrap();
        let mut answer = String::new();
        sock.read_to_string(&mut answer).await.unwrap();
        task.abort();
        answer
    }

    #[tokio::test]
    async fn the_head_is_handed_over_and_the_answer_comes_back() {
        let answer = exchange(b"GET /v1/models HTTP/1.1\r\nhost: t\r\n\r\n", |head| {
            let line = head.lines().next().unwrap_or("").to_owned();
            Some(closing_answer("200 OK", &line))
        })
        .await;
        assert_eq!(
            answer,
            "HTTP/1.1 200 OK\r\ncontent-length: 23\r\nconnection: close\r\n\r\nGET /v1/models HTTP/1.1"
        );
    }

    #[tokio::test]
    async fn no_answer_closes_the_connection() {
        let answer = exchange(b"GET / HTTP/1.1\r\n\r\n", |_| None).await;
        assert_eq!(answer, "");
    }

    #[tokio::test]
    async fn a_blank_line_split_between_reads_is_found() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let reading = tokio::spawn(async move { read_head(&mut server).await });
        client
            .write_all(b"GET /a HTTP/1.1\r\nhost: t\r\n\r")
            .await
            .unwrap();
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!reading.is_finished(), "no blank line yet");
        client.write_all(b"\n").await.unwrap();
        assert_eq!(
            reading.await.unwrap().as_deref(),
            Some(&b"GET /a HTTP/1.1\r\nhost: t\r\n\r\n"[..])
        );
    }

    #[tokio::test]
    async fn a_head_that_never_ends_is_refused_not_read_for_ever() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let writer = tokio::spawn(async move {
            let line = [b'x'; 1000];
            for _ in 0..(MAX_HEAD / line.len() + 2) {
                if client.write_all(&line).await.is_err() {
                    return;
                }
            }
        });
        assert_eq!(read_head(&mut server).await, None);
        drop(server);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn a_peer_gone_before_the_blank_line_is_none() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        drop(client);
        assert_eq!(read_head(&mut server).await, None);
    }
}
