//! The API's own description: `GET /openapi.json` and Swagger UI at `/swagger-ui`.
//!
//! The OpenAPI document is a file kept beside the code and checked by a test against the
//! router, so that it cannot silently drift from the routes.

use axum::Router;
use utoipa_swagger_ui::SwaggerUi;

use crate::state::AppState;

/// The OpenAPI 3.1 document of every route.
pub const OPENAPI_JSON: &str = include_str!("../../openapi.json");

pub fn router() -> Router<AppState> {
    let document: serde_json::Value =
        serde_json::from_str(OPENAPI_JSON).unwrap_or_else(|_| serde_json::json!({}));
    Router::new()
        .merge(SwaggerUi::new("/swagger-ui").external_url_unchecked("/openapi.json", document))
}
