//! The API's error type and its JSON extractor. Every failure a client can cause becomes an
//! OpenAI-style `{"error":{"message","type","param","code"}}` body with a 4xx status; internal
//! detail of a 5xx is never sent, only attached to the response for the logging middleware.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// A failed request.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: Box<str>,
    /// OpenAI's `type`: `invalid_request_error`, `server_error`, ...
    pub kind: &'static str,
    /// The request field at fault, when there is one.
    pub param: Option<Box<str>>,
    pub code: Option<&'static str>,
    /// Seconds a client should wait before retrying (sent as `Retry-After`).
    pub retry_after: Option<u32>,
    /// What really went wrong in a 5xx; logged, never sent.
    pub internal: Option<Box<str>>,
}

/// The internal detail of a 5xx, carried on the response for the logging middleware.
#[derive(Debug, Clone)]
pub struct InternalDetail(pub String);

impl ApiError {
    pub fn invalid(param: Option<&str>, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into().into(),
            kind: "invalid_request_error",
            param: param.map(Box::from),
            code: None,
            retry_after: None,
            internal: None,
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: Some("not_found"),
            ..Self::invalid(None, message)
        }
    }

    /// The server cannot take the request now (loading, draining, queue full).
    pub fn unavailable(code: &'static str, message: impl Into<String>, retry_after: u32) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into().into(),
            kind: "server_error",
            param: None,
            code: Some(code),
            retry_after: Some(retry_after),
            internal: None,
        }
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: "the server failed to complete the request; it has been logged".into(),
            kind: "server_error",
            param: None,
            code: None,
            retry_after: None,
            internal: Some(detail.into().into()),
        }
    }

    fn with_status(mut self, status: StatusCode, code: &'static str) -> Self {
        self.status = status;
        self.code = Some(code);
        self
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorObject<'a>,
}

#[derive(Serialize)]
struct ErrorObject<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorObject {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(detail) = self.internal {
            response
                .extensions_mut()
                .insert(InternalDetail(detail.into()));
        }
        response
    }
}

/// A JSON body whose every failure (too large, not UTF-8, malformed, wrong field types)
/// becomes an [`ApiError`]. The content type is not checked: clients such as `curl -d`
/// send JSON under other types, and the body's parse decides.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(request, state).await.map_err(|rejection| {
            let status = rejection.status();
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::invalid(
                    None,
                    format!("the request body is larger than the {MAX_BODY_BYTES}-byte limit; send a shorter prompt"),
                )
                .with_status(status, "body_too_large")
            } else {
                ApiError::invalid(None, format!("the request body could not be read: {rejection}"))
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses a request body, naming the field at fault.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if let Err(error) = std::str::from_utf8(bytes) {
        return Err(ApiError::invalid(
            None,
            format!(
                "the request body is not valid UTF-8 (bad byte at offset {}); send JSON text encoded as UTF-8",
                error.valid_up_to()
            ),
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let param = (path != ".").then_some(path);
        let inner = error.into_inner();
        let message = if inner.is_syntax() || inner.is_eof() {
            format!("the request body is not valid JSON: {inner}")
        } else {
            match &param {
                Some(param) => format!("field `{param}`: {inner}"),
                None => format!("the request body has the wrong shape: {inner}"),
            }
        };
        ApiError::invalid(param.as_deref(), message)
    })?;
    deserializer.end().map_err(|inner| {
        ApiError::invalid(
            None,
            format!("the request body has text after the JSON value: {inner}"),
        )
    })?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Probe {
        max_tokens: Option<u32>,
        nested: Option<Vec<u8>>,
    }

    #[test]
    fn wrong_field_type_names_the_field() {
        let error = parse_json::<Probe>(br#"{"max_tokens": "ten"}"#).unwrap_err();
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
        assert_eq!(error.param.as_deref(), Some("max_tokens"));
        assert!(error.message.contains("max_tokens"), "{}", error.message);
        let nested = parse_json::<Probe>(br#"{"nested": [1, "x"]}"#).unwrap_err();
        assert_eq!(nested.param.as_deref(), Some("nested[1]"));
    }

    #[test]
    fn malformed_and_non_utf8_bodies_are_invalid_requests() {
        let syntax = parse_json::<Probe>(b"{\"max_tokens\": 1").unwrap_err();
        assert!(
            syntax.message.contains("not valid JSON"),
            "{}",
            syntax.message
        );
        let bytes = parse_json::<Probe>(b"{\"a\": \"\xff\"}").unwrap_err();
        assert!(bytes.message.contains("UTF-8"), "{}", bytes.message);
        let trailing = parse_json::<Probe>(b"{} {}").unwrap_err();
        assert_eq!(trailing.status, StatusCode::BAD_REQUEST);
    }
}
