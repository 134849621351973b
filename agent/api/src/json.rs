//! Reading JSON request bodies with errors that say where: 400 with line and column for malformed
//! JSON, 422 with the field path for well-formed JSON of the wrong shape.

use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Parses `body` as `T`.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        shape_error(&path, err.inner())
    })?;
    // Trailing characters after the value are malformed JSON too.
    de.end().map_err(|err| shape_error(".", &err))?;
    Ok(value)
}

/// Maps a serde_json error at `path` to 400 (syntax) or 422 (shape).
pub fn shape_error(path: &str, err: &serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    match err.classify() {
        Category::Syntax | Category::Eof | Category::Io => ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!(
                "malformed JSON at line {}, column {}: {err}",
                err.line(),
                err.column()
            ),
        )
        .with("line", err.line())
        .with("column", err.column()),
        Category::Data => {
            // serde's message carries " at line X column Y" for the whole body; the field says more.
            let message = err.to_string();
            let message = message.split(" at line ").next().unwrap_or(&message);
            // serde reports a missing field at its parent: name the field itself.
            let missing = message
                .strip_prefix("missing field `")
                .and_then(|rest| rest.strip_suffix('`'));
            let field = match (path, missing) {
                (".", Some(name)) => name.to_owned(),
                (_, Some(name)) => format!("{path}.{name}"),
                (".", None) => "body".to_owned(),
                _ => path.to_owned(),
            };
            ApiError::invalid(&field, format!("`{field}`: {message}"))
        }
    }
}
