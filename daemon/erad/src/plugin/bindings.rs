//! The one `bindgen!` for the plugin world (`wit/plugin.wit`).

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "plugin",
    imports: {
        // Host programs take time; everything else returns at once.
        "era:plugin/process": async,
        default: tracing,
    },
    exports: { default: async },
});

pub use era::plugin::types::{
    Artifact, ArtifactKind, Error as GuestError, Health, PluginInfo, Port, Volume, Workload, WorkloadStatus,
};
