//! Integration tests against the real `erad` and `era` binaries and the
//! fixture plugins (one test binary, one module per capability).

#![allow(clippy::unwrap_used)]

mod artifacts;
mod cli;
mod confinement;
mod containers;
mod daemon;
mod environments;
mod hostile;
mod http;
mod inside;
mod invariants;
mod kubernetes;
mod lifecycle;
mod locks;
mod lxc;
mod oci;
mod outputs;
mod plans;
mod plugins;
mod proxmox;
mod recovery;
mod roles;
mod scale;
mod signatures;
mod windows;
