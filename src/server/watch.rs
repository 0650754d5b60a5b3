//! Reload on change: the policy directory and the directories of the credentials' file sources
//! are watched (inotify on Linux); a change reloads both, as SIGHUP does, a moment after the
//! last event (an editor or a secret manager writes in several steps). A bad policy keeps the
//! last good one in force, and says so in the log, the audit log and the metrics.

use crate::app::App;
use crate::config::SecretSource;
use notify::{RecursiveMode, Watcher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How long the watcher waits for a burst of events to end before it reloads.
const SETTLE: Duration = Duration::from_millis(200);

/// Starts watching; the watch lasts as long as the returned value. `None` (logged) when the
/// platform cannot watch: SIGHUP and the admin API still reload.
pub(super) fn start(app: &Arc<App>) -> Option<notify::RecommendedWatcher> {
    let mut dirs: Vec<PathBuf> = vec![app.config.policy_dir.clone()];
    for c in &app.config.credentials {
        if let SecretSource::File(path) = &c.source {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                dirs.push(dir.to_owned());
            }
        }
    }
    dirs.sort();
    dirs.dedup();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let relevant = event.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_)));
        if relevant {
            // A reload already queued covers this event too.
            let _ = tx.try_send(());
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the policy and credential files: reload with SIGHUP or the admin API");
            return None;
        }
    };
    for dir in &dirs {
        if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch a directory for changes");
        }
    }
    let app = app.clone();
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            tokio::time::sleep(SETTLE).await;
            while rx.try_recv().is_ok() {}
            let outcome = crate::ops::reload(&app, "file change").await;
            tracing::info!(outcome = %outcome, "reloaded after a file change");
        }
    });
    Some(watcher)
}
