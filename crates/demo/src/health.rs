//! `shardq-demo health URL`: a container healthcheck for images without a
//! shell or curl, and the small HTTP GET the other commands use for admin
//! endpoints.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET path` from `host:port` (HTTP/1.1, `Connection: close`, with
/// `SHARDQ_ADMIN_TOKEN` as a bearer token when set): the status code and
/// the body.
pub async fn get(addr: &str, path: &str) -> io::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    // The admin token, when the nodes want one (SHARDQ_ADMIN_TOKEN).
    let authorization = std::env::var("SHARDQ_ADMIN_TOKEN")
        .ok()
        .filter(|token| !token.is_empty())
        .map_or(String::new(), |token| {
            format!("Authorization: Bearer {token}\r\n")
        });
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{authorization}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.take(1 << 20).read_to_end(&mut response).await?;
    let response = String::from_utf8_lossy(&response);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an HTTP response"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Splits `http://host:port/path` into `host:port` and `/path`.
pub fn split_url(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(format!("{url}: no host"));
    }
    let authority = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Ok((authority, path.to_owned()))
}

/// Checks `url` answers 200 within 5 s.
pub async fn run(url: &str) -> Result<(), String> {
    let (addr, path) = split_url(url)?;
    match tokio::time::timeout(Duration::from_secs(5), get(&addr, &path)).await {
        Ok(Ok((200, _))) => Ok(()),
        Ok(Ok((status, body))) => Err(format!("{url}: HTTP {status}: {}", body.trim())),
        Ok(Err(error)) => Err(format!("{url}: {error}")),
        Err(_) => Err(format!("{url}: no answer within 5 s")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            split_url("http://consumer-0:9100/healthz").unwrap(),
            ("consumer-0:9100".into(), "/healthz".into())
        );
        assert_eq!(split_url("http://h").unwrap(), ("h:80".into(), "/".into()));
        assert!(split_url("https://h/x").is_err());
    }
}
