//! `netguard` run as a chained CNI plugin (CNI_COMMAND is set): the protocol and the way to the
//! agent are the library's; when no agent runs, the call is carried out here.

use std::process::ExitCode;

use netguard::client;

use super::ops::RunHere;

pub fn main() -> ExitCode {
    super::init_logging("warn", super::LogFormat::Text);
    ExitCode::from(client::cni_call(RunHere).print())
}
