//! The pod id: how this replica names itself in events, status and (shared mode) Redis.
//!
//! `pod_id: auto` (the default) becomes the host name plus a random suffix, fixed for the
//! life of the process: in Kubernetes the host name is the pod name, and the suffix keeps two
//! processes on one host apart. Any other value is used as given.

/// Resolves the configured `pod_id`.
pub fn resolve(configured: &str) -> String {
    let configured = configured.trim();
    if !configured.is_empty() && configured != "auto" {
        return configured.to_owned();
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "hale".to_owned());
    format!("{host}-{:06x}", rand::random::<u32>() & 0xff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_ids_are_kept_and_auto_is_stable_in_shape() {
        assert_eq!(resolve("pod-a"), "pod-a");
        let auto = resolve("auto");
        let (_, suffix) = auto.rsplit_once('-').unwrap();
        assert_eq!(suffix.len(), 6);
        assert_ne!(resolve("auto"), auto, "two processes on one host differ");
    }
}
