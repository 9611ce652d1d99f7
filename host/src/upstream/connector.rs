//! TCP connector that resolves once, checks every address against the egress policy and connects
//! to the checked address itself, so DNS rebinding cannot slip a second answer past the check.

use super::egress::{EgressError, EgressPolicy};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;

/// Connection failure, carrying the egress refusal when that was the cause.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// The policy refused the destination before any connection attempt.
    #[error(transparent)]
    Refused(#[from] EgressError),
    /// The URI has no host.
    #[error("the URL has no host")]
    NoHost,
    /// Resolution or connection failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// No address answered within the connect timeout.
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
}

/// See the module documentation.
#[derive(Clone)]
pub(super) struct EgressConnector {
    pub(crate) policy: Arc<EgressPolicy>,
    pub(crate) connect_timeout: Duration,
}

impl tower_service::Service<http::Uri> for EgressConnector {
    type Response = TokioIo<TcpStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect(uri).await })
    }
}

impl EgressConnector {
    async fn connect(self, uri: http::Uri) -> Result<TokioIo<TcpStream>, ConnectError> {
        let addrs = resolve(&uri).await?;
        // Every address must pass: a name that resolves partly to a forbidden range is refused.
        for addr in &addrs {
            self.policy.check(addr.ip())?;
        }
        let stream = connect_any(&addrs, self.connect_timeout).await?;
        // Small request/response writes must not wait for delayed ACKs.
        stream.set_nodelay(true)?;
        Ok(TokioIo::new(stream))
    }
}

/// The addresses `uri`'s host stands for, resolved once: the ones checked are the ones
/// connected to. Never empty.
pub(crate) async fn resolve(uri: &http::Uri) -> Result<Vec<SocketAddr>, ConnectError> {
    let host = uri.host().ok_or(ConnectError::NoHost)?;
    let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
    let addrs: Vec<SocketAddr> = match super::egress::literal_address(host) {
        // Decimal, octal and hex spellings are read here, not left to the resolver.
        Some(ip) => vec![SocketAddr::new(ip?, port)],
        None => tokio::net::lookup_host((host, port)).await?.collect(),
    };
    if addrs.is_empty() {
        return Err(EgressError::Unresolved(host.to_string()).into());
    }
    Ok(addrs)
}

/// A connection to the first of `addrs` that accepts one, all within `timeout`.
pub(crate) async fn connect_any(addrs: &[SocketAddr], timeout: Duration) -> Result<TcpStream, ConnectError> {
    let attempt = async {
        let mut last_error = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| std::io::Error::other("no address to connect to")))
    };
    Ok(tokio::time::timeout(timeout, attempt).await.map_err(|_| ConnectError::Timeout(timeout))??)
}
