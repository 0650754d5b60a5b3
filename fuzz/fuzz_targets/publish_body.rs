//! The body checks: no panics on any input, and whatever passes as a publish really is a
//! single-version publish of the package in the URL.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phantom_broker::npm::body::{
    check_access, check_deprecate, check_dist_tag_value, check_put_packument, check_put_revision, check_stage_publish,
    check_unpublish_version, parse_strict,
};
use phantom_broker::npm::{PackageName, PutPackument};

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else { return };
    let pkg = PackageName::parse(if which % 2 == 0 { "web" } else { "@acme/web" }).unwrap();
    let upstream = serde_json::json!({"_id": pkg.as_str(), "name": pkg.as_str(), "dist-tags": {"latest": "1.0.0"},
        "versions": {"1.0.0": {"v": 1}, "0.9.0": {"v": 0}}});
    let upstream = upstream.as_object().unwrap();
    match check_put_packument(&pkg, body) {
        Ok(PutPackument::Publish(m)) => {
            let doc = parse_strict(body).unwrap();
            assert_eq!(doc["name"], pkg.as_str());
            assert_eq!(doc["versions"].as_object().unwrap().len(), 1);
            assert!(doc["versions"].get(&m.version).is_some());
            assert!(doc["versions"][&m.version].get("deprecated").is_none());
            assert!(m.dist_tags.iter().all(|t| doc["dist-tags"][t] == m.version.as_str()));
        }
        Ok(PutPackument::Deprecate(doc)) => {
            let _ = check_deprecate(&doc, upstream);
        }
        Err(_) => {}
    }
    let _ = check_stage_publish(&pkg, body);
    let _ = check_put_revision(&pkg, body);
    let _ = check_dist_tag_value(body);
    let _ = check_access(body);
    let _ = check_unpublish_version(body, upstream);
});
