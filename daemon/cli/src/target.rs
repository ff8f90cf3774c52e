//! The deployment a command names: its name, and its environment.

use era_api::v1 as pb;

/// A deployment is its environment and its name; with no `--env` (and no
/// `ERA_ENV`), erad takes the only deployment of that name in any
/// environment and refuses a name several environments use, naming them.
#[derive(clap::Args, Debug, Clone)]
pub struct Target {
    /// The deployment's name.
    pub name: String,
    /// Its environment.
    #[arg(long, env = "ERA_ENV")]
    pub env: Option<String>,
}

impl Target {
    pub fn new(name: &str, environment: &str) -> Target {
        Target { name: name.to_string(), env: Some(environment.to_string()) }
    }

    /// The environment as requests carry it (empty: not given).
    pub fn environment(&self) -> String {
        self.env.clone().unwrap_or_default()
    }

    pub fn request(&self) -> pb::NameRequest {
        pb::NameRequest { name: self.name.clone(), environment: self.environment() }
    }
}

/// How messages name a deployment: its name, and its environment unless
/// that is `default`.
pub fn label(name: &str, environment: &str) -> String {
    match environment {
        "" | "default" => name.to_string(),
        env => format!("{name} (environment {env})"),
    }
}
