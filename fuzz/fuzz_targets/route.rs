//! The route classifier and package names. Beyond "never panics": a classified request's
//! rebuilt upstream path must classify again to the same request, so that what the broker
//! checked is exactly what the upstream reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phantom_broker::npm::{classify, PackageName, Route};

const METHODS: [&str; 8] = ["GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS", "BREW"];

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let method = http::Method::from_bytes(METHODS[m as usize % METHODS.len()].as_bytes()).unwrap();
    let (path, query) = match text.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (text, None),
    };
    if let Ok(Route::Registry(req)) = classify(&method, path, query) {
        let rebuilt = req.upstream_path();
        let (p, q) = match rebuilt.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rebuilt.as_str(), None),
        };
        match classify(&method, p, q) {
            Ok(Route::Registry(again)) => {
                assert_eq!(again, req, "{rebuilt} classified differently from {text}");
            }
            other => panic!("{text} -> {rebuilt} -> {other:?}"),
        }
        if let Some(pkg) = &req.package {
            assert!(!pkg.is_legacy() || req.is_read(), "a legacy name was classified as a write");
        }
    }
    if let Ok(name) = PackageName::parse(text) {
        let again = PackageName::parse(name.as_str()).unwrap();
        assert_eq!(again, name);
        assert!(name.as_str().len() <= 214 && name.as_str().is_ascii());
    }
});
