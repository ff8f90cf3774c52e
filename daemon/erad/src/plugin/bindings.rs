//! The one `bindgen!` for the plugin world (`wit/plugin.wit`).

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "plugin",
    imports: {
        // Host programs and runtimes take time; everything else returns at once.
        "era:plugin/process": async,
        "era:plugin/oci-runtime": async,
        "era:plugin/lxc": async,
        default: tracing,
    },
    exports: { default: async },
});

pub use era::plugin::types::{
    Artifact, ArtifactKind, Error as GuestError, ExecOutput, Health, HealthCheck, HttpProbe as HttpProbeCheck,
    PluginInfo, Port, Probe, TcpProbe as TcpProbeCheck, Volume, Workload, WorkloadStatus,
};
