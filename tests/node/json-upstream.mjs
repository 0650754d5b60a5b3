// An upstream that reads request bodies exactly as Verdaccio does, for phantom-broker's JSON
// differential test: the same `express.json({ strict: false })` middleware that Verdaccio 6
// registers (@verdaccio/middleware, middlewares/body-parser.js), resolved from Verdaccio's own
// dependency tree, so it decodes the charset of the Content-Type it is sent, strips a BOM and
// parses with JSON.parse.
//
//   node json-upstream.mjs --cert CERT.pem --key KEY.pem
//
// Serves HTTPS on 127.0.0.1 and prints one JSON line: {"url":"https://127.0.0.1:PORT"}.
//   GET /-/seen      every write so far: {method, url, content_type, raw (base64), parsed
//                    (JSON.stringify of what the body parser read) | error}
//   anything else    recorded; a write whose body parsed is answered 201
import https from 'node:https';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import { parseArgs } from 'node:util';

const { values: args } = parseArgs({ options: { cert: { type: 'string' }, key: { type: 'string' } } });
if (!args.cert || !args.key) {
  console.error('usage: node json-upstream.mjs --cert CERT.pem --key KEY.pem');
  process.exit(2);
}

const require = createRequire(import.meta.url);
// `express` as @verdaccio/middleware itself resolves it.
const express = createRequire(require.resolve('@verdaccio/middleware'))('express');

const seen = [];
const app = express();
app.get('/-/seen', (req, res) => res.json(seen));
app.use(
  express.json({
    strict: false,
    limit: '200mb',
    verify: (req, res, buf) => {
      req.raw = Buffer.from(buf);
    },
  }),
);
app.all('*', (req, res) => {
  seen.push({
    method: req.method,
    url: req.url,
    content_type: req.headers['content-type'] ?? null,
    raw: req.raw ? req.raw.toString('base64') : null,
    parsed: JSON.stringify(req.body),
  });
  res.status(201).json({ ok: true });
});
app.use((err, req, res, next) => {
  seen.push({ method: req.method, url: req.url, content_type: req.headers['content-type'] ?? null, error: String(err.type ?? err.message) });
  res.status(err.status ?? 400).json({ error: String(err.message) });
});

const server = https.createServer({ cert: fs.readFileSync(args.cert), key: fs.readFileSync(args.key) }, app);
server.listen(0, '127.0.0.1', () => {
  console.log(JSON.stringify({ url: `https://127.0.0.1:${server.address().port}` }));
});
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
