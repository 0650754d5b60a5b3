// Loopback OIDC issuer for phantom-broker's tests: a stand-in for GitHub Actions' token issuer
// and for the runner's ID-token endpoint (ACTIONS_ID_TOKEN_REQUEST_URL). Node built-ins only.
//
//   node oidc-issuer.mjs --cert CERT.pem --key KEY.pem --dir DIR [--port 0]
//
// Serves HTTPS on 127.0.0.1 and prints one JSON line: {"url":"https://127.0.0.1:PORT","request_token":"..."}.
// Fresh signing keys on every start: RSA-2048 (kid "rsa-1", RS256) and P-256 (kid "ec-1", ES256);
// their private keys are written as PKCS#8 PEM to DIR/rsa.pem and DIR/ec.pem so tests can forge tokens.
//
//   GET  /.well-known/openid-configuration   discovery document
//   GET  /.well-known/jwks                   public keys (counted)
//   GET  /stats                              {"jwks_fetches","discovery_fetches","tokens_minted"}
//   GET  /token?...&audience=AUD             needs "Authorization: Bearer <request_token>"; optional
//        claims=<base64url JSON, null deletes a claim>, alg=RS256|ES256, ttl=<seconds>
//        -> {"count":1,"value":"<jwt>"} with GitHub-shaped default claims
//   POST /mint {"claims":{...},"header":{...},"key":"rsa"|"ec"|"rsa2"}  signs exactly those claims -> {"token"}
//   POST /control {"keys": "normal"|"slow"|"huge"|"error", "rotate": true}  fault injection for the
//        discovery and JWKS endpoints; "rotate" adds an RSA key (kid "rsa-2") to the JWKS
import https from 'node:https';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';

const { values: args } = parseArgs({
  options: { cert: { type: 'string' }, key: { type: 'string' }, dir: { type: 'string' }, port: { type: 'string', default: '0' } },
});
if (!args.cert || !args.key || !args.dir) {
  console.error('usage: node oidc-issuer.mjs --cert CERT.pem --key KEY.pem --dir DIR [--port 0]');
  process.exit(2);
}

const MAX_BODY = 64 * 1024;
const keys = {
  rsa: { kid: 'rsa-1', alg: 'RS256', ...crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }) },
  ec: { kid: 'ec-1', alg: 'ES256', ...crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }) },
};
fs.mkdirSync(args.dir, { recursive: true });
for (const [name, k] of Object.entries(keys)) {
  fs.writeFileSync(path.join(args.dir, `${name}.pem`), k.privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
}
const publicJwk = (k) => ({ ...k.publicKey.export({ format: 'jwk' }), kid: k.kid, alg: k.alg, use: 'sig' });
const jwks = { keys: Object.values(keys).map(publicJwk) };
// A key that is not published until /control {"rotate": true}.
keys.rsa2 = { kid: 'rsa-2', alg: 'RS256', ...crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }) };
let keysMode = 'normal';
const requestToken = crypto.randomBytes(24).toString('hex');
const stats = { jwks_fetches: 0, discovery_fetches: 0, tokens_minted: 0 };
const runId = String(crypto.randomInt(1e9, 1e10));
let url; // set once listening

const b64url = (x) => Buffer.from(typeof x === 'string' ? x : JSON.stringify(x)).toString('base64url');

function sign(claims, key, extraHeader = {}) {
  const header = { alg: key.alg, typ: 'JWT', kid: key.kid, ...extraHeader };
  const input = `${b64url(header)}.${b64url(claims)}`;
  // Always the key's real algorithm, whatever the header claims; ES256 needs the JOSE (r||s) form.
  const sig = crypto.sign('sha256', Buffer.from(input), { key: key.privateKey, dsaEncoding: 'ieee-p1363' });
  stats.tokens_minted++;
  return `${input}.${sig.toString('base64url')}`;
}

function githubClaims(aud, ttl) {
  const iat = Math.floor(Date.now() / 1000);
  const wf = 'acme/web/.github/workflows/release.yml@refs/heads/main';
  return {
    iss: url, aud, sub: 'repo:acme/web:ref:refs/heads/main',
    jti: crypto.randomUUID(), iat, nbf: iat - 600, exp: iat + ttl,
    repository: 'acme/web', repository_id: '123456789', repository_owner: 'acme', repository_owner_id: '4242',
    repository_visibility: 'private', ref: 'refs/heads/main', ref_type: 'branch', event_name: 'push',
    workflow: 'release', workflow_ref: wf, job_workflow_ref: wf, sha: crypto.randomBytes(20).toString('hex'),
    actor: 'octocat', actor_id: '1', run_id: runId, run_number: '7', run_attempt: '1',
    runner_environment: 'github-hosted',
  };
}

class HttpError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function tokenEndpoint(req, q) {
  if (req.headers.authorization !== `Bearer ${requestToken}`) throw new HttpError(401, 'bad or missing request token');
  const aud = q.get('audience');
  if (!aud) throw new HttpError(400, 'audience is required');
  const alg = q.get('alg') ?? 'RS256';
  const key = Object.values(keys).find((k) => k.alg === alg);
  if (!key) throw new HttpError(400, `unsupported alg ${alg}`);
  const ttl = Number(q.get('ttl') ?? 300);
  if (!Number.isInteger(ttl)) throw new HttpError(400, 'ttl must be an integer');
  let overrides = {};
  if (q.has('claims')) {
    try { overrides = JSON.parse(Buffer.from(q.get('claims'), 'base64url').toString('utf8')); } catch { overrides = null; }
    if (!overrides || typeof overrides !== 'object' || Array.isArray(overrides)) throw new HttpError(400, 'claims must be base64url of a JSON object');
  }
  const claims = githubClaims(aud, ttl);
  for (const [k, v] of Object.entries(overrides)) {
    if (v === null) delete claims[k]; else claims[k] = v;
  }
  return { count: 1, value: sign(claims, key) };
}

function mintEndpoint(body) {
  let input;
  try { input = JSON.parse(body.toString('utf8')); } catch { throw new HttpError(400, 'body must be JSON'); }
  if (!input?.claims || typeof input.claims !== 'object') throw new HttpError(400, 'claims object is required');
  const key = keys[input.key ?? 'rsa'];
  if (!key) throw new HttpError(400, 'key must be "rsa", "ec" or "rsa2"');
  return { token: sign(input.claims, key, input.header ?? {}) };
}

function controlEndpoint(body) {
  let input;
  try { input = JSON.parse(body.toString('utf8')); } catch { throw new HttpError(400, 'body must be JSON'); }
  if (input.keys) {
    if (!['normal', 'slow', 'huge', 'error'].includes(input.keys)) throw new HttpError(400, 'bad keys mode');
    keysMode = input.keys;
  }
  if (input.rotate && !jwks.keys.some((k) => k.kid === 'rsa-2')) jwks.keys.push(publicJwk(keys.rsa2));
  return { keys: keysMode, kids: jwks.keys.map((k) => k.kid) };
}

// Applies the fault mode to the discovery and JWKS answers.
function faulty(obj) {
  if (keysMode === 'error') throw new HttpError(503, 'keys unavailable');
  if (keysMode === 'huge') return { ...obj, padding: 'x'.repeat(2 * 1024 * 1024) };
  return obj;
}

function route(req, body) {
  const u = new URL(req.url, url);
  const want = (method) => { if (req.method !== method) throw new HttpError(405, 'method not allowed'); };
  switch (u.pathname) {
    case '/.well-known/openid-configuration':
      want('GET'); stats.discovery_fetches++;
      return faulty({
        issuer: url, jwks_uri: `${url}/.well-known/jwks`, subject_types_supported: ['public'],
        response_types_supported: ['id_token'], id_token_signing_alg_values_supported: ['RS256', 'ES256'],
        claims_supported: Object.keys(githubClaims('x', 0)),
      });
    case '/.well-known/jwks': want('GET'); stats.jwks_fetches++; return faulty(jwks);
    case '/control': want('POST'); return controlEndpoint(body);
    case '/stats': want('GET'); return stats;
    case '/token': want('GET'); return tokenEndpoint(req, u.searchParams);
    case '/mint': want('POST'); return mintEndpoint(body);
    default: throw new HttpError(404, 'not found');
  }
}

function reply(res, status, obj) {
  const data = JSON.stringify(obj);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) });
  res.end(data);
}

const server = https.createServer({ cert: fs.readFileSync(args.cert), key: fs.readFileSync(args.key) }, (req, res) => {
  const chunks = [];
  let size = 0;
  let tooBig = Number(req.headers['content-length'] ?? 0) > MAX_BODY;
  if (tooBig) { res.setHeader('connection', 'close'); return reply(res, 413, { message: 'body too large' }); }
  req.on('data', (c) => {
    size += c.length;
    if (size > MAX_BODY) tooBig = true; else chunks.push(c);
  });
  req.on('end', () => {
    if (tooBig) return reply(res, 413, { message: 'body too large' });
    const wellKnown = req.url.startsWith('/.well-known/');
    const answer = () => {
      try { reply(res, 200, route(req, Buffer.concat(chunks))); } catch (e) {
        reply(res, e.status ?? 500, { message: e.message });
      }
    };
    // "slow": the keys answer after 30 s, far past any sane fetch timeout.
    if (wellKnown && keysMode === 'slow') setTimeout(answer, 30000).unref(); else answer();
  });
});

server.listen(Number(args.port), '127.0.0.1', () => {
  url = `https://127.0.0.1:${server.address().port}`;
  process.stdout.write(`${JSON.stringify({ url, request_token: requestToken })}\n`);
});
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => { server.close(); server.closeAllConnections(); process.exit(0); });
}
