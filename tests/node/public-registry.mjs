// A loopback double of the public npm registry as it behaves since late 2026, for what no real
// registry here implements: staging that creates packages, silent staging of direct publishes,
// stage-only tokens and trusted-publishing connections, and a stage's `validating` status.
// Verdaccio stays the real registry for everything it implements; this double answers only as
// the public registry is documented to, each behaviour with its source next to it:
//
//   [CLI]   npm/cli lib/commands/publish.js and lib/commands/stage/{publish,list,view,download}.js,
//           nodejs/node deps/npm/lib/commands/stage/{approve,reject}.js
//   [API]   npm/api-documentation stage.yaml (the registry's API description, PR #54, 2026-05-07)
//   [LOG]   npm's changelog: 2026-05-22 staged publishing, 2026-09-03 trusted publishing stages by
//           default, 2026-09-18 stage-only granular tokens, 2026-10-02 staging creates packages
//   [NOTES] projects' release notes on npm 11.16 (silent staging; not in npm's own docs)
//
//   node public-registry.mjs --cert CERT.pem --key KEY.pem --state STATE.json [--validating-ms N]
//
// STATE.json: {"tokens": [{"token", "user", "kind"}], "packages": {"name": ["1.0.0", ...]}}, where
// kind is "direct" (a granular token that may publish), "bypass-2fa" (may publish, but the
// registry stages its publishes), "stage-only" (may only stage) or "oidc-stage-only" (a
// trusted-publishing connection without the direct-publish opt-in).
// Serves HTTPS on 127.0.0.1 and prints one JSON line: {"url":"https://127.0.0.1:PORT/"}.
// The test's own view (never forwarded by a broker: not an npm route): GET /-/double/state.
import https from 'node:https';
import fs from 'node:fs';
import crypto from 'node:crypto';
import { parseArgs } from 'node:util';

const { values: args } = parseArgs({
  options: {
    cert: { type: 'string' },
    key: { type: 'string' },
    state: { type: 'string' },
    'validating-ms': { type: 'string', default: '1500' },
  },
});
if (!args.cert || !args.key || !args.state) {
  console.error('usage: node public-registry.mjs --cert CERT.pem --key KEY.pem --state STATE.json');
  process.exit(2);
}
const validatingMs = Number(args['validating-ms']);
const seed = JSON.parse(fs.readFileSync(args.state, 'utf8'));
const tokens = new Map(seed.tokens.map((t) => [t.token, t]));
const packages = new Map(); // name -> {versions: {v: manifest}, 'dist-tags': {}, stub?}
for (const [name, versions] of Object.entries(seed.packages ?? {})) {
  const doc = { _id: name, name, versions: {}, 'dist-tags': {} };
  for (const v of versions) {
    doc.versions[v] = { name, version: v };
    doc['dist-tags'].latest = v;
  }
  packages.set(name, doc);
}
const stages = []; // items, as [API] describes them
const requests = []; // what the test may check: method, path, npm-command, the token's user

const send = (res, status, body, headers = {}) => {
  const text = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', ...headers });
  res.end(text);
};

// Resolves only once the whole body came: a request cut off mid-body never resolves.
const readBody = (req) =>
  new Promise((resolve) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks)));
  });

// `@scope%2fname` (npm's escaping, [CLI]) or a plain name.
const unescape = (seg) => decodeURIComponent(seg);

// A stage's status: `validating` while the registry's checks run (not approvable yet), then
// `staged` [API] (the `status` field, shown by `npm stage list` since npm 11.20.0 [CLI]).
const statusOf = (item) => (Date.now() - item.stagedAt < validatingMs ? 'validating' : 'staged');
const view = (item) => {
  const { tarball, manifest, stagedAt, ...rest } = item;
  return { ...rest, status: statusOf(item) };
};

// The publish body npm sends, the same for `npm publish` and `npm stage publish` [CLI]: one
// version, its tarball as a base64 attachment. "The registry assumes the FIRST key in `versions`
// is the newest" [CLI publish.js].
const versionOf = (doc) => Object.keys(doc.versions ?? {})[0];

// Staging a package the registry does not have creates it, with a public placeholder version
// `0.0.0-stage` (`stub: true`), for scoped, unscoped and private scoped packages alike [LOG
// 2026-10-02].
const placeholder = (name) => {
  if (packages.has(name)) return;
  packages.set(name, {
    _id: name,
    name,
    description: 'Temporary package placeholder for staged publishing',
    'dist-tags': { latest: '0.0.0-stage' },
    versions: { '0.0.0-stage': { name, version: '0.0.0-stage', stub: true } },
    stub: true,
  });
};

// A version already staged cannot be published or staged again [NOTES]; a published one
// cannot be published over.
const refusal = (name, version) => {
  if (stages.some((s) => s.packageName === name && s.version === version)) {
    return [409, { error: `Cannot publish over previously staged version "${version}"` }];
  }
  const current = packages.get(name);
  if (current?.versions?.[version] && !current.stub) {
    return [403, { error: `You cannot publish over the previously published versions: ${version}` }];
  }
  return null;
};

const stage = (name, doc, token) => {
  const version = versionOf(doc);
  const refused = refusal(name, version);
  if (refused) return [refused];
  const tag = Object.keys(doc['dist-tags'] ?? {})[0] ?? 'latest';
  const attachment = Object.values(doc._attachments ?? {})[0];
  const tarball = Buffer.from(attachment?.data ?? '', 'base64');
  const item = {
    id: crypto.randomUUID(),
    packageName: name,
    version,
    tag,
    createdAt: new Date().toISOString(),
    actor: token.user,
    actorType: token.kind.startsWith('oidc') ? 'oidc' : 'user',
    access: doc.access === 'restricted' ? 'private' : 'public',
    shasum: crypto.createHash('sha1').update(tarball).digest('hex'),
    stagedAt: Date.now(),
    tarball,
    manifest: doc.versions[version],
  };
  stages.push(item);
  placeholder(name);
  return [null, item];
};

const publish = (name, version, manifest, tags) => {
  const refused = refusal(name, version);
  if (refused) return refused;
  const current = packages.get(name);
  const next = current && !current.stub ? current : { _id: name, name, versions: {}, 'dist-tags': {} };
  next.versions[version] = manifest;
  Object.assign(next['dist-tags'], tags);
  packages.set(name, next);
  return [200, { success: true }];
};

const server = https.createServer({ cert: fs.readFileSync(args.cert), key: fs.readFileSync(args.key) }, async (req, res) => {
  const url = new URL(req.url, 'https://double');
  const auth = req.headers.authorization ?? '';
  const token = auth.startsWith('Bearer ') ? tokens.get(auth.slice(7)) : undefined;
  const segs = url.pathname.split('/').slice(1);
  // A request is on record as it arrives; `complete` once its whole body came (a write cut off
  // mid-body never is, and the registry never acts on it).
  const seen = { method: req.method, path: url.pathname, npm_command: req.headers['npm-command'] ?? null, user: token?.user ?? null, complete: false };
  requests.push(seen);
  const body = ['PUT', 'POST'].includes(req.method) ? await readBody(req) : Buffer.alloc(0);
  seen.complete = true;

  if (url.pathname === '/-/double/state') {
    return send(res, 200, { packages: Object.fromEntries(packages), stages: stages.map(view), requests });
  }
  if (url.pathname === '/-/ping') return send(res, 200, {});
  if (url.pathname === '/-/whoami') {
    return token ? send(res, 200, { username: token.user }) : send(res, 401, { error: 'unauthorized' });
  }
  // `npm stage list`: GET /-/stage?page&perPage&package -> {items, page, perPage, total} [CLI][API].
  if (req.method === 'GET' && url.pathname === '/-/stage') {
    if (!token) return send(res, 401, { error: 'unauthorized' });
    const wanted = url.searchParams.get('package');
    const items = stages.filter((s) => !wanted || s.packageName === wanted).map(view);
    return send(res, 200, { items, page: 0, perPage: 100, total: items.length });
  }
  if (segs[0] === '-' && segs[1] === 'stage' && segs[2] && segs[2] !== 'package') {
    if (!token) return send(res, 401, { error: 'unauthorized' });
    const item = stages.find((s) => s.id === segs[2]);
    if (!item) return send(res, 404, { error: 'not found' });
    // `npm stage view` and `npm stage download` [CLI].
    if (req.method === 'GET' && segs.length === 3) return send(res, 200, view(item));
    if (req.method === 'GET' && segs[3] === 'tarball') {
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      return res.end(item.tarball);
    }
    // Approve and reject need the maintainer's 2FA (`npm-otp`) [CLI approve.js, reject.js];
    // a version still validating cannot be approved [API].
    if (!req.headers['npm-otp']) return send(res, 401, { error: 'one-time password required' }, { 'www-authenticate': 'OTP' });
    if (req.method === 'POST' && segs[3] === 'approve') {
      if (statusOf(item) !== 'staged') return send(res, 409, { error: 'the staged version is still being validated' });
      stages.splice(stages.indexOf(item), 1);
      const [status, answer] = publish(item.packageName, item.version, item.manifest, { [item.tag]: item.version });
      return status === 200 ? send(res, 201, { message: 'approved' }) : send(res, status, answer);
    }
    if (req.method === 'DELETE' && segs.length === 3) {
      stages.splice(stages.indexOf(item), 1);
      res.writeHead(204);
      return res.end();
    }
    return send(res, 405, { error: 'method not allowed' });
  }
  // `npm stage publish`: POST /-/stage/package/<esc> with the publish body; 201 {message, stageId}
  // [CLI][API]. Every token that may write may stage, stage-only ones included [LOG 2026-09-18].
  if (req.method === 'POST' && segs[0] === '-' && segs[1] === 'stage' && segs[2] === 'package' && segs[3]) {
    if (!token) return send(res, 401, { error: 'unauthorized' });
    const name = unescape(segs[3]);
    const [refused, item] = stage(name, JSON.parse(body.toString('utf8')), token);
    if (refused) return send(res, ...refused);
    return send(res, 201, { message: `staged ${name}@${item.version}`, stageId: item.id });
  }
  // A package's packument (a stub placeholder included).
  if (req.method === 'GET' && segs.length === 1 && segs[0] && segs[0] !== '-') {
    const doc = packages.get(unescape(segs[0]));
    return doc ? send(res, 200, doc) : send(res, 404, { error: 'Not found' });
  }
  // `npm publish`: PUT /<esc> [CLI].
  if (req.method === 'PUT' && segs.length === 1 && segs[0]) {
    if (!token) return send(res, 401, { error: 'unauthorized' });
    const name = unescape(segs[0]);
    const doc = JSON.parse(body.toString('utf8'));
    if (!doc._attachments) return send(res, 400, { error: 'only publishes are implemented by this double' });
    switch (token.kind) {
      // Stage-only granular tokens: a direct publish fails with E_STAGE_REQUIRED [LOG 2026-09-18]
      // (the body's exact shape is undocumented).
      case 'stage-only':
        return send(res, 403, { code: 'E_STAGE_REQUIRED', error: 'This token may only stage versions: use npm stage publish' });
      // Trusted-publishing connections made since 2026-09-03 stage by default; a direct PUT
      // without the maintainer's opt-in is refused [LOG 2026-09-03].
      case 'oidc-stage-only':
        return send(res, 403, { error: 'OIDC permission denied' });
      // A bypass-2FA token's plain publish is staged, answered 2xx with the stage's id [NOTES].
      case 'bypass-2fa': {
        const [refused, item] = stage(name, doc, token);
        if (refused) return send(res, ...refused);
        return send(res, 200, { success: true, stageId: item.id });
      }
      default: {
        const version = versionOf(doc);
        return send(res, ...publish(name, version, doc.versions[version], doc['dist-tags'] ?? {}));
      }
    }
  }
  send(res, 404, { error: 'not found' });
});

server.listen(0, '127.0.0.1', () => {
  console.log(JSON.stringify({ url: `https://127.0.0.1:${server.address().port}/` }));
});
