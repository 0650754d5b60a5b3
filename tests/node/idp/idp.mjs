// An OpenID Connect provider for people, on loopback, for phantom-broker's tests: panva's
// node-oidc-provider (pinned in package.json; OpenID-certified), configured as an organisation's
// identity provider would be for the broker's CLI: the device authorization grant (RFC 8628) for a
// public client, ID tokens that carry the person's `email` and `groups`.
//
//   node idp.mjs --cert CERT.pem --key KEY.pem [--port 0] [--tokens FILE]
//
// Serves HTTPS on 127.0.0.1 and prints one JSON line: {"url":"https://127.0.0.1:PORT"} (the issuer).
// With --tokens, every ID token it issues is appended to FILE, one per line: the tests' canaries
// (a person's ID token must reach no log, audit line or output).
// Clients: `phantom-cli` (public, device flow) and `other-app` (the same, for a wrong audience);
// `phantom-console` (confidential, authorization code with PKCE, its secret given by
// --console-secret), whose redirect URI may be https://127.0.0.1 on any port, /auth/callback: the
// broker's admin port is chosen when a test starts, after the provider.
// People: any login name signs in (the provider's development interactions); the ones below carry
// groups, anyone else none. sign-in.mjs completes a device sign-in as one of them over HTTP.
import https from 'node:https';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { parseArgs } from 'node:util';
import Provider from 'oidc-provider';

const { values: args } = parseArgs({
  options: {
    cert: { type: 'string' },
    key: { type: 'string' },
    port: { type: 'string', default: '0' },
    tokens: { type: 'string' },
    'console-secret': { type: 'string' },
  },
});
if (!args.cert || !args.key) {
  console.error('usage: node idp.mjs --cert CERT.pem --key KEY.pem [--port 0]');
  process.exit(2);
}

const PEOPLE = {
  alice: ['web-team'],
  bob: ['release-managers'],
  carol: ['release-managers'],
  dave: ['release-managers', 'web-team'],
};

const signing = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
let provider;
const server = https.createServer({ cert: fs.readFileSync(args.cert), key: fs.readFileSync(args.key) }, (req, res) =>
  provider.callback()(req, res),
);
server.listen(Number(args.port), '127.0.0.1', () => {
  const url = `https://127.0.0.1:${server.address().port}`;
  const deviceClient = (client_id) => ({
    client_id,
    client_name: client_id,
    token_endpoint_auth_method: 'none',
    grant_types: ['urn:ietf:params:oauth:grant-type:device_code'],
    response_types: [],
    redirect_uris: [],
  });
  const consoleClient = {
    client_id: 'phantom-console',
    client_secret: args['console-secret'] ?? crypto.randomBytes(24).toString('hex'),
    token_endpoint_auth_method: 'client_secret_post',
    grant_types: ['authorization_code'],
    response_types: ['code'],
    redirect_uris: ['https://127.0.0.1/auth/callback'],
  };
  provider = new Provider(url, {
    clients: [deviceClient('phantom-cli'), deviceClient('other-app'), consoleClient],
    jwks: { keys: [{ ...signing, kid: 'people-1', alg: 'RS256', use: 'sig' }] },
    features: { deviceFlow: { enabled: true }, devInteractions: { enabled: true } },
    claims: { openid: ['sub'], email: ['email', 'email_verified'], groups: ['groups'] },
    // The person's claims go into the ID token itself: the broker reads nothing else.
    conformIdTokenClaims: false,
    cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
    ttl: { DeviceCode: 600, IdToken: 300, AccessToken: 300, Grant: 600, Interaction: 600, Session: 600 },
    async findAccount(_ctx, id) {
      return {
        accountId: id,
        async claims() {
          return { sub: id, email: `${id}@people.test`, email_verified: true, groups: PEOPLE[id] ?? [] };
        },
      };
    },
  });
  const allowed = provider.Client.prototype.redirectUriAllowed;
  provider.Client.prototype.redirectUriAllowed = function (value) {
    if (this.clientId === 'phantom-console') return /^https:\/\/127\.0\.0\.1:\d+\/auth\/callback$/.test(value);
    return allowed.call(this, value);
  };
  provider.on('server_error', (_ctx, err) => console.error('idp server_error:', err.message));
  provider.on('grant.success', (ctx) => {
    if (args.tokens && ctx.body?.id_token) fs.appendFileSync(args.tokens, `${ctx.body.id_token}\n`);
  });
  console.log(JSON.stringify({ url }));
});
