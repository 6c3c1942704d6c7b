//! A TCP proxy in the test process between pods and LocalStack, which the outage test
//! switches off: while down it refuses new connections and cuts open ones, which is what a
//! stopped LocalStack looks like from a pod. (Stopping the shared LocalStack itself would
//! lose every other test's queues and buckets.)

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct OutageProxy {
    pub port: u16,
    up: Arc<watch::Sender<bool>>,
    task: JoinHandle<()>,
}

impl OutageProxy {
    /// Listens on all interfaces (pods reach it at the host address) and forwards to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("0.0.0.0:0")
            .await
            .expect("bind the outage proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let (up, _) = watch::channel(true);
        let up = Arc::new(up);
        let state = up.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                if !*state.borrow() {
                    drop(inbound);
                    continue;
                }
                let mut down = state.subscribe();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut inbound, mut outbound) = (inbound, outbound);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = down.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        OutageProxy { port, up, task }
    }

    pub fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }
}

impl Drop for OutageProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
