//! The HTTP API (shaped like Cloud Hypervisor's): the route table, the handlers, and faults as
//! `{"fault_message": ...}` with a 4xx status. Request bodies are parsed here with serde
//! (unknown fields refused), so a bad body never reaches the service and changes nothing.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put, MethodRouter};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::config::{PmemConfig, VmConfig};
use super::service::Service;
use super::snapshot::SnapshotError;
use super::vms::VmsError;

/// The service as handlers see it.
pub type AppState = Arc<Service>;

/// The API version prefix.
pub const PREFIX: &str = "/api/v1";

/// A fault: an HTTP status and the message for `fault_message`.
#[derive(Debug)]
pub struct Fault {
    status: StatusCode,
    message: String,
}

impl IntoResponse for Fault {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "fault_message": self.message });
        (self.status, Json(body)).into_response()
    }
}

impl Fault {
    fn bad_request(message: String) -> Fault {
        Fault {
            status: StatusCode::BAD_REQUEST,
            message,
        }
    }
}

impl From<VmsError> for Fault {
    fn from(e: VmsError) -> Fault {
        let status = match &e {
            VmsError::Config(_) | VmsError::TenantSize { .. } => StatusCode::BAD_REQUEST,
            VmsError::Snapshot(SnapshotError::Invalid { .. } | SnapshotError::Io { .. }) => {
                StatusCode::BAD_REQUEST
            }
            VmsError::Unknown(_) | VmsError::UnknownPmem { .. } => StatusCode::NOT_FOUND,
            VmsError::Exists(_)
            | VmsError::WrongState { .. }
            | VmsError::AddTenant { .. }
            | VmsError::DramBudget { .. }
            | VmsError::NoPmem(_)
            | VmsError::PmemExists { .. }
            | VmsError::Ended(_) => StatusCode::CONFLICT,
            VmsError::Pool { .. }
            | VmsError::Snapshot(_)
            | VmsError::Spawn { .. }
            | VmsError::Vmm { .. }
            | VmsError::EpochFailed { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Fault {
            status,
            message: crate::error_chain(&e),
        }
    }
}

/// Parses a JSON body into `T` (unknown fields are refused by `T`).
fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, Fault> {
    serde_json::from_slice(bytes).map_err(|e| Fault::bad_request(format!("bad request body: {e}")))
}

/// The body of an action (boot, pause, ...): nothing, or an empty object.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoFields {}

fn no_body(bytes: &Bytes) -> Result<(), Fault> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    body::<NoFields>(bytes).map(|_| ())
}

/// `PUT .../snapshot` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotRequest {
    /// Where the image goes (a host path).
    path: PathBuf,
}

/// `PUT .../restore` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreRequest {
    /// The image to restore.
    path: PathBuf,
    /// The new VM (its vPM size is the image's).
    config: VmConfig,
}

/// `PATCH /api/v1/vms/{id}` body (as Firecracker's `PATCH /vm`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchVm {
    /// The state wanted.
    state: PatchState,
}

/// States a PATCH may ask for.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum PatchState {
    /// Pause.
    Paused,
    /// Resume.
    Running,
}

type Reply = Result<Response, Fault>;

fn no_content() -> Reply {
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn ping() -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "api": "v1",
    }))
}

async fn pool_info(State(s): State<AppState>) -> Json<serde_json::Value> {
    Json(s.pool_info())
}

async fn list_vms(State(s): State<AppState>) -> Json<serde_json::Value> {
    let t = s.table();
    let pool = s.pool.lock().expect("pool");
    Json(serde_json::Value::Array(
        t.iter().map(|(id, vm)| vm.info(id, &pool)).collect(),
    ))
}

async fn get_vm(State(s): State<AppState>, Path(id): Path<String>) -> Reply {
    let t = s.table();
    let vm = t.get(&id).ok_or(VmsError::Unknown(id.clone()))?;
    let pool = s.pool.lock().expect("pool");
    Ok(Json(vm.info(&id, &pool)).into_response())
}

async fn create_vm(State(s): State<AppState>, Path(id): Path<String>, b: Bytes) -> Reply {
    let config: VmConfig = body(&b)?;
    s.create(&id, config)?;
    no_content()
}

async fn patch_vm(State(s): State<AppState>, Path(id): Path<String>, b: Bytes) -> Reply {
    let req: PatchVm = body(&b)?;
    match req.state {
        PatchState::Paused => s.pause(&id).await?,
        PatchState::Running => s.resume(&id)?,
    }
    no_content()
}

async fn delete_vm(State(s): State<AppState>, Path(id): Path<String>, b: Bytes) -> Reply {
    no_body(&b)?;
    s.delete(&id).await?;
    no_content()
}

async fn boot(State(s): State<AppState>, Path(id): Path<String>, b: Bytes) -> Reply {
    no_body(&b)?;
    s.boot(&id)?;
    no_content()
}

async fn pause(State(s): State<AppState>, Path(id): Path<String>, b: Bytes) -> Reply {
    no_body(&b)?;
    s.pause(&id).await?;
    no_content()
}

async fn resume(State(s): State<AppState>, Path(id): Path<String>, b: Bytes) -> Reply {
    no_body(&b)?;
    s.resume(&id)?;
    no_content()
}

async fn shutdown(State(s): State<AppState>, Path(id): Path<String>, b: Bytes) -> Reply {
    no_body(&b)?;
    s.shutdown(&id).await?;
    no_content()
}

async fn epoch(State(s): State<AppState>, Path(id): Path<String>, b: Bytes) -> Reply {
    no_body(&b)?;
    let epoch = s.epoch(&id).await?;
    Ok(Json(serde_json::json!({ "epoch": epoch })).into_response())
}

async fn snapshot(State(s): State<AppState>, Path(id): Path<String>, b: Bytes) -> Reply {
    let req: SnapshotRequest = body(&b)?;
    let info = s.snapshot(&id, &req.path).await?;
    Ok(Json(info).into_response())
}

async fn restore(State(s): State<AppState>, Path(id): Path<String>, b: Bytes) -> Reply {
    let req: RestoreRequest = body(&b)?;
    s.restore(&id, &req.path, req.config)?;
    no_content()
}

async fn get_pmem(State(s): State<AppState>, Path((id, dev)): Path<(String, String)>) -> Reply {
    Ok(Json(s.pmem_info(&id, &dev)?).into_response())
}

async fn add_pmem(
    State(s): State<AppState>,
    Path((id, dev)): Path<(String, String)>,
    b: Bytes,
) -> Reply {
    let req: PmemConfig = body(&b)?;
    s.add_pmem(&id, &dev, req)?;
    no_content()
}

async fn remove_pmem(
    State(s): State<AppState>,
    Path((id, dev)): Path<(String, String)>,
    b: Bytes,
) -> Reply {
    no_body(&b)?;
    s.remove_pmem(&id, &dev)?;
    no_content()
}

async fn metrics(State(s): State<AppState>) -> Response {
    let text = super::metrics::render(&s);
    ([(header::CONTENT_TYPE, super::metrics::CONTENT_TYPE)], text).into_response()
}

async fn not_found() -> Fault {
    Fault {
        status: StatusCode::NOT_FOUND,
        message: "no such path (see docs/api/openapi.json)".into(),
    }
}

async fn method_not_allowed() -> Fault {
    Fault {
        status: StatusCode::METHOD_NOT_ALLOWED,
        message: "method not allowed on this path (see docs/api/openapi.json)".into(),
    }
}

/// One route: its path, its methods (lowercase, as in OpenAPI), and its handlers.
pub struct Route {
    /// The path (`{id}` for the VM id).
    pub path: &'static str,
    /// Its methods.
    pub methods: &'static [&'static str],
    handlers: MethodRouter<AppState>,
}

fn route(path: &'static str, methods: &'static [&'static str], h: MethodRouter<AppState>) -> Route {
    Route {
        path,
        methods,
        handlers: h,
    }
}

/// Every route of the API; the router is built from this table, and a test checks it against
/// the OpenAPI file.
pub fn routes() -> Vec<Route> {
    vec![
        route("/api/v1/vmm.ping", &["get"], get(ping)),
        route("/api/v1/pool", &["get"], get(pool_info)),
        route("/api/v1/vms", &["get"], get(list_vms)),
        route(
            "/api/v1/vms/{id}",
            &["get", "put", "patch", "delete"],
            get(get_vm).put(create_vm).patch(patch_vm).delete(delete_vm),
        ),
        route("/api/v1/vms/{id}/boot", &["put"], put(boot)),
        route("/api/v1/vms/{id}/pause", &["put"], put(pause)),
        route("/api/v1/vms/{id}/resume", &["put"], put(resume)),
        route("/api/v1/vms/{id}/shutdown", &["put"], put(shutdown)),
        route("/api/v1/vms/{id}/epoch", &["put"], put(epoch)),
        route("/api/v1/vms/{id}/snapshot", &["put"], put(snapshot)),
        route("/api/v1/vms/{id}/restore", &["put"], put(restore)),
        route(
            "/api/v1/vms/{id}/pmem/{dev}",
            &["get", "put", "delete"],
            get(get_pmem).put(add_pmem).delete(remove_pmem),
        ),
        route("/metrics", &["get"], get(metrics)),
    ]
}

/// The router of `service`.
pub fn router(service: AppState) -> Router {
    let mut r = Router::new();
    for rt in routes() {
        r = r.route(rt.path, rt.handlers);
    }
    r.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(service)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The OpenAPI file's paths and methods, as `path method` lines.
    fn openapi_paths() -> Vec<String> {
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/api/openapi.json");
        let text = std::fs::read_to_string(file).expect("docs/api/openapi.json");
        let doc: serde_json::Value = serde_json::from_str(&text).expect("OpenAPI JSON");
        let mut v = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("path item").keys() {
                if ["get", "put", "post", "patch", "delete"].contains(&method.as_str()) {
                    v.push(format!("{path} {method}"));
                }
            }
        }
        v.sort();
        v
    }

    #[test]
    fn the_openapi_file_describes_exactly_the_routes() {
        let mut ours: Vec<String> = routes()
            .iter()
            .flat_map(|r| r.methods.iter().map(move |m| format!("{} {m}", r.path)))
            .collect();
        ours.sort();
        assert_eq!(ours, openapi_paths());
    }
}
