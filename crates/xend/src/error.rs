//! API errors: a stable machine code, a message, and the HTTP status. Client mistakes
//! are 4xx; only failures of xend or the host are 5xx. Domain errors become HTTP here
//! and nowhere else.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use rxen_xend_api::{ErrorBody, ErrorReply};

use crate::state::DomainError;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn invalid_config(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_config", message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        use DomainError as D;
        let message = e.to_string();
        let (status, code) = match e {
            D::NotFound(_) | D::NoManaged(_) => (StatusCode::NOT_FOUND, "not_found"),
            D::NoDevice(_) => (StatusCode::NOT_FOUND, "no_device"),
            D::DiskInUse(_) => (StatusCode::CONFLICT, "disk_in_use"),
            D::DeviceInUse(_) => (StatusCode::CONFLICT, "device_in_use"),
            D::DeviceRefused(_) => (StatusCode::UNPROCESSABLE_ENTITY, "device_refused"),
            D::InvalidConfig(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_config"),
            D::BuildFailed(_) => (StatusCode::UNPROCESSABLE_ENTITY, "create_failed"),
            D::BadRequest(_) | D::Refused(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            D::BadImage(_) => (StatusCode::BAD_REQUEST, "bad_image"),
            D::SaveFailed(_) => (StatusCode::UNPROCESSABLE_ENTITY, "save_failed"),
            D::MigrateFailed(_) => (StatusCode::UNPROCESSABLE_ENTITY, "migrate_failed"),
            D::NameInUse(_) => (StatusCode::CONFLICT, "name_in_use"),
            D::UuidInUse(_) => (StatusCode::CONFLICT, "uuid_in_use"),
            D::WrongState(_) => (StatusCode::CONFLICT, "wrong_state"),
            D::Dom0(_) => (StatusCode::CONFLICT, "domain0"),
            D::InsufficientMemory(_) => (StatusCode::INSUFFICIENT_STORAGE, "insufficient_memory"),
            D::NoFreeDomid | D::Xenstore(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            D::ShutdownTimeout => (StatusCode::GATEWAY_TIMEOUT, "shutdown_timeout"),
            D::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(status, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorReply {
            error: ErrorBody {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
