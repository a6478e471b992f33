//! A master out of service: its store failed under it (a full disk, an I/O
//! error), so Raft stopped. Until the store opens again it still answers
//! on its address, every call of every service with `UNAVAILABLE` naming
//! the failure: clients and chunkservers move on to the other masters at
//! once (a closed port would cost them a connect error each, and a client
//! whose every master is out would end with no word of why), and an
//! operator's `gfs cluster status` says what happened.

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use gfs_proto::wire::master::{
    master_admin_server, master_chunkserver_server, master_meta_server, raft_server,
};
use gfs_proto::wire::{ErrorKind, error};
use tonic::body::Body;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;
use tonic::transport::server::TcpIncoming;

/// A gRPC service name, as a type (tonic routes by `NamedService::NAME`).
trait Named {
    const NAME: &'static str;
}

macro_rules! named {
    ($($ty:ident = $module:ident),*) => {$(
        #[derive(Clone, Copy, Debug)]
        struct $ty;
        impl Named for $ty {
            const NAME: &'static str = $module::SERVICE_NAME;
        }
    )*};
}

named!(
    Meta = master_meta_server,
    Chunkservers = master_chunkserver_server,
    Admin = master_admin_server,
    Raft = raft_server
);

/// Answers every call of service `N` with `UNAVAILABLE` and `why`.
#[derive(Debug)]
struct Refuse<N> {
    why: Arc<str>,
    service: PhantomData<N>,
}

impl<N> Clone for Refuse<N> {
    fn clone(&self) -> Self {
        Self {
            why: self.why.clone(),
            service: PhantomData,
        }
    }
}

impl<N: Named> NamedService for Refuse<N> {
    const NAME: &'static str = N::NAME;
}

impl<N, B> Service<http::Request<B>> for Refuse<N> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<B>) -> Self::Future {
        ready(Ok(error(ErrorKind::Unavailable, &*self.why).into_http()))
    }
}

fn refuse<N>(why: &Arc<str>) -> Refuse<N> {
    Refuse {
        why: why.clone(),
        service: PhantomData,
    }
}

/// Answers every call on `listen` with `UNAVAILABLE` and `why` for `wait`,
/// or until `shutdown` resolves (then `Ok(true)`). The port is released
/// when this returns.
pub async fn refuse_for<F>(
    listen: SocketAddr,
    why: &str,
    wait: Duration,
    shutdown: std::pin::Pin<&mut F>,
) -> Result<bool, String>
where
    F: Future<Output = ()>,
{
    let listener = super::bind(listen).await?;
    let why: Arc<str> = why.into();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serve = tonic::transport::Server::builder()
        .add_service(refuse::<Meta>(&why))
        .add_service(refuse::<Chunkservers>(&why))
        .add_service(refuse::<Admin>(&why))
        .add_service(refuse::<Raft>(&why))
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            async {
                let _ = stop_rx.await;
            },
        );
    let mut server = tokio::spawn(serve);
    let stopped = tokio::select! {
        () = shutdown => true,
        () = tokio::time::sleep(wait) => false,
    };
    let _ = stop_tx.send(());
    // How a server that only refuses ended matters to no one.
    let _ = super::stop_server(&mut server).await;
    Ok(stopped)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use gfs_proto::wire::master::master_admin_client::MasterAdminClient;
    use gfs_proto::wire::master::master_meta_client::MasterMetaClient;
    use gfs_proto::wire::master::{CreateRequest, Empty};
    use gfs_proto::wire::{ErrorKind, detail_of};

    /// Every service's calls get `UNAVAILABLE` with the reason, as a
    /// detail a client reads; the port is free again afterwards.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_call_is_refused_with_the_reason() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let why = "master 7 is out of service: No space left on device";
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let refusing = tokio::spawn(async move {
            let stop = std::pin::pin!(async {
                let _ = stop_rx.await;
            });
            super::refuse_for(addr, why, Duration::from_secs(30), stop).await
        });
        let url = format!("http://{addr}");
        let mut tries = 0;
        let (mut admin, mut meta) = loop {
            match (
                MasterAdminClient::connect(url.clone()).await,
                MasterMetaClient::connect(url.clone()).await,
            ) {
                (Ok(a), Ok(m)) => break (a, m),
                _ if tries < 100 => tries += 1,
                (a, m) => panic!("no server: {:?} {:?}", a.err(), m.err()),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        for _ in 0..3 {
            let s = admin.status(Empty {}).await.expect_err("refused");
            assert_eq!(detail_of(&s).kind(), ErrorKind::Unavailable, "{s:?}");
            assert_eq!(s.message(), why);
            let req = CreateRequest {
                path: "/a".repeat(5000),
                ..CreateRequest::default()
            };
            let s = meta.create(req).await.expect_err("refused");
            assert_eq!(detail_of(&s).kind(), ErrorKind::Unavailable, "{s:?}");
        }
        let _ = stop_tx.send(());
        assert_eq!(refusing.await.expect("join"), Ok(true));
        std::net::TcpListener::bind(addr).expect("the port is free again");
    }
}
