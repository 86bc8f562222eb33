//! The agent's local API: one JSON request and one JSON response per line, over a Unix socket
//! that only root may open (mode 0600). Bounded like a server: a request line has at most
//! [`Limits::max_line`] bytes, at most [`Limits::max_connections`] are served at once (more
//! wait in the listen backlog), an idle connection is closed, and accept errors (EMFILE, say)
//! back off instead of spinning.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

use crate::status::AgentInfo;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no agent is running (nothing listens on {path}: {source})")]
    NoAgent {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another netguard agent already listens on {path}; stop it first")]
    AlreadyRunning { path: PathBuf },
    #[error("cannot listen on {path}: {source}")]
    Listen {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to the agent on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the agent answering on {path} (pid {pid}) is not the one this command means: {differs}; give --socket of the agent for this ledger, or the agent's own --state-dir and --host-netns")]
    OtherAgent {
        path: PathBuf,
        pid: u32,
        differs: String,
    },
    #[error("the agent on {path} answered something unreadable: {source}")]
    Protocol {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// What a client may ask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "kebab-case")]
pub enum Request {
    /// Answered with a [`crate::status::Status`].
    Status,
    /// Answered with the agent's [`AgentInfo`] alone: who it is, asked before a command's
    /// operation without the cost of every status row.
    Agent,
    /// Answered with `Result<Reply, String>`.
    Operate {
        operation: crate::control::Operation,
        /// The agent the client means, checked by the agent itself, so that a runtime's call
        /// (a CNI ADD, a hook) is one round trip; absent, the client asked `agent` first.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expected: Option<Expected>,
    },
}

/// Binds the socket, removing a stale one left by a dead agent but never a live agent's.
pub async fn listen(path: &Path) -> Result<UnixListener, ApiError> {
    let listen_err = |source| ApiError::Listen {
        path: path.into(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(listen_err)?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(ApiError::AlreadyRunning { path: path.into() });
        }
        std::fs::remove_file(path).map_err(listen_err)?;
    }
    let listener = UnixListener::bind(path).map_err(listen_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(listen_err)?;
    Ok(listener)
}

/// How much the server takes on.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes in one request line, its newline not counted.
    pub max_line: usize,
    pub max_connections: usize,
    /// A connection that sends nothing for this long is closed.
    pub idle: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line: 64 << 10,
            max_connections: 32,
            idle: Duration::from_secs(60),
        }
    }
}

/// Accept errors back off from this ...
const BACKOFF_MIN: Duration = Duration::from_millis(10);
/// ... doubling up to this.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Serves `listener` forever, each connection on its own task, within `limits`.
pub async fn serve<F, Fut>(listener: UnixListener, limits: Limits, answer: F)
where
    F: Fn(Request) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = serde_json::Value> + Send,
{
    accept_loop(|| listener.accept(), limits, answer).await
}

async fn accept_loop<A, AFut, S, F, Fut>(mut accept: A, limits: Limits, answer: F)
where
    A: FnMut() -> AFut,
    AFut: Future<Output = std::io::Result<(S, tokio::net::unix::SocketAddr)>>,
    S: AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    F: Fn(Request) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = serde_json::Value> + Send,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut backoff = BACKOFF_MIN;
    loop {
        // A free slot first: past the limit, clients wait in the kernel's backlog.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        match accept().await {
            Ok((stream, _)) => {
                backoff = BACKOFF_MIN;
                let answer = answer.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_connection(stream, limits, answer).await {
                        tracing::debug!("API connection: {e}");
                    }
                    drop(slot);
                });
            }
            Err(e) => {
                tracing::warn!("API socket: accept failed ({e}); trying again in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// One request line, read within the limit.
enum Line {
    Request(Vec<u8>),
    TooLong,
    End,
}

async fn read_line<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    max: usize,
) -> std::io::Result<Line> {
    let mut line = Vec::new();
    // One byte past the limit (plus its newline) tells a line that is too long.
    let limit = max as u64 + 1;
    reader.take(limit).read_until(b'\n', &mut line).await?;
    if line.last() == Some(&b'\n') {
        line.pop();
        return Ok(Line::Request(line));
    }
    Ok(match line.len() {
        0 => Line::End,
        n if n > max => Line::TooLong,
        // The last line, without its newline.
        _ => Line::Request(line),
    })
}

/// Serves one connection: each request line gets `answer(request)` as one JSON line. A line
/// over the limit gets an error and the connection is closed (the rest of it cannot be told
/// apart from the next request).
pub async fn serve_connection<S, F, Fut>(
    stream: S,
    limits: Limits,
    answer: F,
) -> std::io::Result<()>
where
    S: AsyncRead + tokio::io::AsyncWrite,
    F: Fn(Request) -> Fut,
    Fut: Future<Output = serde_json::Value>,
{
    let (read, mut write) = tokio::io::split(stream);
    let mut reader = BufReader::new(read);
    loop {
        let line = match tokio::time::timeout(limits.idle, read_line(&mut reader, limits.max_line))
            .await
        {
            Ok(line) => line?,
            Err(_) => return Ok(()),
        };
        let (reply, last) = match line {
            Line::End => return Ok(()),
            Line::TooLong => {
                let error = format!(
                    "bad request: longer than {} bytes; one request is one JSON line",
                    limits.max_line
                );
                (serde_json::json!({ "error": error }), true)
            }
            Line::Request(line) => match serde_json::from_slice::<Request>(&line) {
                Ok(request) => (answer(request).await, false),
                Err(e) => (
                    serde_json::json!({ "error": format!("bad request: {e}") }),
                    false,
                ),
            },
        };
        let mut bytes = serde_json::to_vec(&reply)?;
        bytes.push(b'\n');
        write.write_all(&bytes).await?;
        if last {
            return write.shutdown().await;
        }
    }
}

/// The agent a command means: the one keeping the ledger in `state_dir` for the host netns
/// `host_netns` (`None`: init_net).
#[derive(Debug, Clone)]
pub struct Meant {
    pub state_dir: PathBuf,
    pub host_netns: Option<PathBuf>,
}

/// [`Meant`] as the client sees it, sent for the agent to check: its host netns's inode read
/// by the client (or why it could not be).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expected {
    pub state_dir: PathBuf,
    pub host_netns: Option<PathBuf>,
    pub host_netns_inode: Result<u64, String>,
}

impl Meant {
    /// What the agent is to check of itself.
    pub fn expected(&self) -> Expected {
        Expected {
            state_dir: self.state_dir.clone(),
            host_netns: self.host_netns.clone(),
            host_netns_inode: crate::netns::host_inode(self.host_netns.as_deref())
                .map_err(|e| e.to_string()),
        }
    }

    /// What differs between this and the agent described by `agent`; `None` when it is the
    /// agent meant.
    pub fn differs(&self, agent: &AgentInfo) -> Option<String> {
        self.expected().differs(agent)
    }
}

impl Expected {
    /// What differs between this and the agent described by `agent`; `None` when it is the
    /// agent meant. An agent too old to say where its ledger is passes on what it says.
    pub fn differs(&self, agent: &AgentInfo) -> Option<String> {
        let mut differs = Vec::new();
        if let Some(theirs) = &agent.state_dir {
            if !same_path(theirs, &self.state_dir) {
                differs.push(format!(
                    "its ledger is in {}, this command's in {}",
                    theirs.display(),
                    self.state_dir.display()
                ));
            }
        }
        if let Some(their_inode) = agent.host_netns_inode {
            let name =
                |p: Option<&PathBuf>| p.map_or("init_net".into(), |p| p.display().to_string());
            let ours = &self.host_netns_inode;
            if ours.as_ref().ok() != Some(&their_inode) {
                differs.push(format!(
                    "its host netns is {} (inode {their_inode}), this command's {} ({})",
                    name(agent.host_netns.as_ref()),
                    name(self.host_netns.as_ref()),
                    match ours {
                        Ok(inode) => format!("inode {inode}"),
                        Err(e) => e.clone(),
                    }
                ));
            }
        }
        (!differs.is_empty()).then(|| differs.join("; "))
    }
}

/// Whether two paths name the same place (as given, made absolute, or with links resolved).
fn same_path(a: &Path, b: &Path) -> bool {
    let absolute = |p: &Path| std::path::absolute(p).ok();
    a == b
        || absolute(a) == absolute(b)
        || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}

/// Sends `request` to the agent at `path`, but only once that agent, asked on the same
/// connection, said it is the one `meant`: a command never acts through another agent's
/// ledger or host netns.
pub async fn request_to<R: DeserializeOwned>(
    path: &Path,
    meant: &Meant,
    request: &Request,
) -> Result<R, ApiError> {
    let mut conn = Connection::open(path).await?;
    let agent: AgentInfo = conn.ask(&Request::Agent).await?;
    if let Some(differs) = meant.differs(&agent) {
        return Err(ApiError::OtherAgent {
            path: path.into(),
            pid: agent.pid,
            differs,
        });
    }
    conn.ask(request).await
}

/// Sends one request to the agent at `path` and reads its answer.
pub async fn request<R: DeserializeOwned>(path: &Path, request: &Request) -> Result<R, ApiError> {
    Connection::open(path).await?.ask(request).await
}

/// A client's connection: one request line, one answer line, as often as needed.
struct Connection {
    path: PathBuf,
    read: BufReader<tokio::net::unix::OwnedReadHalf>,
    write: tokio::net::unix::OwnedWriteHalf,
}

impl Connection {
    async fn open(path: &Path) -> Result<Connection, ApiError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ApiError::NoAgent {
                path: path.into(),
                source,
            })?;
        let (read, write) = stream.into_split();
        Ok(Connection {
            path: path.into(),
            read: BufReader::new(read),
            write,
        })
    }

    async fn ask<R: DeserializeOwned>(&mut self, request: &Request) -> Result<R, ApiError> {
        let io = |source| ApiError::Io {
            path: self.path.clone(),
            source,
        };
        self.write
            .write_all(&request_line(request))
            .await
            .map_err(io)?;
        let mut answer = String::new();
        self.read.read_line(&mut answer).await.map_err(io)?;
        parse_answer(&self.path, &answer)
    }
}

/// A request as it goes on the wire: one JSON line.
pub(crate) fn request_line(request: &Request) -> Vec<u8> {
    let mut line = serde_json::to_vec(request).expect("requests always serialize");
    line.push(b'\n');
    line
}

/// The agent's answer line, read as `R`.
pub(crate) fn parse_answer<R: DeserializeOwned>(path: &Path, answer: &str) -> Result<R, ApiError> {
    serde_json::from_str(answer).map_err(|source| ApiError::Protocol {
        path: path.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::Status;

    async fn echo(request: Request) -> serde_json::Value {
        serde_json::json!({ "got": request })
    }

    fn socket(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("netguard-api-{}-{tag}.sock", std::process::id()))
    }

    async fn ask(stream: &mut UnixStream, line: &[u8]) -> String {
        stream.write_all(line).await.unwrap();
        let mut answer = String::new();
        BufReader::new(stream).read_line(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn status_round_trip_and_second_agent_refused() {
        let path = socket("round-trip");
        let listener = listen(&path).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        tokio::spawn(serve(listener, Limits::default(), echo));
        let answer: serde_json::Value = request(&path, &Request::Status).await.unwrap();
        assert_eq!(
            answer,
            serde_json::json!({ "got": { "request": "status" } })
        );
        assert!(matches!(
            listen(&path).await,
            Err(ApiError::AlreadyRunning { .. })
        ));
        std::fs::remove_file(&path).unwrap();
    }

    #[tokio::test]
    async fn a_request_line_over_the_limit_is_refused_and_the_connection_closed() {
        let (mut client, server) = UnixStream::pair().unwrap();
        let limits = Limits::default();
        tokio::spawn(serve_connection(server, limits, echo));
        // Exactly at the limit: an answer (not JSON, but read in full).
        let mut line = vec![b' '; limits.max_line];
        line.push(b'\n');
        let answer = ask(&mut client, &line).await;
        assert!(
            answer.contains("bad request: EOF while parsing"),
            "{answer}"
        );
        // One byte over, newline or not: refused, then nothing more is read.
        let line = vec![b'x'; limits.max_line + 1];
        let answer = ask(&mut client, &line).await;
        assert!(answer.contains("longer than 65536 bytes"), "{answer}");
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "closed after the refusal");
    }

    #[tokio::test]
    async fn connections_past_the_limit_wait_for_a_free_slot() {
        let path = socket("limit");
        let listener = listen(&path).await.unwrap();
        let limits = Limits {
            max_connections: 2,
            ..Limits::default()
        };
        tokio::spawn(serve(listener, limits, echo));
        let status = b"{\"request\":\"status\"}\n";
        let mut first = UnixStream::connect(&path).await.unwrap();
        let mut second = UnixStream::connect(&path).await.unwrap();
        assert!(ask(&mut first, status).await.contains("status"));
        assert!(ask(&mut second, status).await.contains("status"));
        // Both slots held: the third waits in the backlog, unanswered.
        let mut third = UnixStream::connect(&path).await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(300), ask(&mut third, status));
        assert!(waiting.await.is_err(), "served past the limit");
        drop(first);
        let answer = tokio::time::timeout(Duration::from_secs(5), async {
            let mut answer = String::new();
            BufReader::new(&mut third)
                .read_line(&mut answer)
                .await
                .unwrap();
            answer
        });
        assert!(
            answer.await.unwrap().contains("status"),
            "served once a slot is free"
        );
        std::fs::remove_file(&path).unwrap();
    }

    #[tokio::test]
    async fn accept_errors_back_off_and_serving_goes_on() {
        let (mut client, server) = UnixStream::pair().unwrap();
        let mut server = Some(server);
        let mut failures = 0;
        let started = tokio::time::Instant::now();
        let accept = move || {
            let next = if failures < 5 {
                failures += 1;
                Err(std::io::Error::from_raw_os_error(libc::EMFILE))
            } else {
                let addr = tokio::net::unix::SocketAddr::from(
                    std::os::unix::net::UnixDatagram::unbound()
                        .unwrap()
                        .local_addr()
                        .unwrap(),
                );
                match server.take() {
                    Some(stream) => Ok((stream, addr)),
                    None => Err(std::io::Error::from_raw_os_error(libc::EMFILE)),
                }
            };
            async move { next }
        };
        tokio::spawn(accept_loop(accept, Limits::default(), echo));
        let answer = ask(&mut client, b"{\"request\":\"status\"}\n").await;
        assert!(answer.contains("status"), "{answer}");
        // 10 + 20 + 40 + 80 + 160 ms of back-off before the sixth accept.
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(300), "{waited:?}");
    }

    #[tokio::test]
    async fn a_command_never_goes_to_an_agent_it_does_not_mean() {
        let path = socket("meant");
        let listener = listen(&path).await.unwrap();
        let operated = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = operated.clone();
        let agent = AgentInfo {
            pid: 4242,
            backend: crate::trace::BackendKind::Netlink,
            unavailable: vec![],
            started: chrono::Utc::now(),
            passes: 0,
            events: 0,
            state_dir: Some("/var/lib/netguard-a".into()),
            host_netns: None,
            host_netns_inode: Some(crate::netns::host_inode(None).unwrap()),
        };
        let info = agent.clone();
        tokio::spawn(serve(listener, Limits::default(), move |request| {
            let (info, counter) = (info.clone(), counter.clone());
            async move {
                match request {
                    Request::Status => serde_json::to_value(Status {
                        agent: Some(info),
                        rows: vec![],
                        runtime_failures: vec![],
                    })
                    .unwrap(),
                    Request::Agent => serde_json::to_value(info).unwrap(),
                    Request::Operate { .. } => {
                        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        serde_json::json!({ "Ok": null })
                    }
                }
            }
        }));
        let restore = Request::Operate {
            operation: crate::control::Operation::Restore { dry_run: true },
            expected: None,
        };
        let other = Meant {
            state_dir: "/var/lib/netguard-b".into(),
            host_netns: Some("/nonexistent/netns".into()),
        };
        let err = request_to::<serde_json::Value>(&path, &other, &restore)
            .await
            .unwrap_err();
        let text = err.to_string();
        for part in [
            "(pid 4242) is not the one this command means",
            "its ledger is in /var/lib/netguard-a, this command's in /var/lib/netguard-b",
            "its host netns is init_net",
            "this command's /nonexistent/netns",
        ] {
            assert!(text.contains(part), "{part}: {text}");
        }
        assert_eq!(operated.load(std::sync::atomic::Ordering::SeqCst), 0);
        let same = Meant {
            state_dir: "/var/lib/netguard-a/".into(),
            host_netns: None,
        };
        assert!(same.differs(&agent).is_none());
        request_to::<serde_json::Value>(&path, &same, &restore)
            .await
            .unwrap();
        assert_eq!(operated.load(std::sync::atomic::Ordering::SeqCst), 1);
        std::fs::remove_file(&path).unwrap();
    }

    #[tokio::test]
    async fn no_agent_is_said_plainly() {
        let err = request::<serde_json::Value>(Path::new("/nonexistent/ng.sock"), &Request::Status)
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("no agent is running (nothing listens on /nonexistent/ng.sock"),
            "{err}"
        );
    }
}
