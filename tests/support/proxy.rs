//! A TCP proxy that can take a server away and give it back: the way tests stop PostgreSQL or
//! Redis for one service without stopping them for every other test on the machine.
//!
//! Two ways of going away: [`FaultProxy::cut`] resets open connections and refuses new ones (a
//! server that is down), [`FaultProxy::swallow`] accepts connections and reads what is sent
//! without ever answering or forwarding, open connections included (a network partition: the
//! usual cloud failure, where nothing is refused and nothing comes back).
#![allow(dead_code)] // Shared by several test binaries, each using part of it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Forward,
    Swallow,
}

pub struct FaultProxy {
    address: SocketAddr,
    target: SocketAddr,
    mode: watch::Sender<Mode>,
    accepting: Mutex<Option<JoinHandle<()>>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards every connection to `target`.
    pub async fn start(target: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = FaultProxy {
            address: listener.local_addr().unwrap(),
            target,
            mode: watch::channel(Mode::Forward).0,
            accepting: Mutex::default(),
            connections: Arc::default(),
        };
        proxy.serve(listener);
        proxy
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    fn serve(&self, listener: TcpListener) {
        let (target, connections, mode) =
            (self.target, self.connections.clone(), self.mode.clone());
        let accepting = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let connection = tokio::spawn(relay(inbound, target, mode.subscribe()));
                connections.lock().unwrap().push(connection);
            }
        });
        *self.accepting.lock().unwrap() = Some(accepting);
    }

    /// The server is gone: open connections are cut, new ones refused.
    pub fn cut(&self) {
        if let Some(accepting) = self.accepting.lock().unwrap().take() {
            accepting.abort();
        }
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    /// A partition: connections, open and new, are accepted and read, and nothing is forwarded
    /// or answered.
    pub async fn swallow(&self) {
        self.mode.send_replace(Mode::Swallow);
        if self.accepting.lock().unwrap().is_none() {
            self.listen().await;
        }
    }

    /// The server is back, on the same address, for new connections. Connections swallowed
    /// meanwhile stay swallowed, as after a partition whose far side forgot them: whoever still
    /// waits on one waits forever, unless it gave up on it.
    pub async fn restore(&self) {
        self.mode.send_replace(Mode::Forward);
        if self.accepting.lock().unwrap().is_none() {
            self.listen().await;
        }
    }

    async fn listen(&self) {
        let listener = loop {
            match TcpListener::bind(self.address).await {
                Ok(listener) => break listener,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        };
        self.serve(listener);
    }
}

/// Forwards one connection while the mode says so, then swallows it.
async fn relay(mut inbound: TcpStream, target: SocketAddr, mut mode: watch::Receiver<Mode>) {
    if *mode.borrow_and_update() == Mode::Forward {
        let Ok(mut outbound) = TcpStream::connect(target).await else {
            return;
        };
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => return,
            _ = mode.wait_for(|mode| *mode == Mode::Swallow) => {}
        }
    }
    let mut discarded = vec![0_u8; 16 * 1024];
    while let Ok(read) = inbound.read(&mut discarded).await {
        if read == 0 {
            return;
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.cut();
    }
}
