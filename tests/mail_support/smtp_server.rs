//! The SMTP server behind [`super::SmtpSink`]: a small tokio server on a
//! thread of its own (its own runtime, so it serves `#[test]`s, both tokio
//! flavours and `licensync` child processes alike), stopped when dropped.
//!
//! It speaks what lettre and the fault tests need, modelled on the aiosmtpd
//! server the tests used before: EHLO/HELO, STARTTLS (required when TLS is
//! on), AUTH PLAIN and LOGIN (required when a user is set, offered only
//! after STARTTLS when TLS is on), MAIL, RCPT, DATA, RSET, NOOP, QUIT. The
//! fault modes are counters in [`State`]: see [`super::SinkOptions`]. The
//! protocol itself is in `smtp_session.rs`.

use std::net::TcpListener as StdListener;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};

use super::smtp_session::session;
use super::{Received, SinkStats};

/// How the server behaves; fixed for its lifetime.
pub struct Config {
    /// STARTTLS offered and required.
    pub tls: Option<TlsAcceptor>,
    /// AUTH required with this user and password.
    pub auth: Option<(String, String)>,
    /// Each DATA is answered this much later.
    pub delay_data: Option<Duration>,
}

/// What the sessions share: the mail, the figures and the fault counters.
#[derive(Default)]
pub struct State {
    /// Accepted messages, in order of arrival.
    pub received: Vec<Received>,
    pub stats: SinkStats,
    /// Messages between the end of their DATA and its answer, now.
    pub in_data: u32,
    /// Connections still to greet with 421 and close.
    pub refusals_left: u32,
    /// Messages still to refuse at DATA with 451.
    pub deferrals_left: u32,
    /// Messages still to store and then answer by dropping the connection.
    pub drops_left: u32,
}

/// A TLS acceptor for a DER certificate and its PKCS#8 key.
pub fn tls_acceptor(cert: CertificateDer<'static>, key: Vec<u8>) -> TlsAcceptor {
    let config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], PrivatePkcs8KeyDer::from(key).into())
        .unwrap();
    TlsAcceptor::from(Arc::new(config))
}

/// The running server; dropping it closes the listener and every session.
pub struct Server {
    state: Arc<Mutex<State>>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Serves `listener` (already bound, so its port is known) on a new thread.
    pub fn start(listener: StdListener, config: Config, state: State) -> Server {
        listener.set_nonblocking(true).unwrap();
        let state = Arc::new(Mutex::new(state));
        let (shutdown, stop) = oneshot::channel();
        let (config, shared) = (Arc::new(config), state.clone());
        let thread = std::thread::Builder::new()
            .name("smtp-sink".to_owned())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(serve(listener, config, shared, stop));
                // Dropping the runtime drops the sessions: their sockets close.
            })
            .unwrap();
        Server {
            state,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.shutdown.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

pub fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn serve(listener: StdListener, config: Arc<Config>, state: Arc<Mutex<State>>, mut stop: oneshot::Receiver<()>) {
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    loop {
        tokio::select! {
            // Sent or dropped: either way the sink is gone.
            _ = &mut stop => return,
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    tokio::spawn(session(stream, config.clone(), state.clone()));
                }
            }
        }
    }
}

/// Counts a connection as open for as long as it lives.
pub struct OpenConnection(Arc<Mutex<State>>);

impl OpenConnection {
    pub fn new(state: &Arc<Mutex<State>>) -> Self {
        let mut s = lock(state);
        s.stats.connections += 1;
        s.stats.open += 1;
        s.stats.max_open = s.stats.max_open.max(s.stats.open);
        OpenConnection(state.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        lock(&self.0).stats.open -= 1;
    }
}

/// Counts a message as in DATA for as long as it lives.
pub struct InData<'a>(&'a Mutex<State>);

impl<'a> InData<'a> {
    pub fn new(state: &'a Mutex<State>) -> Self {
        let mut s = lock(state);
        s.in_data += 1;
        s.stats.max_in_data = s.stats.max_in_data.max(s.in_data);
        InData(state)
    }
}

impl Drop for InData<'_> {
    fn drop(&mut self) {
        lock(self.0).in_data -= 1;
    }
}
