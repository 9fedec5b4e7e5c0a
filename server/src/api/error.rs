//! Errors in vLLM's (and OpenAI's) envelope: `{"error": {"message", "type", "param", "code"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// vLLM's `ErrorResponse`.
#[derive(Debug, serde::Serialize)]
pub(crate) struct ErrorResponse<'a> {
    pub error: ErrorDetail<'a>,
}

#[derive(Debug, serde::Serialize)]
pub(crate) struct ErrorDetail<'a> {
    pub message: &'a str,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub param: Option<&'a str>,
    pub code: u16,
}

#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub param: Option<String>,
}

impl ApiError {
    pub(crate) fn bad_request(message: impl Into<String>, param: Option<&str>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param: param.map(str::to_owned),
        }
    }

    pub(crate) fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
            param: None,
        }
    }

    pub(crate) fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            param: None,
        }
    }

    /// A request no route answers (404) or a method a route does not take (405), in vLLM's
    /// envelope (its `HTTPException` handler: the status phrase as message and type).
    pub(crate) fn route(status: StatusCode) -> ApiError {
        ApiError {
            status,
            message: status.canonical_reason().unwrap_or("Error").to_owned(),
            param: None,
        }
    }

    pub(crate) fn unauthorized() -> ApiError {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: "Unauthorized".into(),
            param: None,
        }
    }

    /// vLLM's error type names (a routing error's is its status phrase).
    fn kind(&self) -> &'static str {
        match self.status {
            StatusCode::BAD_REQUEST => "BadRequestError",
            StatusCode::NOT_FOUND if self.is_routing() => "Not Found",
            StatusCode::NOT_FOUND => "NotFoundError",
            StatusCode::METHOD_NOT_ALLOWED => "Method Not Allowed",
            StatusCode::UNAUTHORIZED => "AuthenticationError",
            StatusCode::PAYLOAD_TOO_LARGE => "BadRequestError",
            _ => "InternalServerError",
        }
    }

    fn is_routing(&self) -> bool {
        Some(self.message.as_str()) == self.status.canonical_reason()
    }

    /// The error envelope, as a response body or a stream's last `data:` event.
    pub(crate) fn body(&self) -> ErrorResponse<'_> {
        ErrorResponse {
            error: ErrorDetail {
                message: &self.message,
                kind: self.kind(),
                param: self.param.as_deref(),
                code: self.status.as_u16(),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

/// A request body for the API's handlers: reading it may fail (too large, cut off), and the
/// failure answers with the API's JSON error envelope rather than axum's plain text.
pub(crate) struct ApiBody(pub axum::body::Bytes);

impl<S: Send + Sync> axum::extract::FromRequest<S> for ApiBody {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        axum::body::Bytes::from_request(req, state)
            .await
            .map(ApiBody)
            .map_err(|e| ApiError {
                status: e.status(),
                message: e.body_text(),
                param: None,
            })
    }
}

/// Parses a JSON body into `T`, naming the offending field in the error. Anything but
/// whitespace after the JSON value is refused (a body is one value).
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut *de).map_err(field_error)?;
    de.end()
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}"), None))?;
    Ok(value)
}

/// Parses a body into a JSON tree, for bodies read more than one way (their fields checked,
/// then the shared and the endpoint's fields read with [`read_fields`]): the text is parsed
/// once.
pub(crate) fn parse_body(body: &[u8]) -> Result<serde_json::Value, ApiError> {
    parse_json(body)
}

/// Reads `T` from a parsed body, naming the offending field in the error.
pub(crate) fn read_fields<T: serde::de::DeserializeOwned>(
    body: &serde_json::Value,
) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(body).map_err(field_error)
}

/// A body that does not fit: a syntax error, or the path to the field that is wrong.
fn field_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    if inner.is_syntax() || inner.is_eof() || path == "." || path == "?" || path.is_empty() {
        ApiError::bad_request(format!("invalid JSON body: {inner}"), None)
    } else {
        ApiError::bad_request(format!("{path}: {inner}"), Some(&path))
    }
}
