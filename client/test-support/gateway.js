'use strict';
// Starts the real thing for the client's tests: the WeChat simulator, the
// sample game backend and Caddy with wechat_login, built from this
// repository, on free loopback ports. Two gateways: the demo's own Caddyfile
// (cmd/demo/Caddyfile), and test-support/Caddyfile (respond mode, a tight
// budget, another login path).
const { spawn, execFile } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const { promisify } = require('node:util');

const repoRoot = path.resolve(__dirname, '../..');
const demoCaddyfile = path.join(repoRoot, 'cmd/demo/Caddyfile');
const testCaddyfile = path.join(__dirname, 'Caddyfile');

// The demo app, as in cmd/demo/Caddyfile and cmd/wechatsim's default.
const app = { appid: 'wx1234567890abcdef', secret: 'demo-secret-0123456789abcdef' };

// demoSessionSecret is the demo gateway's signing key, read from its
// Caddyfile, so that a test can make the token that gateway issued hours ago.
function demoSessionSecret() {
  const match = /session\s*\{\s*secret\s+(\S+)/.exec(fs.readFileSync(demoCaddyfile, 'utf8'));
  if (!match) throw new Error('no session secret in ' + demoCaddyfile);
  return match[1];
}

// signToken makes an HS256 JWT as the gateway makes them.
function signToken(claims, secret) {
  const part = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const unsigned = part({ alg: 'HS256', typ: 'JWT' }) + '.' + part(claims);
  return unsigned + '.' + crypto.createHmac('sha256', secret).update(unsigned).digest('base64url');
}

// binDir is per checkout and kept between runs: go build relinks nothing
// that is up to date.
const binDir = path.join(os.tmpdir(), 'caddy-wechat-login-client-test-' +
  crypto.createHash('sha256').update(repoRoot).digest('hex').slice(0, 12));

async function build() {
  await promisify(execFile)('go', ['build', '-o', binDir + path.sep, './cmd/caddy', './cmd/wechatsim', './cmd/gamebackend'], { cwd: repoRoot });
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

// start runs one binary of binDir; its output is kept for the error that
// says why it did not come up.
function start(name, args, env) {
  const child = spawn(path.join(binDir, name), args, { env: Object.assign({}, process.env, env), stdio: ['ignore', 'pipe', 'pipe'] });
  child.output = '';
  const keep = (chunk) => { child.output = (child.output + chunk).slice(-8000); };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  child.exited = new Promise((resolve) => child.on('exit', resolve));
  return child;
}

// ready waits until url answers any HTTP response.
async function ready(child, url) {
  const deadline = Date.now() + 60000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`${child.spawnfile} exited: ${child.output}`);
    try {
      // A server that takes the connection and never answers is not ready.
      await fetch(url, { signal: AbortSignal.timeout(2000) });
      return;
    } catch (e) {
      if (Date.now() > deadline) throw new Error(`${url} did not answer within 60s: ${child.output}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

// startAll builds and starts everything; stop() ends it.
async function startAll() {
  await build();
  const [wechat, backend, demo, api, respond] = await Promise.all([freePort(), freePort(), freePort(), freePort(), freePort()]);
  // Caddy keeps its state under $HOME and the XDG directories: not the user's.
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'client-test-home-'));
  const caddyEnv = { HOME: home, XDG_DATA_HOME: home, XDG_CONFIG_HOME: home };
  const addr = (port) => '127.0.0.1:' + port;
  const children = [
    start('wechatsim', ['-listen', addr(wechat)]),
    start('gamebackend', ['-listen', addr(backend)]),
    start('caddy', ['run', '--adapter', 'caddyfile', '--config', demoCaddyfile], Object.assign({
      DEMO_HOST: '127.0.0.1', DEMO_PORT: String(demo), DEMO_BACKEND: addr(backend), DEMO_WECHAT: addr(wechat),
      DEMO_API_HOST: '127.0.0.1', DEMO_API_PORT: String(api)
    }, caddyEnv)),
    start('caddy', ['run', '--adapter', 'caddyfile', '--config', testCaddyfile], Object.assign({
      CLIENT_TEST_PORT: String(respond), CLIENT_TEST_BACKEND: addr(backend), CLIENT_TEST_WECHAT: addr(wechat)
    }, caddyEnv))
  ];
  const urls = ['http://' + addr(wechat), 'http://' + addr(backend), 'http://' + addr(demo), 'http://' + addr(respond)];
  // A test process that ends without its after hook leaves nothing running.
  const killAll = () => {
    for (const child of children) if (child.exitCode === null) child.kill('SIGKILL');
    fs.rmSync(home, { recursive: true, force: true });
  };
  process.once('exit', killAll);
  const stop = async () => {
    process.removeListener('exit', killAll);
    for (const child of children) if (child.exitCode === null) child.kill('SIGTERM');
    // One that has not exited 10 s after SIGTERM (a request it still
    // waits on) is killed.
    const late = setTimeout(() => {
      for (const child of children) if (child.exitCode === null) child.kill('SIGKILL');
    }, 10000);
    await Promise.all(children.map((c) => c.exited));
    clearTimeout(late);
    fs.rmSync(home, { recursive: true, force: true });
  };
  try {
    await Promise.all(children.map((child, i) => ready(child, urls[i])));
  } catch (e) {
    await stop();
    throw e;
  }
  return { wechatURL: urls[0], demoURL: urls[2], respondURL: urls[3], stop };
}

// spendCode redeems a code at the simulator directly, as if another client
// had used it.
async function spendCode(wechatURL, code) {
  const q = new URLSearchParams({ appid: app.appid, secret: app.secret, js_code: code, grant_type: 'authorization_code' });
  const body = await (await fetch(`${wechatURL}/sns/jscode2session?${q}`)).json();
  if (!body.openid) throw new Error('the simulator refused ' + code + ': ' + JSON.stringify(body));
}

module.exports = { startAll, spendCode, signToken, demoSessionSecret, app };
