//! The runner's only way out over HTTP. FFmpeg follows redirects and HLS playlists to any
//! address, and has no hook to refuse one; pointed at this loopback proxy (`http_proxy`), every
//! connection it opens (the camera, a redirect's target, each segment, HTTPS through CONNECT)
//! is resolved and checked against the destination policy here before it is made.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use vap_core::destination::DestinationPolicy;

/// A request head larger than this is refused: FFmpeg's are a few hundred bytes.
const MAX_HEAD_BYTES: usize = 16 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Bound before the runtime starts, so FFmpeg's environment can name it.
pub struct EgressProxy {
    listener: std::net::TcpListener,
}

impl EgressProxy {
    pub fn bind() -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        Ok(Self { listener })
    }

    /// The value for `http_proxy`.
    pub fn url(&self) -> String {
        match self.listener.local_addr() {
            Ok(a) => format!("http://{a}/"),
            Err(_) => String::new(),
        }
    }

    /// Serves until `shutdown`; each connection is its own task.
    pub async fn serve(self, policy: Arc<DestinationPolicy>, shutdown: CancellationToken) {
        let Ok(listener) = TcpListener::from_std(self.listener) else { return };
        let mut connections = tokio::task::JoinSet::new();
        loop {
            while connections.try_join_next().is_some() {}
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.cancelled() => return,
            };
            match accepted {
                Ok((client, _)) => {
                    let policy = Arc::clone(&policy);
                    connections.spawn(async move {
                        if let Err(reason) = relay(client, policy).await {
                            tracing::warn!(reason, "egress refused");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "egress accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// One client connection: read its first request head, check where it goes, connect, then
/// pass bytes both ways. Later requests on the same connection go to the same checked place.
async fn relay(mut client: TcpStream, policy: Arc<DestinationPolicy>) -> Result<(), String> {
    let head = read_head(&mut client).await?;
    let request = match parse_head(&head) {
        Ok(r) => r,
        Err(reason) => {
            let _ = client.write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n").await;
            return Err(reason);
        }
    };
    let (host, port) = (request.host.clone(), request.port);
    let addresses = match tokio::task::spawn_blocking(move || policy.resolve(&host, port)).await {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => {
            let _ = client.write_all(b"HTTP/1.1 403 Forbidden\r\nConnection: close\r\n\r\n").await;
            return Err(e.to_string());
        }
        Err(e) => return Err(e.to_string()),
    };
    let mut upstream = connect_any(&addresses).await.map_err(|e| format!("{}:{}: {e}", request.host, request.port))?;
    if request.connect {
        client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await.map_err(|e| e.to_string())?;
    } else {
        upstream.write_all(&request.forward).await.map_err(|e| e.to_string())?;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    Ok(())
}

async fn connect_any(addresses: &[SocketAddr]) -> std::io::Result<TcpStream> {
    let mut last = std::io::Error::other("no address");
    for a in addresses {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(a)).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => last = e,
            Err(_) => last = std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
        }
    }
    Err(last)
}

/// Reads up to the end of the head (`\r\n\r\n`), keeping what follows it.
async fn read_head(client: &mut TcpStream) -> Result<Vec<u8>, String> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_HEAD_BYTES {
            return Err("request head too large".into());
        }
        let n = client.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("client closed before a request".into());
        }
        head.extend_from_slice(&chunk[..n]);
    }
    Ok(head)
}

#[derive(Debug, PartialEq)]
struct ProxyRequest {
    connect: bool,
    host: String,
    port: u16,
    /// For a plain request: the bytes to send upstream (request line in origin form).
    forward: Vec<u8>,
}

fn parse_head(head: &[u8]) -> Result<ProxyRequest, String> {
    let line_end = head.windows(2).position(|w| w == b"\r\n").ok_or("no request line")?;
    let line = std::str::from_utf8(&head[..line_end]).map_err(|_| "request line is not UTF-8")?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("bad request line '{line}'"));
    };
    if method == "CONNECT" {
        let (host, port) = split_authority(target, 443)?;
        return Ok(ProxyRequest { connect: true, host, port, forward: Vec::new() });
    }
    let url = url::Url::parse(target).map_err(|e| format!("'{target}': {e}"))?;
    if url.scheme() != "http" {
        return Err(format!("scheme '{}' is not proxied", url.scheme()));
    }
    let host = url.host_str().ok_or("no host")?.trim_start_matches('[').trim_end_matches(']').to_string();
    let port = url.port_or_known_default().unwrap_or(80);
    let mut origin = url.path().to_string();
    if let Some(q) = url.query() {
        origin.push('?');
        origin.push_str(q);
    }
    let mut forward = format!("{method} {origin} {version}").into_bytes();
    forward.extend_from_slice(&head[line_end..]);
    Ok(ProxyRequest { connect: false, host, port, forward })
}

fn split_authority(authority: &str, default_port: u16) -> Result<(String, u16), String> {
    let url = url::Url::parse(&format!("http://{authority}/")).map_err(|e| format!("'{authority}': {e}"))?;
    let host = url.host_str().ok_or("no host")?.trim_start_matches('[').trim_end_matches(']').to_string();
    Ok((host, url.port().unwrap_or(default_port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_request_goes_on_in_origin_form_with_its_headers_and_body() {
        let head = b"GET http://cam.example:8080/live.m3u8?a=1 HTTP/1.1\r\nHost: cam.example:8080\r\n\r\nbody";
        let r = parse_head(head).unwrap();
        assert_eq!((r.connect, r.host.as_str(), r.port), (false, "cam.example", 8080));
        assert_eq!(r.forward, b"GET /live.m3u8?a=1 HTTP/1.1\r\nHost: cam.example:8080\r\n\r\nbody");
        let r = parse_head(b"GET http://[::1]/x HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!((r.host.as_str(), r.port), ("::1", 80));
    }

    #[test]
    fn connect_names_its_destination_and_other_schemes_are_refused() {
        let r = parse_head(b"CONNECT cam.example:443 HTTP/1.1\r\nHost: cam.example:443\r\n\r\n").unwrap();
        assert_eq!((r.connect, r.host.as_str(), r.port), (true, "cam.example", 443));
        assert!(parse_head(b"GET file:///etc/passwd HTTP/1.1\r\n\r\n").is_err());
        assert!(parse_head(b"GET /relative HTTP/1.1\r\n\r\n").is_err());
        assert!(parse_head(b"GET  http://x/ HTTP/1.1\r\n\r\n").is_err());
    }
}
