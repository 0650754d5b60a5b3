// A person completing a device sign-in at idp.mjs, over HTTP, as a browser would: opens the
// verification URL with the user code, confirms the device, signs in, consents. Node built-ins only
// (fetch; the provider's certificate is trusted through NODE_EXTRA_CA_CERTS).
//
//   node sign-in.mjs --url VERIFICATION_URI_COMPLETE --login NAME
//
// Exits 0 on the provider's success page, 1 otherwise (printing the page it stopped at).
import { parseArgs } from 'node:util';

const { values: args } = parseArgs({ options: { url: { type: 'string' }, login: { type: 'string' } } });
if (!args.url || !args.login) {
  console.error('usage: node sign-in.mjs --url VERIFICATION_URI_COMPLETE --login NAME');
  process.exit(2);
}

const cookies = new Map();
async function request(url, init = {}) {
  const headers = { ...(init.headers ?? {}), cookie: [...cookies].map(([k, v]) => `${k}=${v}`).join('; ') };
  const res = await fetch(url, { ...init, headers, redirect: 'manual', signal: AbortSignal.timeout(10_000) });
  for (const c of res.headers.getSetCookie()) {
    const [pair] = c.split(';');
    const i = pair.indexOf('=');
    cookies.set(pair.slice(0, i), pair.slice(i + 1));
  }
  return res;
}

// Follows redirects; returns the final page's URL and HTML.
async function open(url, init) {
  let res = await request(url, init);
  for (let hops = 0; res.status >= 300 && res.status < 400 && hops < 10; hops++) {
    url = new URL(res.headers.get('location'), url).toString();
    res = await request(url);
  }
  return { url, html: await res.text(), status: res.status };
}

const attr = (tag, name) => tag.match(new RegExp(`\\b${name}="([^"]*)"`))?.[1];

// The page's first form, with its hidden inputs and the fields a person would type.
function submit(page) {
  const form = page.html.match(/<form\b[^>]*>/);
  if (!form) return null;
  const body = new URLSearchParams();
  const inputs = page.html.slice(form.index).split('</form>')[0].match(/<input\b[^>]*>/g) ?? [];
  for (const input of inputs) {
    const name = attr(input, 'name');
    if (!name) continue;
    const type = attr(input, 'type');
    if (type === 'hidden') body.set(name, attr(input, 'value') ?? '');
    else if (name === 'login') body.set(name, args.login);
    else if (name === 'password') body.set(name, 'any');
    else if (name === 'user_code' && attr(input, 'value')) body.set(name, attr(input, 'value'));
  }
  const action = new URL(attr(form[0], 'action'), page.url).toString();
  return open(action, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: body.toString(),
  });
}

let page = await open(args.url);
for (let step = 0; step < 8; step++) {
  if (/Sign-in Success/.test(page.html)) {
    console.log(`signed in as ${args.login}`);
    process.exit(0);
  }
  const next = await submit(page);
  if (!next) break;
  page = next;
}
console.error(`sign-in did not finish (HTTP ${page.status} at ${page.url}):\n${page.html.slice(0, 2000)}`);
process.exit(1);
