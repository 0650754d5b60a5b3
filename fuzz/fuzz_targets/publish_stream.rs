//! The streaming publish scanner, against the buffered checks it stands in for:
//! - chunking never changes what it produces;
//! - whenever it succeeds, checking its skeleton gives exactly the verdict that checking the
//!   whole body would (the tarball data only has to be non-empty for either);
//! - nothing outside `_attachments` differs between the skeleton and the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phantom_broker::npm::body::{check_put_packument, parse_strict};
use phantom_broker::npm::scan::PublishScanner;
use phantom_broker::npm::PackageName;

fn scan(body: &[u8], chunk: usize) -> Result<(Vec<u8>, u64), String> {
    let mut s = PublishScanner::new(1 << 20);
    for c in body.chunks(chunk) {
        s.feed(c).map_err(|e| e.to_string())?;
    }
    s.finish().map(|r| (r.skeleton, r.data_bytes)).map_err(|e| e.to_string())
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, body)) = data.split_first() else { return };
    let whole = scan(body, body.len().max(1));
    let chunked = scan(body, (seed as usize % 17) + 1);
    assert_eq!(whole, chunked, "chunking changed the scan");
    let Ok((skeleton, _)) = whole else { return };
    let pkg = PackageName::parse("@acme/web").unwrap();
    let streamed = check_put_packument(&pkg, &skeleton);
    let buffered = check_put_packument(&pkg, body);
    assert_eq!(format!("{streamed:?}"), format!("{buffered:?}"), "the skeleton and the body got different verdicts");
    if let (Ok(mut a), Ok(mut b)) = (parse_strict(&skeleton), parse_strict(body)) {
        if let (Some(a), Some(b)) = (a.as_object_mut(), b.as_object_mut()) {
            let (ta, tb) = (a.remove("_attachments"), b.remove("_attachments"));
            assert_eq!(a, b, "the skeleton differs outside _attachments");
            let keys = |v: &Option<serde_json::Value>| v.as_ref().and_then(|v| v.as_object()).map(|o| o.keys().cloned().collect::<Vec<_>>());
            assert_eq!(keys(&ta), keys(&tb));
        }
    }
});
