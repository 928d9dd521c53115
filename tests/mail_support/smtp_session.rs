//! One SMTP session of the test server (see `smtp_server.rs`): the
//! commands, STARTTLS, AUTH, and where the fault modes strike.

use std::io;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::Received;
use super::smtp_server::{Config, InData, OpenConnection, State, lock};

const HOSTNAME: &str = "licensync-test-sink";

/// Commands a session may give before STARTTLS when TLS is required.
const ALLOWED_BEFORE_STARTTLS: [&str; 4] = ["NOOP", "EHLO", "STARTTLS", "QUIT"];

/// A stream before or after STARTTLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Conn = BufReader<Box<dyn Io>>;

pub async fn session(mut stream: TcpStream, config: Arc<Config>, state: Arc<Mutex<State>>) {
    let refused = {
        let mut s = lock(&state);
        let refused = s.refusals_left > 0;
        s.refusals_left -= u32::from(refused);
        refused
    };
    if refused {
        // Refused connections are not counted in the stats.
        let _ = stream
            .write_all(b"421 4.3.2 Service not available, closing transmission channel\r\n")
            .await;
        return;
    }
    let _open = OpenConnection::new(&state);
    let mut session = Session {
        config,
        state,
        tls: false,
        greeted: false,
        login: None,
        mail_from: None,
        rcpt_tos: Vec::new(),
    };
    // An I/O error ends the session like a client that went away.
    let _ = session.run(BufReader::new(Box::new(stream))).await;
}

/// What the session does after a command.
enum Next {
    Continue,
    /// Close the connection (QUIT, a dropped answer, a client gone mid-DATA).
    Close,
}

struct Session {
    config: Arc<Config>,
    state: Arc<Mutex<State>>,
    tls: bool,
    greeted: bool,
    /// The user that authenticated.
    login: Option<String>,
    mail_from: Option<String>,
    rcpt_tos: Vec<String>,
}

async fn send(io: &mut Conn, line: &str) -> io::Result<()> {
    io.write_all(format!("{line}\r\n").as_bytes()).await?;
    io.flush().await
}

/// The next line without its line ending; `None` at the end of the stream.
async fn read_line(io: &mut Conn) -> io::Result<Option<String>> {
    let mut line = Vec::new();
    if io.read_until(b'\n', &mut line).await? == 0 {
        return Ok(None);
    }
    while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        line.pop();
    }
    Ok(Some(String::from_utf8_lossy(&line).into_owned()))
}

/// The address in `<...>` after `keyword` (`FROM:`, `TO:`), parameters ignored.
fn path_argument(arg: &str, keyword: &str) -> Option<String> {
    let (head, rest) = arg.split_at_checked(keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = rest.trim_start().strip_prefix('<')?;
    Some(rest[..rest.find('>')?].to_owned())
}

impl Session {
    async fn run(&mut self, mut io: Conn) -> io::Result<()> {
        send(&mut io, &format!("220 {HOSTNAME} ESMTP licensync test sink")).await?;
        while let Some(line) = read_line(&mut io).await? {
            let (verb, arg) = line.split_once(' ').unwrap_or((&line, ""));
            let (verb, arg) = (verb.to_ascii_uppercase(), arg.trim());
            if self.config.tls.is_some() && !self.tls && !ALLOWED_BEFORE_STARTTLS.contains(&verb.as_str()) {
                send(&mut io, "530 Must issue a STARTTLS command first").await?;
                continue;
            }
            if verb == "STARTTLS" {
                match self.starttls(io, arg).await? {
                    Some(encrypted) => io = encrypted,
                    None => return Ok(()),
                }
                continue;
            }
            let next = match verb.as_str() {
                "EHLO" => self.ehlo(&mut io, arg).await?,
                "HELO" => self.helo(&mut io, arg).await?,
                "AUTH" => self.auth(&mut io, arg).await?,
                "MAIL" => self.mail(&mut io, arg).await?,
                "RCPT" => self.rcpt(&mut io, arg).await?,
                "DATA" => self.data(&mut io, arg).await?,
                "RSET" => {
                    self.reset();
                    send(&mut io, "250 OK").await?;
                    Next::Continue
                }
                "NOOP" => {
                    send(&mut io, "250 OK").await?;
                    Next::Continue
                }
                "QUIT" => {
                    send(&mut io, "221 Bye").await?;
                    Next::Close
                }
                "" => {
                    send(&mut io, "500 Error: bad syntax").await?;
                    Next::Continue
                }
                _ => {
                    send(&mut io, &format!("500 Error: command \"{verb}\" not recognized")).await?;
                    Next::Continue
                }
            };
            if let Next::Close = next {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Forgets the mail transaction in progress.
    fn reset(&mut self) {
        self.mail_from = None;
        self.rcpt_tos.clear();
    }

    /// The encrypted connection, or `None` when the handshake failed.
    async fn starttls(&mut self, mut io: Conn, arg: &str) -> io::Result<Option<Conn>> {
        let reply = match &self.config.tls {
            None => "454 TLS not available",
            Some(_) if self.tls => "503 Already using TLS",
            Some(_) if !arg.is_empty() => "501 Syntax: STARTTLS",
            Some(_) => "220 Ready to start TLS",
        };
        send(&mut io, reply).await?;
        let Some(acceptor) = self.config.tls.clone().filter(|_| reply.starts_with("220")) else {
            return Ok(Some(io));
        };
        // Whatever the client sent after STARTTLS in clear is discarded
        // with the buffer (RFC 3207 §4.2).
        let Ok(encrypted) = acceptor.accept(io.into_inner()).await else {
            return Ok(None);
        };
        // A new session: the client greets again, nothing carries over.
        self.tls = true;
        self.greeted = false;
        self.reset();
        Ok(Some(BufReader::new(Box::new(encrypted))))
    }

    async fn ehlo(&mut self, io: &mut Conn, arg: &str) -> io::Result<Next> {
        if arg.is_empty() {
            send(io, "501 Syntax: EHLO hostname").await?;
            return Ok(Next::Continue);
        }
        self.greeted = true;
        self.reset();
        let mut lines = vec![HOSTNAME, "SIZE 33554432", "8BITMIME"];
        if self.config.tls.is_some() && !self.tls {
            lines.push("STARTTLS");
        }
        if self.config.auth.is_some() && (self.tls || self.config.tls.is_none()) {
            lines.push("AUTH PLAIN LOGIN");
        }
        lines.push("HELP");
        let last = lines.len() - 1;
        let reply: Vec<String> = lines
            .iter()
            .enumerate()
            .map(|(i, l)| format!("250{}{l}", if i == last { ' ' } else { '-' }))
            .collect();
        send(io, &reply.join("\r\n")).await?;
        Ok(Next::Continue)
    }

    async fn helo(&mut self, io: &mut Conn, arg: &str) -> io::Result<Next> {
        if arg.is_empty() {
            send(io, "501 Syntax: HELO hostname").await?;
        } else {
            self.greeted = true;
            self.reset();
            send(io, &format!("250 {HOSTNAME}")).await?;
        }
        Ok(Next::Continue)
    }

    /// The reply that refuses a mail command now, if any.
    fn refusal_before_transaction(&self) -> Option<&'static str> {
        if !self.greeted {
            Some("503 Error: send HELO first")
        } else if self.config.auth.is_some() && self.login.is_none() {
            Some("530 5.7.0 Authentication required")
        } else {
            None
        }
    }

    async fn auth(&mut self, io: &mut Conn, arg: &str) -> io::Result<Next> {
        let refusal = if !self.greeted {
            Some("503 Error: send HELO first")
        } else if self.config.auth.is_none() {
            Some("500 Error: command \"AUTH\" not recognized")
        } else if self.login.is_some() {
            Some("503 Already authenticated")
        } else if self.mail_from.is_some() {
            Some("503 Error: MAIL transaction in progress")
        } else {
            None
        };
        if let Some(refusal) = refusal {
            send(io, refusal).await?;
            return Ok(Next::Continue);
        }
        let (mechanism, initial) = match arg.split_once(' ') {
            Some((m, i)) => (m.to_ascii_uppercase(), Some(i.trim().to_owned())),
            None => (arg.to_ascii_uppercase(), None),
        };
        let credentials = match mechanism.as_str() {
            "PLAIN" => match challenge(io, initial, "334 ").await? {
                None => return Ok(Next::Close),
                Some(response) => response.and_then(|bytes| {
                    let parts: Vec<&[u8]> = bytes.split(|b| *b == 0).collect();
                    match parts[..] {
                        [_authzid, user, password] => Ok((user.to_vec(), password.to_vec())),
                        _ => Err("501 5.5.2 Can't split auth value"),
                    }
                }),
            },
            // The prompts are "Username:" and "Password:", in base64.
            "LOGIN" => match challenge(io, initial, "334 VXNlcm5hbWU6").await? {
                None => return Ok(Next::Close),
                Some(Err(reply)) => Err(reply),
                Some(Ok(user)) => match challenge(io, None, "334 UGFzc3dvcmQ6").await? {
                    None => return Ok(Next::Close),
                    Some(password) => password.map(|password| (user, password)),
                },
            },
            _ => Err("504 5.5.4 Unrecognized authentication type"),
        };
        let (user, password) = match credentials {
            Ok(credentials) => credentials,
            Err(reply) => {
                send(io, reply).await?;
                return Ok(Next::Continue);
            }
        };
        let (want_user, want_password) = self.config.auth.as_ref().unwrap();
        if user == want_user.as_bytes() && password == want_password.as_bytes() {
            self.login = Some(String::from_utf8_lossy(&user).into_owned());
            send(io, "235 2.7.0 Authentication successful").await?;
        } else {
            send(io, "535 5.7.8 Authentication credentials invalid").await?;
        }
        Ok(Next::Continue)
    }

    async fn mail(&mut self, io: &mut Conn, arg: &str) -> io::Result<Next> {
        let reply = if let Some(refusal) = self.refusal_before_transaction() {
            refusal.to_owned()
        } else if self.mail_from.is_some() {
            "503 Error: nested MAIL command".to_owned()
        } else if let Some(address) = path_argument(arg, "FROM:") {
            self.mail_from = Some(address);
            "250 OK".to_owned()
        } else {
            "501 Syntax: MAIL FROM: <address>".to_owned()
        };
        send(io, &reply).await?;
        Ok(Next::Continue)
    }

    async fn rcpt(&mut self, io: &mut Conn, arg: &str) -> io::Result<Next> {
        let reply = if let Some(refusal) = self.refusal_before_transaction() {
            refusal.to_owned()
        } else if self.mail_from.is_none() {
            "503 Error: need MAIL command".to_owned()
        } else if let Some(address) = path_argument(arg, "TO:") {
            // Recipients steer refusals by their local part.
            let local = address.split('@').next().unwrap_or_default();
            if local.starts_with("reject-") {
                format!("550 5.1.1 <{address}>: mailbox unavailable")
            } else if local.starts_with("defer-") {
                "451 4.3.0 mailbox busy, try again later".to_owned()
            } else {
                self.rcpt_tos.push(address);
                "250 2.1.5 OK".to_owned()
            }
        } else {
            "501 Syntax: RCPT TO: <address>".to_owned()
        };
        send(io, &reply).await?;
        Ok(Next::Continue)
    }

    async fn data(&mut self, io: &mut Conn, arg: &str) -> io::Result<Next> {
        let refusal = if let Some(refusal) = self.refusal_before_transaction() {
            Some(refusal)
        } else if !arg.is_empty() {
            Some("501 Syntax: DATA")
        } else if self.rcpt_tos.is_empty() {
            Some("503 Error: need RCPT command")
        } else {
            None
        };
        if let Some(refusal) = refusal {
            send(io, refusal).await?;
            return Ok(Next::Continue);
        }
        send(io, "354 End data with <CR><LF>.<CR><LF>").await?;
        let mut raw = Vec::new();
        loop {
            let mut line = Vec::new();
            if io.read_until(b'\n', &mut line).await? == 0 {
                // The client went away mid-message: nothing arrived.
                return Ok(Next::Close);
            }
            if line == b".\r\n" || line == b".\n" {
                break;
            }
            // Undo the dot-stuffing (RFC 5321 §4.5.2).
            raw.extend_from_slice(line.strip_prefix(b".").unwrap_or(&line));
        }
        let mail_from = self.mail_from.take().unwrap_or_default();
        let rcpt_tos = std::mem::take(&mut self.rcpt_tos);

        let state = self.state.clone();
        let _in_data = InData::new(&state);
        if let Some(delay) = self.config.delay_data {
            // The message is whole: it is stored after the wait even if
            // the client has gone meanwhile.
            tokio::time::sleep(delay).await;
        }
        let stored = {
            let mut s = lock(&state);
            if s.deferrals_left > 0 {
                s.deferrals_left -= 1;
                None
            } else {
                s.received.push(Received {
                    mail_from,
                    rcpt_tos,
                    login: self.login.clone(),
                    tls: self.tls,
                    raw,
                });
                let dropped = s.drops_left > 0;
                s.drops_left -= u32::from(dropped);
                Some((s.received.len(), dropped))
            }
        };
        let count = match stored {
            None => {
                send(io, "451 4.3.0 busy, try again later").await?;
                return Ok(Next::Continue);
            }
            // Stored, but the client never hears so: it must assume nothing.
            Some((_, true)) => return Ok(Next::Close),
            Some((count, false)) => count,
        };
        send(io, &format!("250 2.0.0 queued as {count:04}")).await?;
        Ok(Next::Continue)
    }
}

/// One AUTH response, decoded: the initial one when given, else the
/// answer to `prompt`. `None` when the client went away, `Err` with the
/// reply for a cancelled exchange (`*`) or one that is not base64.
async fn challenge(
    io: &mut Conn,
    initial: Option<String>,
    prompt: &str,
) -> io::Result<Option<Result<Vec<u8>, &'static str>>> {
    let response = match initial {
        Some(initial) => initial,
        None => {
            send(io, prompt).await?;
            match read_line(io).await? {
                Some(line) => line,
                None => return Ok(None),
            }
        }
    };
    let response = response.trim();
    if response == "*" {
        return Ok(Some(Err("501 5.7.0 Auth aborted")));
    }
    Ok(Some(
        BASE64.decode(response).map_err(|_| "501 5.5.2 Can't decode base64"),
    ))
}
