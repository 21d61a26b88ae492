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

/// The most of a request body [`serve_heads`] reads before it answers.
const MAX_BODY: usize = 1024 * 1024;

/// Reads on from `sock` until `got`, which holds a whole head, also holds the body its
/// `content-length` announces (at most [`MAX_BODY`]). `None` when the peer closes first or a
/// read fails. A body without a `content-length` (chunked) is not waited for.
async fn read_body<R: AsyncRead + Unpin>(sock: &mut R, mut got: Vec<u8>) -> Option<Vec<u8>> {
    let end = got.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let announced = String::from_utf8_lossy(&got[..end])
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0)
        .min(MAX_BODY);
    let mut buf = [0u8; 4096];
    while got.len() < end + announced {
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    Some(got)
}

/// Serves `listener` until accepting fails or the returned task is aborted: on each connection
/// the request head is read ([`read_head`]; the connection is dropped if there is none), then
/// the body its `content-length` announces (closing a socket with unread input sends a reset
/// that can cut the answer off), and the head is given to `respond` as text (lossily decoded,
/// with whatever of the body came in the same reads); its answer is written and the connection
/// shut down, or, on `None`, the connection is closed without an answer.
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
                let head_len = head.len();
                let Some(request) = read_body(&mut sock, head).await else {
                    return;
                };
                if let Some(answer) = respond(&String::from_utf8_lossy(&request[..head_len])) {
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
    async fn the_announced_body_is_read_before_the_answer() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let head = b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nab".to_vec();
        let reading = tokio::spawn(async move { read_body(&mut server, head).await });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(
            !reading.is_finished(),
            "three bytes of the body are still to come"
        );
        client.write_all(b"cde").await.unwrap();
        assert_eq!(
            reading.await.unwrap().as_deref(),
            Some(&b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nabcde"[..])
        );
    }

    #[tokio::test]
    async fn a_huge_or_garbage_content_length_does_not_hold_the_answer_for_ever() {
        for length in ["99999999999999999999999", "-1", "lots"] {
            let (client, mut server) = tokio::io::duplex(1024);
            let head = format!("POST / HTTP/1.1\r\ncontent-length: {length}\r\n\r\n");
            let reading = read_body(&mut server, head.clone().into_bytes());
            // Unparsable: nothing is waited for. Too large to parse: the same.
            assert_eq!(reading.await, Some(head.into_bytes()), "{length}");
            drop(client);
        }
        // Parsable but past the bound: read up to the bound, then a peer gone is `None`.
        let (client, mut server) = tokio::io::duplex(1024);
        drop(client);
        let head = b"POST / HTTP/1.1\r\ncontent-length: 1000000000\r\n\r\n".to_vec();
        assert_eq!(read_body(&mut server, head).await, None);
    }

    #[tokio::test]
    async fn a_peer_gone_before_the_blank_line_is_none() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        drop(client);
        assert_eq!(read_head(&mut server).await, None);
    }
}
