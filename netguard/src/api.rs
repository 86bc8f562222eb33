//! The agent's local API: one JSON request and one JSON response per line, over a Unix socket
//! that only root may open (mode 0600).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

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
    /// Answered with `Result<Reply, String>`.
    Operate {
        operation: crate::control::Operation,
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

/// Serves one connection: each request line gets `answer(request)` as one JSON line.
pub async fn serve_connection<F, Fut>(stream: UnixStream, answer: F) -> std::io::Result<()>
where
    F: Fn(Request) -> Fut,
    Fut: std::future::Future<Output = serde_json::Value>,
{
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        let reply = match serde_json::from_str::<Request>(&line) {
            Ok(request) => serde_json::to_vec(&answer(request).await)?,
            Err(e) => {
                serde_json::to_vec(&serde_json::json!({ "error": format!("bad request: {e}") }))?
            }
        };
        write.write_all(&reply).await?;
        write.write_all(b"\n").await?;
    }
    Ok(())
}

/// Sends one request to the agent at `path` and reads its answer.
pub async fn request<R: DeserializeOwned>(path: &Path, request: &Request) -> Result<R, ApiError> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|source| ApiError::NoAgent {
            path: path.into(),
            source,
        })?;
    let io = |source| ApiError::Io {
        path: path.into(),
        source,
    };
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request).expect("requests always serialize");
    line.push(b'\n');
    write.write_all(&line).await.map_err(io)?;
    let mut answer = String::new();
    BufReader::new(read)
        .read_line(&mut answer)
        .await
        .map_err(io)?;
    serde_json::from_str(&answer).map_err(|source| ApiError::Protocol {
        path: path.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn status_round_trip_and_second_agent_refused() {
        let path = std::env::temp_dir().join(format!("netguard-api-{}.sock", std::process::id()));
        let listener = listen(&path).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_connection(stream, |r| async move {
                    serde_json::json!({ "got": r })
                }));
            }
        });
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
