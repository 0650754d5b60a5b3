//! Short-lived values by key, for the console: its sessions and the sign-ins under way. In
//! memory for one replica (bounded); on Redis (`redis/mod.rs`) with an expiry for every replica.

use std::collections::HashMap;
use std::sync::Mutex;

/// The most values kept in memory at once: past it, a new one is refused.
const MAX: usize = 10_000;

#[derive(Default)]
pub struct MemoryKv(Mutex<HashMap<String, (String, u64)>>);

impl MemoryKv {
    /// Keeps `value` under `key` until `until` (unix seconds); false when full.
    pub(crate) fn put(&self, key: &str, value: &str, until: u64, now: u64) -> bool {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX {
            map.retain(|_, (_, u)| *u > now);
            if map.len() >= MAX {
                return false;
            }
        }
        map.insert(key.to_owned(), (value.to_owned(), until));
        true
    }

    pub(crate) fn get(&self, key: &str, now: u64) -> Option<String> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key).filter(|(_, until)| *until > now).map(|(v, _)| v.clone())
    }

    /// The value, removed: it can be taken once.
    pub(crate) fn take(&self, key: &str, now: u64) -> Option<String> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(key).filter(|(_, until)| *until > now).map(|(v, _)| v)
    }

    pub(crate) fn delete(&self, key: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }

    pub(crate) fn sweep(&self, now: u64) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, (_, until)| *until > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_expire_and_are_taken_once() {
        let kv = MemoryKv::default();
        assert!(kv.put("s", "v", 100, 10));
        assert_eq!(kv.get("s", 99).as_deref(), Some("v"));
        assert_eq!(kv.get("s", 100), None, "expired");
        assert_eq!(kv.take("s", 50).as_deref(), Some("v"));
        assert_eq!(kv.take("s", 50), None, "taken once");
        kv.put("d", "v", 100, 10);
        kv.delete("d");
        assert_eq!(kv.get("d", 10), None);
    }
}
