//! What real container runtimes tell netguard: the chained CNI plugin and the OCI hooks.

pub mod cni_plugin;
pub mod oci_hook;
