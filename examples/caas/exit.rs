//! Exit codes a script can rely on, one per kind of failure (the README lists them).

use std::fmt;
use std::process::ExitCode;

use hyper::StatusCode;

/// Why a command failed, with the exit code that says so.
#[derive(Debug)]
pub(crate) struct Failure {
    /// The exit code.
    pub(crate) code: u8,
    /// What to print.
    pub(crate) message: String,
}

/// 1: anything not listed below (an API answer of 5xx, an unexpected answer).
pub(crate) const OTHER: u8 = 1;
/// 2: bad command-line usage (clap uses it too).
pub(crate) const USAGE: u8 = 2;
/// 3: no or unknown token (401), or not allowed (403).
pub(crate) const DENIED: u8 = 3;
/// 4: no such app, version, instance or host (404; also another tenant's app).
pub(crate) const NOT_FOUND: u8 = 4;
/// 5: the API refused the input (400, 409, 422): the message names the field.
pub(crate) const INVALID: u8 = 5;
/// 6: the deployment failed: unschedulable, image pull failed, instances not healthy, or an
/// update rolled back.
pub(crate) const DEPLOY_FAILED: u8 = 6;
/// 7: waited longer than `--timeout`.
pub(crate) const TIMEOUT: u8 = 7;
/// 8: the API cannot be reached.
pub(crate) const UNREACHABLE: u8 = 8;

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// Bad usage.
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self::new(USAGE, message)
    }

    /// The API cannot be reached or broke off.
    pub(crate) fn unreachable(message: impl Into<String>) -> Self {
        Self::new(
            UNREACHABLE,
            format!("cannot reach the API: {}", message.into()),
        )
    }

    /// A bug or an answer this CLI does not understand.
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(OTHER, message)
    }

    /// The deployment failed.
    pub(crate) fn deploy(message: impl Into<String>) -> Self {
        Self::new(DEPLOY_FAILED, message)
    }

    /// Waited too long.
    pub(crate) fn timeout(message: impl Into<String>) -> Self {
        Self::new(TIMEOUT, message)
    }

    /// An API error answer.
    pub(crate) fn from_status(status: StatusCode, message: String) -> Self {
        let code = match status.as_u16() {
            401 | 403 => DENIED,
            404 => NOT_FOUND,
            400 | 409 | 422 => INVALID,
            _ => OTHER,
        };
        Self::new(code, message)
    }

    /// Prints the message on stderr and gives the exit code.
    pub(crate) fn report(self) -> ExitCode {
        eprintln!("caas: {}", self.message);
        ExitCode::from(self.code)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Writes to stdout; exits quietly (code 0) when the reader went away, with code 1 on any
/// other write error.
pub(crate) fn write_stdout(args: fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("caas: cannot write the output: {e}");
        std::process::exit(i32::from(OTHER));
    }
}
