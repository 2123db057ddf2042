//! JSON request bodies, read as objects only.
//!
//! serde reads a struct from a JSON array too (its fields in order): `[[]]`
//! was a session batch of no records, `["text"]` a policy document to
//! validate (found by schemathesis against the API's description, which
//! allows objects only). No client sends that, and accepting it is a second,
//! undocumented wire format. [`JsonObject`] is axum's `Json` that answers a
//! body that is not a JSON object 400; [`from_object`] reads a value the same
//! way.

use axum::extract::{FromRequest, Request};
use axum::Json;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ApiError;

/// A JSON body that is an object, read into `T`. Rejections as axum's
/// `Json` (415 without a JSON content type, 413 past the body limit, 400
/// for invalid JSON), and 400 for anything but an object.
#[derive(Debug)]
pub struct JsonObject<T>(pub T);

impl<S, T> FromRequest<S> for JsonObject<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let Json(value) = Json::<Value>::from_request(request, state).await?;
        from_object(value).map(JsonObject)
    }
}

/// `value` read into `T` if it is a JSON object; 400 otherwise.
pub fn from_object<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    if !value.is_object() {
        return Err(ApiError::BadRequest(
            "the request body must be a JSON object".to_owned(),
        ));
    }
    serde_json::from_value(value)
        .map_err(|error| ApiError::BadRequest(format!("invalid request body: {error}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        document: String,
    }

    #[test]
    fn only_objects_are_read() {
        let doc: Doc = from_object(json!({"document": "x"})).unwrap();
        assert_eq!(doc.document, "x");
        // What serde alone reads as a `Doc`.
        assert!(serde_json::from_value::<Doc>(json!(["x"])).is_ok());
        for not_an_object in [json!(["x"]), json!([[]]), json!(null), json!("x"), json!(1)] {
            let error = from_object::<Doc>(not_an_object.clone()).unwrap_err();
            assert_eq!(error.status(), axum::http::StatusCode::BAD_REQUEST);
            assert_eq!(
                error.public_message(),
                "the request body must be a JSON object",
                "{not_an_object}"
            );
        }
        let error = from_object::<Doc>(json!({"document": "x", "more": 1})).unwrap_err();
        assert!(error.public_message().contains("unknown field `more`"));
    }
}
