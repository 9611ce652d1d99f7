//! The bare pass-through proxy: the least any HTTP gateway must do (accept, forward over a
//! pooled keep-alive connection, stream the answer back). Measured next to aigw, it is the
//! physical floor of a gateway on this machine.

use http::{Request, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use tokio::net::TcpListener;

/// Serve on `listen`, forwarding every request to `upstream` (`http://host:port`); prints the
/// bound address as `listening on <addr>` for the parent process.
pub async fn run(listen: SocketAddr, upstream: String) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    println!("listening on {}", listener.local_addr()?);
    // Without TCP_NODELAY a fresh upstream connection can hold a request's body back for the
    // model server's delayed ACK (~40 ms); aigw sets it on both legs, and so does this baseline.
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<_, Incoming> = Client::builder(TokioExecutor::new()).build(connector);
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let (client, upstream) = (client.clone(), upstream.clone());
        tokio::spawn(async move {
            let service = service_fn(move |mut request: Request<Incoming>| {
                let client = client.clone();
                let target = format!("{upstream}{}", request.uri().path_and_query().map_or("/", |p| p.as_str()));
                async move {
                    *request.uri_mut() = target.parse()?;
                    request.headers_mut().remove(header::HOST);
                    anyhow::Ok(client.request(request).await?)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
