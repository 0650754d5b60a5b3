//! One publish body, framed many ways through the write gate (`StreamGate`, from `pipeline::gate`),
//! as the broker streams it upstream:
//! - what the gate lets out before the verdict is a prefix of the body that never holds the
//!   byte closing the top-level value, nor the last byte: the upstream never has a whole
//!   document or a whole request before the broker decides;
//! - for a body the gate reads to its end, what it let out, what it holds for after the
//!   verdict and its skeleton are the same for every framing, what it let out plus what it
//!   held is exactly the body, and the checks give the skeleton the verdict the whole body gets;
//! - empty frames change nothing.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use phantom_broker::npm::body::check_put_packument;
use phantom_broker::npm::PackageName;
use phantom_broker::StreamGate;

#[derive(Debug, PartialEq)]
struct Outcome {
    before: Vec<u8>,
    /// `Ok((held, skeleton))` when the gate read the body to its end.
    end: Result<(Vec<u8>, Vec<u8>), String>,
}

/// Frame sizes from a seed: a small generator, zeros (empty frames) included.
fn frames(seed: u8, len: usize) -> Vec<usize> {
    let mut x = u32::from(seed) * 2_654_435_761 + 1;
    let mut out = Vec::new();
    let mut total = 0;
    while total < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let size = match x % 8 {
            0 => 0,
            1 => 1,
            2 => (x >> 8) as usize % 7 + 1,
            _ => (x >> 8) as usize % 4096 + 1,
        };
        total += size;
        out.push(size);
    }
    out
}

fn through(body: &[u8], sizes: &[usize]) -> Outcome {
    let mut gate = StreamGate::new(1 << 20);
    let (mut before, mut out) = (Vec::new(), Vec::new());
    let mut rest = body;
    for &size in sizes {
        let n = size.min(rest.len());
        let pushed = gate.push(Bytes::copy_from_slice(&rest[..n]), &mut out);
        rest = &rest[n..];
        before.extend(out.drain(..).flat_map(|b| b.to_vec()));
        if let Err(e) = pushed {
            return Outcome { before, end: Err(e.to_string()) };
        }
    }
    let end = gate.finish().map(|(scanned, held)| (held.concat(), scanned.skeleton)).map_err(|e| e.to_string());
    Outcome { before, end }
}

fuzz_target!(|data: &[u8]| {
    let Some((&[a, b], body)) = data.split_first_chunk::<2>() else { return };
    // For a JSON document, the byte that completes it.
    let closing = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|_| body.iter().rposition(|c| !matches!(c, b' ' | b'\t' | b'\n' | b'\r')));
    let whole = through(body, &[body.len()]);
    for seed in [a, b] {
        let framed = through(body, &frames(seed, body.len()));
        // Nothing decisive before the verdict, whatever the framing.
        assert!(body.starts_with(&framed.before), "released bytes that are not the body's");
        assert!(framed.before.len() < body.len().max(1), "released the last byte");
        if let Some(at) = closing {
            assert!(framed.before.len() <= at, "released the byte that completes the document");
        }
        // A body read to its end: the same everywhere, and nothing lost.
        match (&framed.end, &whole.end) {
            (Ok((held, skeleton)), Ok(_)) => {
                assert_eq!(framed, whole, "the framing changed what the gate did");
                assert_eq!([framed.before.as_slice(), held].concat(), body, "bytes lost or added");
                // The verdict on what the gate kept is the verdict on the whole body.
                let pkg = PackageName::parse("@acme/web").unwrap();
                let streamed = check_put_packument(&pkg, skeleton);
                assert_eq!(format!("{streamed:?}"), format!("{:?}", check_put_packument(&pkg, body)));
            }
            (Err(_), Err(_)) => {}
            _ => panic!("the framing changed whether the body was refused: {:?} / {:?}", framed.end, whole.end),
        }
    }
});
