//! Proves that the Redis harness of hale-testkit gives tests what they rely on: a real server
//! on its own loopback port with persistence off, that can be killed and brought back on the
//! same port, and that goes away with its handle. The coordination suites build on these
//! properties, so they are checked here once, against the real `redis-server`.

use std::io::ErrorKind;
use std::time::Duration;

use hale_testkit::{RedisServer, eventually};
use redis::AsyncCommands as _;
use tokio::net::TcpStream;

/// One configuration value of the server, as `CONFIG GET` reports it.
async fn config_get(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
) -> anyhow::Result<String> {
    let pair: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg(key)
        .query_async(conn)
        .await?;
    match <[String; 2]>::try_from(pair) {
        Ok([name, value]) if name == key => Ok(value),
        other => anyhow::bail!("CONFIG GET {key} returned {other:?}"),
    }
}

/// PING over an existing connection.
async fn ping(conn: &mut redis::aio::MultiplexedConnection) -> redis::RedisResult<String> {
    redis::cmd("PING").query_async(conn).await
}

#[tokio::test]
async fn serves_commands_with_persistence_off_on_a_private_loopback_port() {
    let server = RedisServer::start().await.unwrap();
    assert_ne!(server.port(), 6379, "must not collide with a system Redis");
    assert_eq!(server.url(), format!("redis://127.0.0.1:{}", server.port()));

    let mut conn = server.client().await.unwrap();
    let () = conn.set("hale:test:key", "value").await.unwrap();
    let value: String = conn.get("hale:test:key").await.unwrap();
    assert_eq!(value, "value");

    assert_eq!(config_get(&mut conn, "save").await.unwrap(), "");
    assert_eq!(config_get(&mut conn, "appendonly").await.unwrap(), "no");
    assert_eq!(config_get(&mut conn, "bind").await.unwrap(), "127.0.0.1");
    assert_eq!(
        config_get(&mut conn, "port").await.unwrap(),
        server.port().to_string()
    );
}

/// Loopback covers all of 127.0.0.0/8 on Linux, so a server bound to 127.0.0.1 alone must
/// refuse a connection to 127.0.0.2 on the same port.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn is_reachable_on_127_0_0_1_only() {
    let server = RedisServer::start().await.unwrap();
    TcpStream::connect(("127.0.0.1", server.port()))
        .await
        .unwrap();
    let err = TcpStream::connect(("127.0.0.2", server.port()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
}

#[tokio::test]
async fn stop_takes_it_away_and_restart_brings_it_back_empty_on_the_same_port() {
    let mut server = RedisServer::start().await.unwrap();
    let port = server.port();
    let mut conn = server.client().await.unwrap();
    assert_eq!(ping(&mut conn).await.unwrap(), "PONG");
    let () = conn.set("hale:test:survives", "no").await.unwrap();

    server.stop().await.unwrap();
    assert!(!server.is_running());
    assert!(
        ping(&mut conn).await.is_err(),
        "an open connection must fail once Redis is killed"
    );
    assert!(
        server.client().await.is_err(),
        "a new connection must be refused while Redis is stopped"
    );

    server.restart().await.unwrap();
    assert!(server.is_running());
    assert_eq!(server.port(), port);
    let mut conn = server.client().await.unwrap();
    assert_eq!(ping(&mut conn).await.unwrap(), "PONG");
    let gone: Option<String> = conn.get("hale:test:survives").await.unwrap();
    assert_eq!(
        gone, None,
        "nothing may survive a restart: persistence is off"
    );
}

#[tokio::test]
async fn dropping_the_handle_frees_the_port() {
    let server = RedisServer::start().await.unwrap();
    let port = server.port();
    drop(server);
    eventually(
        Duration::from_secs(5),
        Duration::from_millis(50),
        || async {
            match TcpStream::connect(("127.0.0.1", port)).await {
                Err(err) if err.kind() == ErrorKind::ConnectionRefused => Ok(()),
                Err(err) => Err(anyhow::anyhow!("unexpected connect error: {err}")),
                Ok(_) => Err(anyhow::anyhow!("port {port} still accepts connections")),
            }
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn servers_started_together_get_distinct_ports() {
    let (a, b) = tokio::join!(RedisServer::start(), RedisServer::start());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_ne!(a.port(), b.port());
    let mut conn_a = a.client().await.unwrap();
    let mut conn_b = b.client().await.unwrap();
    let () = conn_a.set("k", "a").await.unwrap();
    let in_b: Option<String> = conn_b.get("k").await.unwrap();
    assert_eq!(in_b, None, "the two servers must be independent");
}
