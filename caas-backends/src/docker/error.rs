//! [`DockerError`]: what went wrong talking to the Docker Engine, sorted into the causes a host
//! agent acts on differently (retry later, report to the user, pick another port...).
//!
//! The Engine reports most failures as an HTTP status plus a free-text message (pull errors
//! even arrive inside a 200 stream), so the sorting reads both; the original message is kept
//! in every variant.

use bollard::errors::Error as BollardError;

/// One error type for every [`DockerRuntime`](super::DockerRuntime) call.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The registry has no such repository or tag, or the image is not present locally.
    #[error("image {image} not found: {message}")]
    ImageNotFound {
        /// The image reference.
        image: String,
        /// The Engine's message.
        message: String,
    },
    /// The registry could not be reached (connection refused, DNS, TLS, timeout).
    #[error("registry for {image} unreachable: {message}")]
    RegistryUnreachable {
        /// The image reference.
        image: String,
        /// The Engine's message.
        message: String,
    },
    /// The registry refused the credentials (or none were given).
    #[error("registry refused access to {image}: {message}")]
    Unauthorized {
        /// The image reference.
        image: String,
        /// The Engine's message.
        message: String,
    },
    /// The Docker daemon itself could not be reached.
    #[error("Docker daemon at {endpoint} unreachable during {op}: {message}")]
    DaemonUnreachable {
        /// Socket path or URL.
        endpoint: String,
        /// What was being done.
        op: &'static str,
        /// The underlying error.
        message: String,
    },
    /// The host port could not be bound when starting the container.
    #[error("host port {host_ip}:{host_port} already taken: {message}")]
    PortTaken {
        /// The host IP of the binding.
        host_ip: String,
        /// The host port of the binding.
        host_port: u16,
        /// The Engine's message.
        message: String,
    },
    /// A container with this name (this instance) already exists.
    #[error("container {name} already exists: {message}")]
    AlreadyExists {
        /// The container name.
        name: String,
        /// The Engine's message.
        message: String,
    },
    /// No such container.
    #[error("container {id} not found")]
    NotFound {
        /// The container id or name.
        id: String,
    },
    /// Anything else, with the operation and its target.
    #[error("docker {op} {target} failed: {source}")]
    Other {
        /// What was being done.
        op: &'static str,
        /// On what (image, container id...).
        target: String,
        /// The underlying error.
        #[source]
        source: BollardError,
    },
}

impl DockerError {
    /// Whether trying the same call again later may succeed (daemon or registry down).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            DockerError::DaemonUnreachable { .. } | DockerError::RegistryUnreachable { .. }
        )
    }
}

/// The text of a bollard error as the Engine wrote it, and its HTTP status if any.
pub(crate) fn message_of(e: &BollardError) -> (Option<u16>, String) {
    match e {
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => (Some(*status_code), message.clone()),
        BollardError::DockerStreamError { error } => (None, error.clone()),
        other => (None, other.to_string()),
    }
}

/// Whether the error means the daemon socket did not answer at all.
pub(crate) fn is_daemon_unreachable(e: &BollardError) -> bool {
    matches!(
        e,
        BollardError::SocketNotFoundError(_)
            | BollardError::IOError { .. }
            | BollardError::HyperLegacyError { .. }
            | BollardError::HyperResponseError { .. }
            | BollardError::RequestTimeoutError
    )
}

/// Sorts an error from a pull (or from create, which needs the image locally).
pub(crate) fn classify_image(
    op: &'static str,
    endpoint: &str,
    image: &str,
    e: BollardError,
) -> DockerError {
    if is_daemon_unreachable(&e) {
        return DockerError::DaemonUnreachable {
            endpoint: endpoint.to_owned(),
            op,
            message: e.to_string(),
        };
    }
    let (status, message) = message_of(&e);
    let m = message.to_ascii_lowercase();
    let image = image.to_owned();
    if m.contains("unauthorized")
        || m.contains("no basic auth credentials")
        || m.contains("authentication required")
        || m.contains("denied")
        || status == Some(401)
    {
        DockerError::Unauthorized { image, message }
    } else if m.contains("connection refused")
        || m.contains("no such host")
        || m.contains("i/o timeout")
        || m.contains("dial tcp")
        || m.contains("tls:")
        || m.contains("connection reset")
        || m.contains("request canceled")
        || m.contains("server gave http response to https client")
    {
        DockerError::RegistryUnreachable { image, message }
    } else if status == Some(404)
        || m.contains("not found")
        || m.contains("manifest unknown")
        || m.contains("no such image")
    {
        DockerError::ImageNotFound { image, message }
    } else {
        DockerError::Other {
            op,
            target: image,
            source: e,
        }
    }
}

/// Sorts an error from an operation on an existing container.
pub(crate) fn classify_container(
    op: &'static str,
    endpoint: &str,
    id: &str,
    e: BollardError,
) -> DockerError {
    if is_daemon_unreachable(&e) {
        return DockerError::DaemonUnreachable {
            endpoint: endpoint.to_owned(),
            op,
            message: e.to_string(),
        };
    }
    match message_of(&e) {
        (Some(404), _) => DockerError::NotFound { id: id.to_owned() },
        (Some(409), message) if op == "create" => DockerError::AlreadyExists {
            name: id.to_owned(),
            message,
        },
        _ => DockerError::Other {
            op,
            target: id.to_owned(),
            source: e,
        },
    }
}

/// Whether a start error is a host port that could not be bound.
pub(crate) fn is_port_taken(e: &BollardError) -> bool {
    let (_, m) = message_of(e);
    let m = m.to_ascii_lowercase();
    m.contains("address already in use") || m.contains("port is already allocated")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(status_code: u16, message: &str) -> BollardError {
        BollardError::DockerResponseServerError {
            status_code,
            message: message.to_owned(),
        }
    }

    #[test]
    fn pull_errors_are_sorted() {
        let c = |e| classify_image("pull", "/sock", "r/x:v1", e);
        assert!(matches!(
            c(server(
                404,
                "manifest for r/x:v1 not found: manifest unknown"
            )),
            DockerError::ImageNotFound { .. }
        ));
        assert!(matches!(
            c(server(
                500,
                "Get \"http://127.0.0.1:5999/v2/\": dial tcp 127.0.0.1:5999: connect: connection refused"
            )),
            DockerError::RegistryUnreachable { .. }
        ));
        assert!(matches!(
            c(server(
                500,
                "Head \"http://r/v2/x/manifests/v1\": no basic auth credentials"
            )),
            DockerError::Unauthorized { .. }
        ));
        assert!(matches!(
            c(BollardError::SocketNotFoundError("/nope".into())),
            DockerError::DaemonUnreachable { .. }
        ));
        assert!(matches!(c(server(500, "weird")), DockerError::Other { .. }));
    }

    #[test]
    fn container_errors_are_sorted() {
        let e = classify_container(
            "inspect",
            "/sock",
            "abc",
            server(404, "No such container: abc"),
        );
        assert_eq!(e.to_string(), "container abc not found");
        assert!(is_port_taken(&server(
            500,
            "driver failed programming external connectivity on endpoint x: Error starting userland proxy: listen tcp4 127.0.0.1:25701: bind: address already in use"
        )));
    }
}
