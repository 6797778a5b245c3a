//! The head's control socket over its whole life: bound before the head
//! waits for any member, so `opie status` reaches a head that is still
//! starting (and is answered `unavailable` until the arrays are up), then
//! answered by the head's handler once it serves, and closed at the stop.

use std::sync::{Arc, RwLock};

use control::{
    ControlError, Handler, Peer, Reply, Request, Server, ServerConfig, ServerError, Tasks,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::info;

use crate::config::HeadConfig;

/// The handler until the head serves: none yet, then the head's.
#[derive(Default)]
struct Switch {
    inner: RwLock<Option<Arc<dyn Handler>>>,
}

#[async_trait::async_trait]
impl Handler for Switch {
    async fn handle(&self, request: Request, peer: Peer) -> Result<Reply, ControlError> {
        let handler = self.inner.read().unwrap_or_else(|p| p.into_inner()).clone();
        match handler {
            Some(h) => h.handle(request, peer).await,
            None => Err(ControlError::Unavailable(
                "the head is still bringing its arrays up (waiting for members: see its log); retry once it serves".into(),
            )),
        }
    }
}

/// The control socket of a running head.
pub struct ControlSocket {
    switch: Arc<Switch>,
    tasks: Tasks,
    stop: oneshot::Sender<()>,
    served: JoinHandle<()>,
}

impl ControlSocket {
    /// Binds `control::socket_path(data_dir)` of `cfg` and serves it.
    pub fn start(cfg: &HeadConfig) -> Result<ControlSocket, ServerError> {
        let switch = Arc::new(Switch::default());
        let tasks = Tasks::default();
        let server = Server::bind(
            &control::socket_path(&cfg.data_dir),
            ServerConfig::default(),
            switch.clone(),
            tasks.clone(),
        )?;
        info!(socket = %server.path().display(), "control socket");
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(server.serve(async {
            let _ = stopped.await;
        }));
        Ok(ControlSocket {
            switch,
            tasks,
            stop,
            served,
        })
    }

    /// The registry the server answers `task.*` from.
    pub fn tasks(&self) -> Tasks {
        self.tasks.clone()
    }

    /// From now on `handler` answers.
    pub fn ready(&self, handler: Arc<dyn Handler>) {
        *self.switch.inner.write().unwrap_or_else(|p| p.into_inner()) = Some(handler);
    }

    /// Closes the socket (removing it) and every connection.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.served.await;
    }
}
