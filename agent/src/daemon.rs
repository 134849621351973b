//! `mesh-agent run`: opens the store, loads policies, starts the audit writer and the HTTP API, and
//! shuts down cleanly on SIGTERM or SIGINT (stop accepting, finish requests, flush the audit, exit 0).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tracing::{error, info, warn};

use agent_api::{self as api, AppState};
use agent_base::Fatal;
use agent_decision::Decider;
use agent_decision::audit::AuditLog;
use agent_decision::event::Dedup;
use agent_decision::outbox::Outbox;
use agent_engine::Engine;
use agent_engine::rego::RegoEngine;
use agent_mesh::{Mesh, OnMerged};
use agent_mqtt::MqttSections;
use agent_policy::opa::{Evaluator, RegoService};
use agent_policy::rollout::RolloutService;
use agent_policy::{PolicyService, files};
use agent_store::Store;

use agent_app::config::Config;
use agent_app::metrics::Metrics;

/// The data file's name inside `data_dir`.
pub const DATA_FILE: &str = "agent.redb";

/// Imports the policy files in `dir`: every file is read and checked before anything is imported;
/// Rego goes first, since incident rules may name Rego rules. A directory that does not compile
/// changes nothing and says which file.
pub async fn import_policies(
    dir: std::path::PathBuf,
    policies: Arc<PolicyService>,
    rego: Arc<RegoService>,
    rego_settings: agent_engine::rego::RegoSettings,
) -> anyhow::Result<()> {
    let (rego_changed, summary) = tokio::task::spawn_blocking(move || {
        let rego_dir = files::rego::read_dir(&dir)?;
        rego_dir.compile(&dir, rego_settings)?;
        let rules = files::rules::read_dir(&dir)?;
        let rego_changed = files::rego::import(&rego, rego_dir)?;
        anyhow::Ok((rego_changed, files::rules::import(&policies, rules)?))
    })
    .await??;
    info!(
        created = summary.created,
        updated = summary.updated,
        unchanged = summary.unchanged,
        rego_documents_changed = rego_changed,
        "policy files imported"
    );
    Ok(())
}

/// Runs the agent until a shutdown signal; SIGHUP reloads what `reload` can.
pub async fn run(config: Config, reload: crate::reload::Sources) -> anyhow::Result<()> {
    let hangups = crate::reload::hangups();
    let node_id = config.resolved_node_id();
    info!(node_id = %node_id, version = env!("CARGO_PKG_VERSION"), "starting mesh-agent");
    let metrics = Metrics::new();
    // Files the API needs, read before anything starts: a bad one stops the start at once.
    let auth = agent_http::Auth::new(&config.auth, metrics.auth.clone())?;
    let tls = config
        .http
        .tls_files()
        .map(|files| agent_http::Tls::new(&files))
        .transpose()?;

    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    let data_file = config.data_dir.join(DATA_FILE);
    let store = {
        let path = data_file.clone();
        let node = node_id.clone();
        tokio::task::spawn_blocking(move || Store::open(&path, &node)).await??
    };
    let store = Arc::new(store);
    info!(path = %data_file.display(), "data file open");

    let rego_settings = config.rego.settings();
    agent_engine::rego::set_memory_limit(config.rego.max_memory_bytes);
    let rego_engine = Arc::new(RegoEngine::new(rego_settings));
    // Bundle keys are read before anything is activated: a bad key file stops the start.
    let verification = agent_policy::opa::bundle::Verification::load(&config.bundle)
        .map_err(anyhow::Error::msg)?;
    let bundle_limits = agent_policy::opa::bundle::Limits {
        max_bytes: config.bundle.max_bytes,
        max_uncompressed_bytes: config.bundle.max_uncompressed_bytes,
        max_files: config.bundle.max_files,
    };
    let rego = Arc::new(
        RegoService::with_bundles(
            Arc::clone(&store),
            Arc::clone(&rego_engine),
            rego_settings,
            metrics.opa.clone(),
            verification,
            bundle_limits,
        )?
        .with_max_data_bytes(config.rego.max_data_bytes),
    );
    // One count of evaluations and failures for incidents and Rego decisions: canaries are
    // judged by it.
    let health = Arc::new(agent_engine::Health::default());
    let evaluator = Arc::new(
        Evaluator::new(
            rego_engine.clone(),
            metrics.opa.clone(),
            config.rego.fail_mode,
            Duration::from_secs(config.rego.cache_ttl_sec),
            config.rego.cache_entries,
        )
        .with_health(Arc::clone(&health)),
    );
    let engine =
        Arc::new(Engine::new(rego_engine, metrics.engine.clone()).with_health(Arc::clone(&health)));
    // One reader of the stored rollouts for both services (and the rollout service after them).
    let policies = Arc::new(
        PolicyService::new(Arc::clone(&store), Arc::clone(&engine))?
            .with_rollout_reader(rego.rollout_reader()),
    );

    if let Some(dir) = &config.policies_dir {
        // A directory that does not compile stops the start.
        import_policies(
            dir.clone(),
            Arc::clone(&policies),
            Arc::clone(&rego),
            rego_settings,
        )
        .await?;
    }

    // MQTT (when configured): the outbox is written by the audit writer, in the decision's
    // transaction; the decider turns matched rules into actions for it.
    let sections = MqttSections {
        mqtt: &config.mqtt,
        outbox: &config.outbox,
        upstream: &config.upstream,
        summary: &config.summary,
        decision_logs_keep: config.decision_logs.keep,
    };
    let outbox = agent_mqtt::open_outbox(sections, store.database(), metrics.outbox.clone())?;
    let fatal = Fatal::new();
    let (audit, audit_writer) = AuditLog::start_with_outbox(
        store.database(),
        config.audit,
        metrics.audit.clone(),
        fatal.clone(),
        outbox.clone(),
    )?;
    let decision_log = agent_decision::decision_log::DecisionLog::start(
        &config.decision_logs,
        &node_id,
        config.mqtt.max_message_bytes,
        outbox.is_some().then(|| audit.clone()),
        metrics.decision_logs.clone(),
    );
    let (decision_log, decision_log_task) = match decision_log {
        Some((log, task)) => (Some(log), task),
        None => (None, None),
    };
    let mut decider = Decider::with_config(
        Arc::clone(&engine),
        audit.clone(),
        node_id.clone(),
        Dedup::new(config.dedup_window()),
        config.decisions,
    )
    .with_metrics(metrics.decisions.clone())
    .with_decision_log(decision_log.clone());
    if config.mesh.tls_dir.is_some() {
        let seen = store.members_seen()?.unwrap_or(0);
        decider = decider.with_mesh(seen as usize, config.mesh.dead_node_grace());
    }
    match decider.reopen_history() {
        Ok(0) => {}
        Ok(entries) => info!(entries, "history facts re-read from the audit ring"),
        Err(err) => warn!(error = %err, "cannot re-read history facts from the audit ring"),
    }
    match decider.reopen_windows(config.dedup_window()) {
        Ok(0) => {}
        Ok(open) => info!(open, "de-duplication windows re-opened from the audit ring"),
        Err(err) => {
            warn!(error = %err, "cannot re-open de-duplication windows from the audit ring")
        }
    }
    let (decider, mqtt) = agent_mqtt::start(
        sections,
        &node_id,
        decider,
        audit.clone(),
        outbox.clone(),
        metrics.upstream.clone(),
    )?;

    let rollouts = Arc::new(RolloutService::new(
        Arc::clone(&store),
        Arc::clone(&policies),
        Arc::clone(&rego),
    ));
    let rollout_wake = Arc::new(tokio::sync::Notify::new());
    let mesh = if config.mesh.tls_dir.is_some() {
        let policies = Arc::clone(&policies);
        let rego = Arc::clone(&rego);
        let rollout_wake = Arc::clone(&rollout_wake);
        let on_merged: OnMerged = Arc::new(move |outcome| {
            // A rollout changes what both services apply here (canary candidates, shadows).
            // Documents first: merged incident rules may name merged Rego rules.
            if (outcome.documents_changed || outcome.rollouts_changed)
                && let Err(err) = rego.reload()
            {
                error!(error = %err, "reloading Rego after a merge");
            }
            if (outcome.policies_changed || outcome.rollouts_changed)
                && let Err(err) = policies.reload()
            {
                error!(error = %err, "reloading policies after a merge");
            }
            if outcome.rollouts_changed {
                rollout_wake.notify_one();
            }
        });
        Some(Arc::new(
            Mesh::start(
                &node_id,
                config.mesh.clone(),
                Arc::clone(&store),
                metrics.mesh.clone(),
                on_merged,
            )
            .await?,
        ))
    } else {
        info!(
            "no mesh.tls_dir: running alone (give --tls-dir with certificates from `mesh-agent certs` to join a mesh)"
        );
        None
    };

    let mesh_link = mesh.as_ref().map(|mesh| {
        agent_mesh_link::spawn(Arc::clone(mesh), Arc::clone(&decider), Arc::clone(&store))
    });
    let rollout_report = agent_rollout::LocalReport::default();
    let rollout_controller = agent_rollout::spawn(
        Arc::clone(&rollouts),
        Arc::clone(&engine),
        Arc::clone(&rego),
        mesh.clone(),
        Arc::clone(&rollout_wake),
        rollout_report.clone(),
    );
    // Bundle servers are polled by one node of the mesh at a time; every node gossips the
    // revisions of its active bundles.
    let poller = agent_bundle_poll::spawn(
        Arc::clone(&rego),
        mesh.clone(),
        node_id.clone(),
        config.bundles.clone(),
        config.bundle.max_bytes,
    )?;

    let evaluate_limit =
        agent_http::EvaluateLimit::new(&config.limits, metrics.http.rate_limited.clone());
    let upstream = mqtt.as_ref().map(|m| m.upstream());
    let reloader = crate::reload::Reloader {
        sources: reload,
        current: config.clone(),
        auth: Arc::clone(&auth),
        evaluate_limit: Arc::clone(&evaluate_limit),
        tls: tls.clone(),
        upstream: upstream.clone(),
        policies: Arc::clone(&policies),
        rego: Arc::clone(&rego),
        rego_settings,
        reloads: metrics.reloads.clone(),
    };

    let state = AppState {
        policies,
        rego,
        evaluator,
        decider,
        audit,
        metrics: Arc::new(metrics.registry),
        node_id: Arc::from(node_id.as_str()),
        store: Arc::clone(&store),
        mesh: mesh.clone(),
        upstream,
        decision_log: decision_log.clone(),
        rollouts,
        rollout_wake,
        rollout_report,
        bundles: api::BundlesApi {
            max_bytes: usize::try_from(config.bundle.max_bytes).unwrap_or(usize::MAX),
            configured: agent_policy::opa::bundle::configured_names(&config.bundles).into(),
        },
    };
    let listener = TcpListener::bind(config.http_listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.http_listen))?;
    info!(
        addr = %listener.local_addr()?,
        https = tls.is_some(),
        tokens = config.auth.enabled(),
        "HTTP API listening"
    );
    if !config.auth.enabled() && !config.http_listen.ip().is_loopback() {
        warn!(
            addr = %config.http_listen,
            "the API listens beyond loopback with no [auth] token files: anyone who can reach it may change policies"
        );
    }

    let http_metrics = metrics.http.clone();
    let server = agent_http::spawn(
        listener,
        api::router(
            state,
            config.max_body_bytes,
            api::Guards {
                auth,
                evaluate_limit,
            },
        ),
        config.http.limits(),
        http_metrics,
        tls,
        Box::pin(shutdown_signal(fatal.clone(), outbox.clone())),
    );
    // The store is open, the listener bound (connections queue until the server task runs), and
    // with a mesh the gossip socket is bound: what depends on the agent may start.
    crate::systemd::ready(if mesh.is_some() {
        "serving, in a mesh"
    } else {
        "serving, alone"
    });
    let watchdog = crate::systemd::spawn_watchdog(fatal.clone());
    let reloads = crate::reload::spawn(reloader, hangups);
    // The server task ends when the shutdown signal resolves, or if it panicked: then the agent
    // stops all the same, and exits non-zero so that systemd starts it again.
    let server_failed = server.await.err().map(|err| {
        error!(error = %err, "the HTTP server task failed; stopping");
        crate::systemd::stopping();
        err.to_string()
    });

    if let Some(watchdog) = watchdog {
        watchdog.abort();
    }
    reloads.abort();
    // Both hold the mesh too.
    rollout_controller.stop().await;
    poller.stop().await;
    if let Some(link) = mesh_link {
        // The link holds the mesh: once it has let go, the mesh can be shut down.
        link.stop().await;
    }
    if let Some(mesh) = mesh.and_then(Arc::into_inner) {
        mesh.shutdown().await;
    }
    // The MQTT side stops while the audit writer still runs: the intake's last decisions and the
    // publisher's last removals are committed by it.
    if let Some(mqtt) = mqtt {
        mqtt.stop().await;
    }
    if let Some(log) = &decision_log {
        log.stop();
    }
    if let Some(task) = decision_log_task {
        let _ = task.await;
    }
    info!("HTTP API stopped; flushing the audit ring");
    audit_writer.close().await;
    if let Some(reason) = fatal.reason() {
        // Non-zero: systemd (Restart=on-failure) starts the agent again on a freshly opened file.
        anyhow::bail!("stopped after a fatal fault: {reason}");
    }
    if let Some(reason) = server_failed {
        anyhow::bail!("stopped after the HTTP server task failed: {reason}");
    }
    info!("mesh-agent stopped");
    Ok(())
}

/// Resolves on SIGTERM (systemd stop), SIGINT (Ctrl-C), or a fatal fault. Then decisions waiting
/// for outbox room are turned away (503, or left unacknowledged), so the shutdown does not wait on
/// a broker that may never make room.
async fn shutdown_signal(fatal: Fatal, outbox: Option<Arc<Outbox>>) {
    tokio::select! {
        _ = signal() => {}
        reason = fatal.raised() => info!(reason = %reason, "shutting down after a fatal fault"),
    }
    crate::systemd::stopping();
    if let Some(outbox) = outbox {
        outbox.close();
    }
    // Every stage below has its own bound (HTTP drain, MQTT flush, audit commit); this one holds
    // whatever they miss, so a stop always ends and systemd never has to SIGKILL.
    std::thread::spawn(|| {
        std::thread::sleep(SHUTDOWN_BOUND);
        error!(
            bound_sec = SHUTDOWN_BOUND.as_secs(),
            "shutdown did not complete in time; exiting"
        );
        std::process::exit(1);
    });
}

/// The longest a stop may take, from the signal to the exit: under the unit's `TimeoutStopSec`
/// (30 s), so the agent exits on its own before systemd would kill it.
pub const SHUTDOWN_BOUND: std::time::Duration = std::time::Duration::from_secs(25);

async fn signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = interrupt => info!("SIGINT received"),
                    _ = term.recv() => info!("SIGTERM received"),
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
        info!("interrupt received");
    }
}
