//! Every answer the API gives that is not a success: one status, one code, one JSON body
//! `{"error": CODE, "message": ..., "field": ...}`, made in one place.

use http::StatusCode;
use serde::Serialize;

use crate::scheduler::ControlError;
use crate::store::StoreError;

/// A failed request: what the client sees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    /// The HTTP status.
    #[serde(skip)]
    pub status: StatusCode,
    /// A stable code scripts can match on (the README lists them).
    #[serde(rename = "error")]
    pub code: &'static str,
    /// What went wrong, for a person.
    pub message: String,
    /// The input field at fault (`memory`, `weights.v3`, `sidecars[0].image`), when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    /// An error with no field.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    /// 400 `invalid_field`: `field` has a bad value, `message` says why.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.into()),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_field", message)
        }
    }

    /// 400 `unknown_field`.
    pub fn unknown_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.into()),
            ..Self::new(StatusCode::BAD_REQUEST, "unknown_field", message)
        }
    }

    /// 400 `malformed_json`: the body is not the JSON expected at all.
    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed_json", message)
    }

    /// 401 `unauthorized` (answered with `WWW-Authenticate: Bearer`).
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403 `forbidden`: the route is for admins.
    pub fn forbidden() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this route is for admin tokens only",
        )
    }

    /// 404 with a code naming what is missing (`app_not_found`, `version_not_found`...).
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// 404 `app_not_found`: the same answer for an app that does not exist and for another
    /// tenant's app, so that existence does not leak.
    pub fn no_app(app: &str) -> Self {
        Self::not_found("app_not_found", format!("no app {app:?}"))
    }

    /// 409 with a code.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// The JSON body.
    pub fn to_json(&self) -> Vec<u8> {
        // Strings only: serializing cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

impl From<StoreError> for ApiError {
    /// Store trouble is the platform's, never the client's: 503 while the store cannot be
    /// reached (a change's outcome is then unknown and the message says so), 500 when the
    /// store refuses the API's own identity or the request.
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::Unavailable { op: "commit", .. } => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                format!("{e}; the change may or may not have been applied: read it back"),
            ),
            StoreError::Unavailable { .. } => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                e.to_string(),
            ),
            StoreError::Conflict { .. } => Self::conflict(
                "conflict",
                format!("{e}; others kept changing the same nodes, nothing was written: retry"),
            ),
            StoreError::Denied { .. }
            | StoreError::Unauthenticated { .. }
            | StoreError::Invalid { .. } => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "store_refused",
                e.to_string(),
            ),
        }
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::Store(e) => e.into(),
            ControlError::NotFound { path } => {
                Self::not_found("not_found", format!("{path} does not exist"))
            }
            ControlError::Invalid(why) => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "store_data_invalid", why)
            }
            ControlError::Busy { .. } => Self::conflict("conflict", e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_names_code_message_and_field() {
        let e = ApiError::invalid("memory", "too much");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            String::from_utf8(e.to_json()).unwrap(),
            r#"{"error":"invalid_field","message":"too much","field":"memory"}"#
        );
        let e = ApiError::no_app("x");
        assert_eq!(
            String::from_utf8(e.to_json()).unwrap(),
            r#"{"error":"app_not_found","message":"no app \"x\""}"#
        );
    }

    #[test]
    fn store_failures_blame_the_store() {
        let e: ApiError = StoreError::Unavailable {
            op: "commit",
            path: "/a".into(),
            reason: "gone".into(),
        }
        .into();
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(e.message.contains("may or may not"));
    }
}
