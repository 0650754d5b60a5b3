use super::*;
use serde_json::json;

fn name(s: &str) -> PackageName {
    PackageName::parse(s).unwrap()
}

/// A publish body as libnpmpublish builds it.
fn publish_body(pkg: &str, version: &str) -> Value {
    json!({
        "_id": pkg,
        "name": pkg,
        "description": "test",
        "dist-tags": { "latest": version },
        "versions": { version: {
            "name": pkg, "version": version, "_id": format!("{pkg}@{version}"),
            "dist": { "integrity": "sha512-x", "shasum": "00", "tarball": "http://127.0.0.1/x.tgz" }
        }},
        "access": null,
        "_attachments": { format!("{pkg}-{version}.tgz"): {
            "content_type": "application/octet-stream", "data": "H4sIAAAA", "length": 6
        }}
    })
}

fn put(pkg: &str, body: &Value) -> Result<PutPackument, BodyError> {
    check_put_packument(&name(pkg), body.to_string().as_bytes())
}

#[test]
fn valid_publishes() {
    for pkg in ["web", "@acme/web"] {
        let got = put(pkg, &publish_body(pkg, "1.0.0-beta.1")).unwrap();
        assert_eq!(
            got,
            PutPackument::Publish(PublishManifest { version: "1.0.0-beta.1".into(), dist_tags: vec!["latest".into()] })
        );
    }
    let mut with_provenance = publish_body("@acme/web", "1.0.0");
    with_provenance["_attachments"]["@acme/web-1.0.0.sigstore"] = json!({"data": "{}"});
    assert!(put("@acme/web", &with_provenance).is_ok());
}

#[test]
fn publish_violations() {
    type Edit = fn(&mut Value);
    let table: &[(&str, Edit, BodyError)] = &[
        ("name differs", |b| b["name"] = json!("other"), BodyError::NameMismatch),
        (
            "name missing",
            |b| {
                b.as_object_mut().unwrap().remove("name");
            },
            BodyError::NameMismatch,
        ),
        ("name not a string", |b| b["name"] = json!(["web"]), BodyError::NameMismatch),
        ("_id differs", |b| b["_id"] = json!("other"), BodyError::IdMismatch),
        (
            "two versions",
            |b| b["versions"]["2.0.0"] = json!({"name": "web", "version": "2.0.0"}),
            BodyError::VersionCount,
        ),
        ("no versions", |b| b["versions"] = json!({}), BodyError::VersionCount),
        ("versions not an object", |b| b["versions"] = json!([1]), BodyError::VersionCount),
        ("manifest name differs", |b| b["versions"]["1.0.0"]["name"] = json!("other"), BodyError::ManifestMismatch),
        (
            "manifest version differs",
            |b| b["versions"]["1.0.0"]["version"] = json!("9.9.9"),
            BodyError::ManifestMismatch,
        ),
        ("manifest _id differs", |b| b["versions"]["1.0.0"]["_id"] = json!("other@1.0.0"), BodyError::ManifestMismatch),
        ("tag points elsewhere", |b| b["dist-tags"]["latest"] = json!("0.0.1"), BodyError::BadDistTags),
        ("no tags", |b| b["dist-tags"] = json!({}), BodyError::BadDistTags),
        ("bad tag name", |b| b["dist-tags"] = json!({"a/b": "1.0.0"}), BodyError::BadDistTags),
        (
            "attachment for another name",
            |b| b["_attachments"] = json!({"other-1.0.0.tgz": {"data": "AA"}}),
            BodyError::AttachmentMismatch,
        ),
        (
            "attachment for another version",
            |b| b["_attachments"] = json!({"web-2.0.0.tgz": {"data": "AA"}}),
            BodyError::AttachmentMismatch,
        ),
        (
            "extra attachment",
            |b| b["_attachments"]["other-1.0.0.tgz"] = json!({"data": "AA"}),
            BodyError::AttachmentMismatch,
        ),
        ("empty tarball", |b| b["_attachments"]["web-1.0.0.tgz"]["data"] = json!(""), BodyError::AttachmentMismatch),
    ];
    for (what, edit, want) in table {
        let mut body = publish_body("web", "1.0.0");
        edit(&mut body);
        assert_eq!(put("web", &body), Err(want.clone()), "{what}");
    }
}

#[test]
fn bad_versions() {
    for v in ["", "v1.0.0", "1.0.0 ", "1/0", "latest"] {
        let body = publish_body("web", v);
        assert_eq!(put("web", &body), Err(BodyError::BadVersion), "{v:?}");
    }
}

#[test]
fn strict_json() {
    let dup_top = br#"{"name":"web","name":"other"}"#;
    assert_eq!(parse_strict(dup_top), Err(BodyError::DuplicateKey));
    let dup_deep = br#"{"a":[{"b":{"c":1,"c":2}}]}"#;
    assert_eq!(parse_strict(dup_deep), Err(BodyError::DuplicateKey));
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert_eq!(parse_strict(deep.as_bytes()), Err(BodyError::InvalidJson));
    assert_eq!(parse_strict(b"{\"a\":\"\xff\"}"), Err(BodyError::InvalidJson));
    assert_eq!(parse_strict(b"{} {}"), Err(BodyError::InvalidJson));
    assert_eq!(parse_strict(b""), Err(BodyError::InvalidJson));
    assert!(parse_strict(br#"{"a":[1,2.5,-3,true,null,"x"],"b":{}}"#).is_ok());
    assert_eq!(check_put_packument(&name("web"), b"[1]"), Err(BodyError::NotAnObject));
}

#[test]
fn dist_tag_values() {
    assert_eq!(check_dist_tag_value(b"\"1.2.3\""), Ok("1.2.3".into()));
    for bad in [&b"1.2.3"[..], b"\"\"", b"{\"v\":\"1\"}", b"\"latest\"", b"\"1.0\" x"] {
        assert_eq!(check_dist_tag_value(bad), Err(BodyError::BadDistTagValue));
    }
}

#[test]
fn revisions() {
    let owner = json!({"_id": "web", "_rev": "3-a", "maintainers": [{"name": "bob"}]});
    assert_eq!(check_put_revision(&name("web"), owner.to_string().as_bytes()), Ok(PutRevision::Owner));
    let unpublish = json!({"_id": "web", "name": "web", "_rev": "3-a", "versions": {}});
    assert_eq!(check_put_revision(&name("web"), unpublish.to_string().as_bytes()), Ok(PutRevision::UnpublishVersion));
    let other = json!({"_id": "web", "_rev": "3-a", "dist-tags": {}});
    assert_eq!(check_put_revision(&name("web"), other.to_string().as_bytes()), Err(BodyError::UnrecognizedRevision));
    let wrong = json!({"_id": "other", "maintainers": []});
    assert_eq!(check_put_revision(&name("web"), wrong.to_string().as_bytes()), Err(BodyError::IdMismatch));
}

#[test]
fn deprecates() {
    let upstream = json!({"_id": "web", "name": "web", "_rev": "2-a", "dist-tags": {"latest": "1.0.0"},
        "versions": {"1.0.0": {"name": "web", "version": "1.0.0"}, "0.9.0": {"name": "web", "version": "0.9.0", "deprecated": "old"}}});
    let mut body = upstream.clone();
    body["versions"]["1.0.0"]["deprecated"] = json!("use 2");
    body["versions"]["0.9.0"]["deprecated"] = json!("");
    let PutPackument::Deprecate(doc) = put("web", &body).unwrap() else { panic!("not a deprecate") };
    assert_eq!(check_deprecate(&doc, upstream.as_object().unwrap()), Ok(()));

    let mut sneaky = body.clone();
    sneaky["dist-tags"]["latest"] = json!("0.9.0");
    let PutPackument::Deprecate(doc) = put("web", &sneaky).unwrap() else { panic!("not a deprecate") };
    assert_eq!(check_deprecate(&doc, upstream.as_object().unwrap()), Err(BodyError::DeprecateChangesMore));

    type Edit = fn(&mut Value);
    let changes_more: &[(&str, Edit)] = &[
        ("a version added", |b| b["versions"]["9.9.9"] = json!({"name": "web", "version": "9.9.9"})),
        ("a version removed", |b| {
            b["versions"].as_object_mut().unwrap().remove("0.9.0");
        }),
        ("a manifest field changed", |b| b["versions"]["1.0.0"]["main"] = json!("evil.js")),
        ("a manifest field removed", |b| {
            b["versions"]["1.0.0"].as_object_mut().unwrap().remove("version");
        }),
        ("a top-level key added", |b| b["readme"] = json!("x")),
        ("a top-level key removed", |b| {
            b.as_object_mut().unwrap().remove("_rev");
        }),
        ("attachments added", |b| b["_attachments"] = json!({"web-9.9.9.tgz": {"data": "QUJD"}})),
    ];
    for (what, edit) in changes_more {
        let mut changed = body.clone();
        edit(&mut changed);
        let Ok(PutPackument::Deprecate(doc)) = put("web", &changed) else { continue };
        assert_eq!(
            check_deprecate(&doc, upstream.as_object().unwrap()),
            Err(BodyError::DeprecateChangesMore),
            "{what}"
        );
    }
}

#[test]
fn publish_bodies_cannot_rewrite_the_package() {
    type Edit = fn(&mut Value);
    let table: &[(&str, Edit, BodyError)] = &[
        ("a deprecated version", |b| b["versions"]["1.0.0"]["deprecated"] = json!(""), BodyError::PublishRewrites),
        ("a _rev", |b| b["_rev"] = json!("3-a"), BodyError::PublishRewrites),
        ("users (stars)", |b| b["users"] = json!({"bob": true}), BodyError::PublishRewrites),
        ("maintainers", |b| b["maintainers"] = json!([{"name": "eve"}]), BodyError::PublishRewrites),
        ("time", |b| b["time"] = json!({}), BodyError::PublishRewrites),
        (
            "an unknown key",
            |b| b["readmeFilename"] = json!("x"),
            BodyError::UnexpectedPublishKey("readmeFilename".into()),
        ),
        ("an unknown key, quoted safely", |b| b["a\nb`c"] = json!(1), BodyError::UnexpectedPublishKey("a?b?c".into())),
        ("a readme that is not a string", |b| b["readme"] = json!({"a": 1}), BodyError::BadReadme),
    ];
    for (what, edit, want) in table {
        let mut body = publish_body("web", "1.0.0");
        edit(&mut body);
        assert_eq!(put("web", &body), Err(want.clone()), "{what}");
        assert_eq!(check_stage_publish(&name("web"), body.to_string().as_bytes()), Err(want.clone()), "stage: {what}");
    }
    // yarn 1 and yarn 4 send the readme at the top level.
    let mut body = publish_body("web", "1.0.0");
    body["readme"] = json!("# web\n");
    assert!(put("web", &body).is_ok());
    assert!(check_stage_publish(&name("web"), body.to_string().as_bytes()).is_ok());
}

#[test]
fn version_removals_change_nothing_else() {
    let upstream = json!({"_id": "web", "name": "web", "_rev": "4-a", "maintainers": [{"name": "pub"}],
        "dist-tags": {"latest": "2.0.0", "next": "2.0.0", "old": "1.0.0"},
        "versions": {"1.0.0": {"v": 1}, "1.5.0": {"v": 15}, "2.0.0": {"v": 2}},
        "time": {"1.0.0": "t1"}, "_attachments": {}, "_revisions": ["4-a"]});
    let upstream = upstream.as_object().unwrap();
    // What npm sends for `npm unpublish web@2.0.0`: latest moves to the highest remaining version.
    let good = json!({"_id": "web", "name": "web", "_rev": "4-a", "maintainers": [{"name": "pub"}],
        "dist-tags": {"latest": "1.5.0", "old": "1.0.0"},
        "versions": {"1.0.0": {"v": 1}, "1.5.0": {"v": 15}}, "time": {"1.0.0": "t1"}});
    assert_eq!(check_unpublish_version(good.to_string().as_bytes(), upstream), Ok(()));
    // Keys npm leaves out may also be sent as the upstream has them.
    let mut echoed = good.clone();
    echoed["_attachments"] = json!({});
    echoed["_revisions"] = json!(["4-a"]);
    assert_eq!(check_unpublish_version(echoed.to_string().as_bytes(), upstream), Ok(()));
    type Edit = fn(&mut Value);
    let table: &[(&str, Edit)] = &[
        ("nothing removed", |b| b["versions"]["2.0.0"] = json!({"v": 2})),
        ("a kept version changed", |b| b["versions"]["1.0.0"]["v"] = json!(9)),
        ("latest moved to an old version", |b| b["dist-tags"]["latest"] = json!("1.0.0")),
        ("an unrelated tag moved", |b| b["dist-tags"]["old"] = json!("1.5.0")),
        ("an unrelated tag dropped", |b| {
            b["dist-tags"].as_object_mut().unwrap().remove("old");
        }),
        ("a tag added", |b| b["dist-tags"]["evil"] = json!("1.0.0")),
        ("maintainers changed", |b| b["maintainers"] = json!([{"name": "eve"}])),
        ("a version added", |b| b["versions"]["9.9.9"] = json!({})),
        ("an attachment added", |b| b["_attachments"] = json!({"web-9.9.9.tgz": {"data": "QUJD"}})),
        ("an attachment of a kept version", |b| b["_attachments"] = json!({"web-1.0.0.tgz": {"data": "QUJD"}})),
        ("revisions rewritten", |b| b["_revisions"] = json!(["9-z"])),
        ("time rewritten", |b| b["time"] = json!({"1.0.0": "forged"})),
        ("a maintainer list left out", |b| {
            b.as_object_mut().unwrap().remove("maintainers");
        }),
        ("a new top-level key", |b| b["readme"] = json!("rewritten")),
    ];
    for (what, edit) in table {
        let mut body = good.clone();
        edit(&mut body);
        assert_eq!(
            check_unpublish_version(body.to_string().as_bytes(), upstream),
            Err(BodyError::UnpublishChangesMore),
            "{what}"
        );
    }
}

#[test]
fn access_bodies() {
    assert_eq!(check_access(br#"{"access":"public"}"#), Ok(()));
    assert_eq!(check_access(br#"{"access":"restricted"}"#), Ok(()));
    for bad in [
        &br#"{"publish_requires_tfa":false}"#[..],
        br#"{"access":"public","automation_token_overrides_tfa":true}"#,
        br#"{"access":"secret"}"#,
        b"[]",
    ] {
        assert_eq!(check_access(bad), Err(BodyError::BadAccessBody));
    }
}

#[test]
fn a_write_that_is_no_action_is_refused_as_such() {
    // `npm star` and `npm unstar` (npm/cli lib/commands/star.js): the packument's id and
    // revision, and its `users`.
    let star = json!({"_id": "web", "_rev": "3-a", "users": {"bob": true}});
    let err = check_put_packument(&name("web"), star.to_string().as_bytes()).unwrap_err();
    assert_eq!((err.status(), err.to_string().contains("`npm star`")), (403, true), "{err}");
    let other = json!({"_id": "web", "name": "web", "dist-tags": {"latest": "9.9.9"}});
    let err = check_put_packument(&name("web"), other.to_string().as_bytes()).unwrap_err();
    assert!(matches!(err, BodyError::NotAnAction(_)) && err.status() == 403, "{err}");
}
