//! Docker-style API errors: an HTTP status and `{"message": "..."}`.

use http::StatusCode;

/// An error answered to the client as `{"message": "..."}` with a status code. The docker
/// CLI maps 404 to "not found" (and e.g. pulls a missing image), 409 to conflicts.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, m)
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, m)
    }
    pub fn conflict(m: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, m)
    }
    pub fn not_modified() -> Self {
        Self::new(StatusCode::NOT_MODIFIED, "")
    }
    pub fn internal(m: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, m)
    }
    pub fn not_implemented(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_IMPLEMENTED,
            format!("{what} is not implemented by this engine"),
        )
    }
    /// The JSON body the Docker API uses for errors.
    pub fn body(&self) -> String {
        serde_json::json!({ "message": self.message }).to_string()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn error_body_is_docker_style() {
        let e = ApiError::not_found("No such container: x");
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert_eq!(e.body(), r#"{"message":"No such container: x"}"#);
    }
}
