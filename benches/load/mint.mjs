// Pre-mints distinct GitHub-shaped RS256 ID tokens for the exchange benchmark, outside the
// timed window: node mint.mjs KEY.pem ISSUER_URL AUDIENCE COUNT > tokens.txt
import crypto from 'node:crypto';
import fs from 'node:fs';

const [keyFile, iss, aud, count] = process.argv.slice(2);
const key = crypto.createPrivateKey(fs.readFileSync(keyFile));
const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
const header = b64({ alg: 'RS256', typ: 'JWT', kid: 'rsa-1' });
const now = Math.floor(Date.now() / 1000);
const out = [];
for (let i = 0; i < Number(count); i++) {
  const claims = {
    iss, aud, sub: 'repo:acme/web:ref:refs/heads/main', jti: crypto.randomUUID(),
    iat: now, nbf: now - 600, exp: now + 3600, repository: 'acme/web', repository_id: '123456789',
    repository_owner: 'acme', repository_owner_id: '4242', ref: 'refs/heads/main', event_name: 'push',
    job_workflow_ref: 'acme/web/.github/workflows/release.yml@refs/heads/main', runner_environment: 'github-hosted',
  };
  const input = `${header}.${b64(claims)}`;
  out.push(`${input}.${crypto.sign('sha256', Buffer.from(input), key).toString('base64url')}`);
}
fs.writeSync(1, out.join('\n') + '\n');
