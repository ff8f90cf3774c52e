//! Connecting to erad's unix socket, and turning failures into exit codes.

use era_api::v1::deployments_client::DeploymentsClient;
use hyper_util::rt::TokioIo;
use std::path::Path;
use tonic::transport::{Channel, Endpoint, Uri};

pub type Client = DeploymentsClient<Channel>;

/// A failure, with the exit code it maps to.
#[derive(Debug)]
pub enum CliError {
    /// The operation failed (exit 1).
    Failed(String),
    /// Bad usage or an invalid spec (exit 2).
    Usage(String),
    /// erad cannot be reached (exit 3).
    Unreachable(String),
    /// The caller's role does not allow it, or the socket is not theirs to
    /// open (exit 4).
    Denied(String),
    /// Not a failure: an exit code that says something (`era plan
    /// --detailed-exitcode`), with nothing more to print.
    Exit(u8),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Failed(_) => 1,
            CliError::Usage(_) => 2,
            CliError::Unreachable(_) => 3,
            CliError::Denied(_) => 4,
            CliError::Exit(code) => *code,
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Failed(m) | CliError::Usage(m) | CliError::Unreachable(m) => f.write_str(m),
            CliError::Denied(m) => write!(f, "permission denied: {m}"),
            CliError::Exit(_) => Ok(()),
        }
    }
}

impl From<tonic::Status> for CliError {
    fn from(s: tonic::Status) -> Self {
        let msg = s.message().to_string();
        match s.code() {
            tonic::Code::InvalidArgument => CliError::Usage(msg),
            tonic::Code::Unavailable => CliError::Unreachable(format!("erad is unavailable: {msg}")),
            tonic::Code::PermissionDenied => CliError::Denied(msg),
            _ => CliError::Failed(msg),
        }
    }
}

pub async fn connect(socket: &Path) -> Result<Client, CliError> {
    let path = socket.to_path_buf();
    let unreachable = |why: String| {
        CliError::Unreachable(format!(
            "cannot reach erad at {}: {why} (is erad running? set --socket or ERA_SOCKET)",
            socket.display()
        ))
    };
    // The URI is required by tonic but unused: the connector dials the socket.
    let endpoint = Endpoint::try_from("http://erad.local").map_err(|e| unreachable(e.to_string()))?;
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
        }))
        .await
        .map_err(|e| {
            let mut why = e.to_string();
            let mut denied = false;
            let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
            while let Some(s) = src {
                why = s.to_string();
                denied |= s
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied);
                src = s.source();
            }
            if denied {
                return CliError::Denied(format!(
                    "cannot open erad's socket {}: it is for root, erad's user and the members of its group \
                     (the config's [api] read_group); ask for the reader or admin role",
                    socket.display()
                ));
            }
            unreachable(why)
        })?;
    Ok(DeploymentsClient::new(channel))
}

/// Reads a spec file (or stdin for `-`) and names it by its absolute path, so
/// erad can resolve relative `file:` artifacts from the spec's directory.
pub fn read_spec(file: &Path) -> Result<(String, String), CliError> {
    if file == Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .map_err(|e| CliError::Usage(format!("cannot read the spec from standard input: {e}")))?;
        return Ok((text, String::new()));
    }
    let text =
        std::fs::read_to_string(file).map_err(|e| CliError::Usage(format!("cannot read {}: {e}", file.display())))?;
    let abs = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    Ok((text, abs.display().to_string()))
}
