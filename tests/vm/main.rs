//! The suite that runs inside the VM guest.
fn main() {}
