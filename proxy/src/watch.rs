//! Watches the configuration directory, so that saving a file reloads the gateway as
//! Flex Local Mode does. Events are only a hint: the reload reads the whole directory
//! and validates it, so a burst of editor writes is folded into one reload.

use std::path::Path;
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// How long the directory must be quiet before a change is acted on.
pub const DEBOUNCE: Duration = Duration::from_millis(250);

/// Starts watching `dir`; every relevant change sends `()` on the returned receiver. The
/// watcher stops when the returned handle is dropped.
pub fn watch_dir(dir: &Path) -> notify::Result<(RecommendedWatcher, mpsc::UnboundedReceiver<()>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            if is_relevant(&event) {
                let _ = tx.send(());
            }
        }
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok((watcher, rx))
}

/// Changes to YAML files, and to the `..data` link Kubernetes swaps when a mounted
/// ConfigMap changes; reads and editors' scratch files are not.
fn is_relevant(event: &notify::Event) -> bool {
    if matches!(event.kind, EventKind::Access(_) | EventKind::Other) {
        return false;
    }
    event.paths.iter().any(|p| {
        let yaml = p
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"));
        let k8s_swap = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n == "..data");
        yaml || k8s_swap
    })
}

/// A digest of the directory's YAML files (names and contents), to tell a real change
/// from a rewrite of the same bytes. `None` when the directory cannot be read.
pub fn fingerprint(dir: &Path) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"))
        })
        .collect();
    names.sort();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for path in names {
        path.hash(&mut hasher);
        std::fs::read(&path).ok()?.hash(&mut hasher);
    }
    Some(hasher.finish())
}

/// Waits until no change has arrived for [`DEBOUNCE`]; `false` once the watcher is gone.
pub async fn settle(changes: &mut mpsc::UnboundedReceiver<()>) -> bool {
    loop {
        match tokio::time::timeout(DEBOUNCE, changes.recv()).await {
            Ok(Some(())) => continue,
            Ok(None) => return false,
            Err(_) => return true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, CreateKind, ModifyKind, RenameMode};

    fn event(kind: EventKind, path: &str) -> notify::Event {
        notify::Event::new(kind).add_path(path.into())
    }

    #[test]
    fn yaml_writes_and_renames_count_scratch_files_do_not() {
        let write = EventKind::Modify(ModifyKind::Data(notify::event::DataChange::Any));
        assert!(is_relevant(&event(write, "/c/api.yaml")));
        assert!(is_relevant(&event(
            EventKind::Create(CreateKind::File),
            "/c/new.YML"
        )));
        assert!(is_relevant(&event(
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            "/c/api.yaml"
        )));
        assert!(is_relevant(&event(
            EventKind::Remove(notify::event::RemoveKind::File),
            "/c/gone.yaml"
        )));
        assert!(is_relevant(&event(
            EventKind::Create(CreateKind::Any),
            "/c/..data"
        )));
        assert!(!is_relevant(&event(write, "/c/.api.yaml.swp")));
        assert!(!is_relevant(&event(write, "/c/4913")));
        assert!(!is_relevant(&event(
            EventKind::Access(AccessKind::Any),
            "/c/api.yaml"
        )));
    }

    #[test]
    fn fingerprints_follow_content_not_writes() {
        let dir = std::env::temp_dir().join(format!("rw-fp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.yaml"), "x: 1\n").unwrap();
        let first = fingerprint(&dir);
        std::fs::write(dir.join("a.yaml"), "x: 1\n").unwrap();
        assert_eq!(fingerprint(&dir), first, "same bytes rewritten");
        std::fs::write(dir.join("notes.txt"), "ignored").unwrap();
        assert_eq!(fingerprint(&dir), first, "non-YAML files do not count");
        std::fs::write(dir.join("a.yaml"), "x: 2\n").unwrap();
        assert_ne!(fingerprint(&dir), first);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(fingerprint(&dir), None);
    }

    #[test]
    fn a_burst_settles_into_one_signal() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let (tx, mut rx) = mpsc::unbounded_channel();
            for _ in 0..5 {
                tx.send(()).unwrap();
            }
            assert!(settle(&mut rx).await);
            drop(tx);
            assert!(!settle(&mut rx).await);
        });
    }
}
