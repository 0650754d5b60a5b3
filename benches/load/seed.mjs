// Seeds a Verdaccio with real packages for the `npm ci` benchmark (benches/load/proxy.sh), and
// writes the project that installs them.
//
// The packages are the dependency tree of Verdaccio itself, from tests/node/package-lock.json
// (npm's own bundled tree left out): a few hundred real packages of real sizes. Their tarballs
// come from `npm pack` (npm's cache first, so nothing is fetched when tests/node was installed)
// and are published unchanged, so the lockfile's integrity values hold. Then the project
// directory gets a package.json and one lockfile per target, each pinning every tarball to that
// target's URL, as npm writes lockfiles.
//
// Usage: node seed.mjs LOCKFILE WORKDIR REGISTRY_URL TOKEN [LIMIT]
//   Environment: NODE_EXTRA_CA_CERTS for the registry's CA.
// Prints one JSON line: {"packages": N, "bytes": TOTAL_TARBALL_BYTES}.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';
import { join } from 'node:path';

const [lockPath, work, registry, token, limitArg] = process.argv.slice(2);
const limit = limitArg ? Number(limitArg) : Infinity;
const lock = JSON.parse(readFileSync(lockPath, 'utf8'));
const bundled = (k) => k === 'node_modules/npm' || k.startsWith('node_modules/npm/');
const entries = Object.entries(lock.packages)
  .filter(([k, v]) => k.startsWith('node_modules/') && !bundled(k) && v.version && v.integrity)
  .slice(0, limit)
  .map(([k, v]) => ({ key: k, name: k.slice(k.lastIndexOf('node_modules/') + 'node_modules/'.length), ...v }));

// One tarball per name@version (a name can appear at several depths).
const specs = [...new Set(entries.map((e) => `${e.name}@${e.version}`))];
const tarballs = join(work, 'tarballs');
mkdirSync(tarballs, { recursive: true });
const npm = process.env.NPM_BIN || 'npm';
const packed = JSON.parse(
  execFileSync(npm, ['pack', ...specs, '--pack-destination', tarballs, '--json', '--prefer-offline', '--loglevel=error'], {
    maxBuffer: 256 * 1024 * 1024,
    cwd: work,
    env: { ...process.env, NODE_EXTRA_CA_CERTS: '' },
  }),
);

/** package/package.json (whatever the top folder is called) out of a .tgz. */
function manifest(tgz) {
  const tar = gunzipSync(tgz);
  for (let at = 0; at + 512 <= tar.length; ) {
    const name = tar.toString('utf8', at, at + 100).replace(/\0.*$/s, '');
    const size = parseInt(tar.toString('utf8', at + 124, at + 136).replace(/\0.*$/s, '').trim() || '0', 8);
    if (!name) break;
    if (/^[^/]+\/package\.json$/.test(name)) return JSON.parse(tar.toString('utf8', at + 512, at + 512 + size));
    at += 512 + Math.ceil(size / 512) * 512;
  }
  throw new Error('no package.json in the tarball');
}

const integrity = new Map(entries.map((e) => [`${e.name}@${e.version}`, e.integrity]));
let bytes = 0;
async function publish(p) {
  const tgz = readFileSync(join(tarballs, p.filename));
  bytes += tgz.length;
  const pkg = manifest(tgz);
  const file = `${p.name.replace(/^@[^/]+\//, '')}-${p.version}.tgz`;
  const escaped = p.name.replace('/', '%2f');
  pkg._id = `${p.name}@${p.version}`;
  pkg.dist = {
    integrity: integrity.get(`${p.name}@${p.version}`),
    shasum: createHash('sha1').update(tgz).digest('hex'),
    tarball: `${registry}${p.name}/-/${file}`,
  };
  const body = {
    _id: p.name,
    name: p.name,
    'dist-tags': { latest: p.version },
    versions: { [p.version]: pkg },
    _attachments: { [file]: { content_type: 'application/octet-stream', data: tgz.toString('base64'), length: tgz.length } },
  };
  const res = await fetch(`${registry}${escaped}`, {
    method: 'PUT',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  if (res.status !== 201 && res.status !== 200) throw new Error(`${p.name}@${p.version}: ${res.status} ${await res.text()}`);
}
// Versions of one name one after another (each PUT adds a version); names 8 at a time.
const byName = new Map();
for (const p of packed) byName.set(p.name, [...(byName.get(p.name) || []), p]);
const queue = [...byName.values()];
await Promise.all(
  Array.from({ length: 8 }, async () => {
    for (let versions; (versions = queue.shift()); ) for (const p of versions) await publish(p);
  }),
);

// The project, and its lockfile without `resolved` (proxy.sh pins each target's URLs in).
const project = join(work, 'project');
mkdirSync(project, { recursive: true });
const kept = new Set(entries.map((e) => e.key));
const packages = { '': { name: 'bench-app', version: '1.0.0', dependencies: { verdaccio: lock.packages[''].dependencies.verdaccio } } };
for (const [k, v] of Object.entries(lock.packages)) if (kept.has(k)) packages[k] = v;
writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'bench-app', version: '1.0.0', private: true, dependencies: packages[''].dependencies }, null, 2));
writeFileSync(join(work, 'lock.template.json'), JSON.stringify({ name: 'bench-app', version: '1.0.0', lockfileVersion: 3, requires: true, packages }, null, 2));
console.log(JSON.stringify({ packages: packed.length, bytes }));
