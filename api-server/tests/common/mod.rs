//! Shared by the API server's integration tests: the server in process on ports of its own,
//! and the result the real worker's `checksum` processor stores.
// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::net::SocketAddr;

use qwp_api_server::settings::Settings;
use qwp_api_server::{AppState, Listeners, serve};
use qwp_jobs::aws::AwsClients;
use qwp_jobs::testing::TestStack;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The server in this process, its three listeners bound to ports the OS picked.
pub struct Server {
    pub base: String,
    pub admin: String,
    pub internal: SocketAddr,
    pub state: AppState,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// `tweak` edits the settings; `prepare` sees the state before the first request.
    pub async fn start_with(
        stack: &TestStack,
        clients: AwsClients,
        tweak: impl FnOnce(&mut Settings),
        prepare: impl FnOnce(&AppState),
    ) -> Server {
        let mut settings = Settings::with_config(stack.config.clone());
        tweak(&mut settings);
        let state = AppState::new(settings, clients);
        prepare(&state);
        let public = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let internal = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", public.local_addr().unwrap());
        let admin_base = format!("http://{}", admin.local_addr().unwrap());
        let internal_addr = internal.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let listeners = Listeners {
            public,
            admin,
            internal,
        };
        let task = tokio::spawn(serve(listeners, state.clone(), async move {
            let _ = stopped.await;
        }));
        Server {
            base,
            admin: admin_base,
            internal: internal_addr,
            state,
            client: reqwest::Client::new(),
            stop: Some(stop),
            task,
        }
    }

    /// Stops the server and waits for it to finish serving.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.unwrap().unwrap();
    }
}

/// The result value of the `checksum` processor for `data`.
pub fn checksum_of(data: &[u8]) -> Value {
    json!({ "bytes": data.len(), "sha256": format!("{:x}", Sha256::digest(data)) })
}
