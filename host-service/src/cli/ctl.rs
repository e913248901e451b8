//! `vpm ctl`: one request to a running `vpm serve`; prints the response body and fails on a
//! status that is not 2xx.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use vpm_host::serve::client;

use super::CliError;

/// HTTP methods the API uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Method {
    /// GET.
    Get,
    /// PUT.
    Put,
    /// PATCH.
    Patch,
    /// DELETE.
    Delete,
}

/// `vpm ctl` options.
#[derive(Args, Debug)]
pub struct CtlArgs {
    /// The service's socket.
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// The method.
    #[arg(value_enum)]
    pub method: Method,
    /// The path, e.g. /api/v1/vms/a/boot or /api/v1/vms/a/pmem/pmem0 (every path is in
    /// docs/api/openapi.json).
    pub path: String,
    /// A JSON body.
    pub body: Option<String>,
}

/// Sends the request; prints the body; an HTTP status other than 2xx is an error.
pub fn run(a: &CtlArgs) -> Result<(), CliError> {
    let method = format!("{:?}", a.method).to_ascii_uppercase();
    let reply = client::request(&a.socket, &method, &a.path, a.body.as_deref())
        .map_err(CliError::Client)?;
    if !reply.body.is_empty() {
        use std::io::Write;
        // A closed stdout (`vpm ctl ... | head`) is not the request's failure.
        let _ = writeln!(std::io::stdout(), "{}", reply.body);
    }
    if (200..300).contains(&reply.status) {
        Ok(())
    } else {
        Err(CliError::HttpStatus(reply.status))
    }
}
