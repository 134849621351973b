//! SIGHUP: the config is read again, the way `run` read it (file, `MESH_AGENT_*`, flags), and
//! what can change while the agent runs is applied: `log_level`, the `[auth]` token files, the
//! `[limits]`, the `[upstream]` settings, the HTTPS certificate files, and the policy directory
//! (imported again, so edited files take effect). Every other key that changed is logged by name
//! as needing a restart, and keeps its old value until then.
//!
//! A config that no longer loads changes nothing: the error is logged and the agent goes on as it
//! was. A token file that cannot be read leaves its scope with no token (nobody is let in with
//! the old ones; see `agent_http::auth`).

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use agent_app::config::{Config, ConfigError};
use agent_app::metrics::ReloadMetrics;
use agent_app::telemetry::{LevelChange, LogLevel};
use agent_engine::rego::RegoSettings;
use agent_http::{Auth, EvaluateLimit, Tls};
use agent_mqtt::Upstream;
use agent_policy::PolicyService;
use agent_policy::opa::RegoService;

/// Where a reload reads the config from, and the log filter it may replace.
pub struct Sources {
    pub load: Box<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>,
    pub log_level: LogLevel,
}

/// Keys a reload applies; any other that changed waits for a restart.
const RELOADABLE: &[&str] = &[
    "log_level",
    "auth.",
    "limits.",
    "upstream.",
    "policies_dir",
    "http.tls_cert_file",
    "http.tls_key_file",
];

/// What a reload can reach.
pub struct Reloader {
    pub sources: Sources,
    /// The config in force (reloaded keys take their new value; the rest stay as they started).
    pub current: Config,
    pub auth: Arc<Auth>,
    pub evaluate_limit: Arc<EvaluateLimit>,
    /// `None` when the API speaks plain HTTP.
    pub tls: Option<Arc<Tls>>,
    pub upstream: Option<Arc<Upstream>>,
    pub policies: Arc<PolicyService>,
    pub rego: Arc<RegoService>,
    pub rego_settings: RegoSettings,
    pub reloads: ReloadMetrics,
}

/// SIGHUP, listened for from the first moment of `run`: its default action would end the agent
/// (a reload asked for while it starts). Hangups before [`spawn`] wait in the stream.
pub fn hangups() -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(hangups) => Some(hangups),
        Err(err) => {
            warn!(error = %err, "cannot listen for SIGHUP: the config is read only at start");
            None
        }
    }
}

/// Reloads on every SIGHUP until aborted.
pub fn spawn(
    mut reloader: Reloader,
    hangups: Option<tokio::signal::unix::Signal>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let Some(mut hangups) = hangups else {
            return;
        };
        while hangups.recv().await.is_some() {
            info!("SIGHUP received: reloading the config");
            crate::systemd::reloading();
            reloader.reload().await;
            crate::systemd::ready("serving (config reloaded)");
        }
    })
}

impl Reloader {
    async fn reload(&mut self) {
        let new = match (self.sources.load)() {
            Ok(config) => config,
            Err(err) => {
                error!(error = %err, "the config does not load; nothing else was reloaded");
                // Token files are still read again: a token taken out of its file must stop
                // working even while an unrelated key has a typo.
                if let Err(err) = self.auth.reload(&self.current.auth) {
                    error!(error = %err, "cannot read a token file; its scope has no token until it can be read");
                }
                self.count("failed");
                return;
            }
        };
        let changed = changed_keys(&self.current, &new);
        let mut applied: Vec<&str> = Vec::new();
        let mut problems = 0usize;

        match self.sources.log_level.set(&new.log_level) {
            Ok(LevelChange::Applied) => applied.push("log_level"),
            Ok(LevelChange::Unchanged) => {}
            Ok(LevelChange::Overridden) => {
                warn!("log_level changed, but RUST_LOG is set and decides the log filter")
            }
            Err(err) => {
                problems += 1;
                error!(error = %err, "cannot apply log_level");
            }
        }
        // Token files are read again even when their names did not change: rotating a token is
        // editing its file.
        match self.auth.reload(&new.auth) {
            Ok(()) => applied.push("auth"),
            Err(err) => {
                problems += 1;
                error!(error = %err, "cannot read a token file; its scope has no token until it can be read");
            }
        }
        if self.evaluate_limit.reload(&new.limits) {
            applied.push("limits");
        }
        if let Some(upstream) = &self.upstream
            && upstream.reconfigure(&new.upstream)
        {
            applied.push("upstream");
        }
        match (&self.tls, new.http.tls_files()) {
            (Some(tls), Some(files)) => match tls.reload(&files) {
                Ok(()) => applied.push("http.tls"),
                Err(err) => {
                    problems += 1;
                    error!(error = %err, "cannot read the HTTPS certificate; the one in force stays");
                }
            },
            (None, None) => {}
            // Plain HTTP to HTTPS or back is a new listener.
            _ => warn!("HTTPS turned on or off: takes effect after a restart"),
        }
        if let Some(dir) = new.policies_dir.clone() {
            let imported = crate::daemon::import_policies(
                dir,
                Arc::clone(&self.policies),
                Arc::clone(&self.rego),
                self.rego_settings,
            )
            .await;
            match imported {
                Ok(()) => applied.push("policies_dir"),
                Err(err) => {
                    problems += 1;
                    error!(error = %format!("{err:#}"), "cannot import the policy directory; the policies in force stay");
                }
            }
        }

        if !new.auth.enabled() && !self.current.http_listen.ip().is_loopback() {
            warn!(
                addr = %self.current.http_listen,
                "the API listens beyond loopback with no [auth] token files: anyone who can reach it may change policies"
            );
        }
        let restart: Vec<&String> = changed
            .iter()
            .filter(|key| !RELOADABLE.iter().any(|prefix| key.starts_with(prefix)))
            .collect();
        if !restart.is_empty() {
            warn!(keys = ?restart, "changed in the config, applied only at a restart");
        }
        self.current = keep_unreloadable(&self.current, new);
        info!(applied = ?applied, problems, "config reloaded");
        self.count(if problems == 0 { "applied" } else { "partial" });
    }

    fn count(&self, outcome: &'static str) {
        self.reloads.count(outcome);
    }
}

/// `new`'s reloadable keys on `old`'s others: what is in force after a reload.
fn keep_unreloadable(old: &Config, new: Config) -> Config {
    Config {
        log_level: new.log_level,
        auth: new.auth,
        limits: new.limits,
        upstream: new.upstream,
        policies_dir: new.policies_dir,
        http: agent_app::config::HttpConfig {
            tls_cert_file: new.http.tls_cert_file,
            tls_key_file: new.http.tls_key_file,
            ..old.http.clone()
        },
        ..old.clone()
    }
}

/// The dotted keys whose values differ between `old` and `new`.
fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
    let flat = |config: &Config| {
        let mut keys = BTreeMap::new();
        if let Ok(value) = toml::Value::try_from(config) {
            flatten("", &value, &mut keys);
        }
        keys
    };
    let (old, new) = (flat(old), flat(new));
    let mut changed: Vec<String> = old
        .iter()
        .filter(|(key, value)| new.get(*key) != Some(value))
        .map(|(key, _)| key.clone())
        .collect();
    changed.extend(new.keys().filter(|key| !old.contains_key(*key)).cloned());
    changed.sort();
    changed.dedup();
    changed
}

fn flatten(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, toml::Value>) {
    match value {
        toml::Value::Table(table) => {
            for (key, value) in table {
                let key = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&key, value, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_keys_are_named_and_only_reloadable_ones_are_taken() {
        let old = Config::default();
        let mut new = Config {
            log_level: "debug".into(),
            ..Config::default()
        };
        new.audit.capacity += 1;
        new.limits.evaluate_per_second = 5;
        assert_eq!(
            changed_keys(&old, &new),
            vec!["audit.capacity", "limits.evaluate_per_second", "log_level"]
        );
        let kept = keep_unreloadable(&old, new);
        assert_eq!(kept.log_level, "debug");
        assert_eq!(kept.limits.evaluate_per_second, 5);
        assert_eq!(kept.audit.capacity, old.audit.capacity);
    }
}
