//! A minimal HTTP/1.1 client on hyper's connection API: one keep-alive connection per worker,
//! requests sent one at a time.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{CONNECTION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Why a request got no HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TCP connection could not be made.
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// The connection failed during the exchange (reset, closed, protocol error).
    #[error("io: {0}")]
    Io(#[from] hyper::Error),
    /// No answer within the timeout.
    #[error("timed out")]
    Timeout,
}

impl ClientError {
    /// A short label for the error counters.
    pub fn label(&self) -> &'static str {
        match self {
            ClientError::Connect(_) => "connect",
            ClientError::Io(_) => "io",
            ClientError::Timeout => "timeout",
        }
    }
}

/// One keep-alive HTTP/1.1 connection.
#[derive(Debug)]
pub struct Connection {
    addr: SocketAddr,
    host: HeaderValue,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Connection {
    /// A connection to `addr`, opened on first use (and again after a failure).
    pub fn new(addr: SocketAddr) -> Self {
        let host = HeaderValue::from_str(&addr.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        Self {
            addr,
            host,
            sender: None,
        }
    }

    async fn sender(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, ClientError> {
        if let Some(sender) = &self.sender {
            if sender.is_closed() {
                self.sender = None;
            }
        }
        if self.sender.is_none() {
            let stream = TcpStream::connect(self.addr)
                .await
                .map_err(ClientError::Connect)?;
            let _ = stream.set_nodelay(true);
            let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            self.sender = Some(sender);
        }
        match self.sender.as_mut() {
            Some(sender) => Ok(sender),
            None => Err(ClientError::Timeout),
        }
    }

    /// Sends one request and reads the whole answer: `(status, body)`. On an error the
    /// connection is dropped and the next request opens a new one.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        content_type: Option<&'static str>,
        body: Bytes,
        timeout: Duration,
    ) -> Result<(u16, Bytes), ClientError> {
        let result = tokio::time::timeout(timeout, async {
            let host = self.host.clone();
            let sender = self.sender().await?;
            sender.ready().await?;
            let mut request = Request::builder()
                .method(method)
                .uri(path)
                .header(HOST, host);
            if let Some(content_type) = content_type {
                request = request.header(CONTENT_TYPE, content_type);
            }
            let request = request
                .body(Full::new(body))
                .map_err(|_| ClientError::Timeout)?;
            let response = sender.send_request(request).await?;
            let status = response.status().as_u16();
            let closes = response
                .headers()
                .get(CONNECTION)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, ClientError>((status, body, closes))
        })
        .await;
        match result {
            Ok(Ok((status, body, closes))) => {
                if closes {
                    self.sender = None;
                }
                Ok((status, body))
            }
            Ok(Err(error)) => {
                self.sender = None;
                Err(error)
            }
            Err(_) => {
                self.sender = None;
                Err(ClientError::Timeout)
            }
        }
    }
}

/// One `GET` on a fresh connection.
pub async fn get(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<(u16, Bytes), ClientError> {
    Connection::new(addr)
        .request(Method::GET, path, None, Bytes::new(), timeout)
        .await
}

/// Splits `http://host:port[/...]` into a socket address (resolved) and the base path.
pub async fn resolve(url: &str) -> Result<(SocketAddr, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    let authority = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let addr = tokio::net::lookup_host(&authority)
        .await
        .map_err(|e| format!("{url}: {e}"))?
        .next()
        .ok_or_else(|| format!("{url}: no address"))?;
    Ok((addr, path.to_owned()))
}
