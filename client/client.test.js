'use strict';
// The client module against the real gateway and simulator (see
// test-support/gateway.js): `node --test client/*.test.js`.
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');

const { createClient, GatewayError } = require('./index.js');
const { startAll, spendCode, signToken, demoSessionSecret, app } = require('./test-support/gateway.js');
const { fakeRuntime, loginRequests, recordingSleep } = require('./test-support/runtime.js');

let gw;
before(async () => { gw = await startAll(); });
after(async () => { if (gw) await gw.stop(); });

const storageKey = (baseURL, loginPath = '/wx/login') => 'wechat_login:' + baseURL + loginPath;

test('20 concurrent requests on a cold client make exactly one login', async () => {
  const rt = fakeRuntime({ player: 'cold' });
  const client = createClient({ baseURL: gw.demoURL, runtime: rt });
  const answers = await Promise.all(Array.from({ length: 20 }, () => client.request({ url: '/game/state' })));
  assert.equal(rt.logins, 1, 'wx.login calls');
  const logins = loginRequests(rt);
  assert.equal(logins.length, 1, 'login requests');
  assert.equal(logins[0].status, 200);
  const openid = answers[0].data.openid;
  assert.ok(openid, 'the backend saw an identity');
  for (const a of answers) {
    assert.equal(a.statusCode, 200);
    assert.equal(a.data.openid, openid);
  }
});

test('two clients of one runtime and gateway app (one per scene) share one login', async () => {
  const rt = fakeRuntime({ player: 'scenes' });
  const scenes = [createClient({ baseURL: gw.demoURL, runtime: rt }), createClient({ baseURL: gw.demoURL + '/', runtime: rt })];
  const answers = await Promise.all(Array.from({ length: 10 }, (_, i) => scenes[i % 2].request({ url: '/game/state' })));
  assert.ok(answers.every((a) => a.statusCode === 200));
  assert.equal(rt.logins, 1, 'wx.login calls');
  assert.equal(loginRequests(rt).length, 1, 'login requests');
});

test('a token is stored, reused by a new client with no login, and logout clears it', async () => {
  const storage = new Map();
  const first = fakeRuntime({ player: 'stored', storage });
  const login = await createClient({ baseURL: gw.demoURL, runtime: first }).login();
  assert.equal(login.data.openid !== '', true);
  assert.equal(storage.get(storageKey(gw.demoURL)).token, login.token, 'stored under a key naming the gateway');

  const second = fakeRuntime({ player: 'stored', storage });
  const client = createClient({ baseURL: gw.demoURL, runtime: second });
  const answer = await client.request({ url: '/game/state' });
  assert.equal(answer.data.openid, login.data.openid);
  assert.equal(second.logins, 0, 'the new client did not log in');
  assert.equal(second.requests[0].header.Authorization, 'Bearer ' + login.token);

  client.logout();
  assert.equal(storage.size, 0, 'logout removed the stored token');
  const third = fakeRuntime({ player: 'stored', storage });
  await createClient({ baseURL: gw.demoURL, runtime: third }).request({ url: '/game/state' });
  assert.equal(third.logins, 1, 'after logout a new client logs in');
});

test('logout while a login is in flight: that login\'s token is not stored', async () => {
  const rt = fakeRuntime({ player: 'switching' });
  const client = createClient({ baseURL: gw.demoURL, runtime: rt });
  const answer = client.request({ url: '/game/state' });
  client.logout();
  assert.equal((await answer).statusCode, 200, 'the call in flight still completes');
  assert.equal(rt.storage.size, 0, 'nothing stored after logout');
  await client.request({ url: '/game/state' });
  assert.equal(rt.logins, 2, 'the next call logs in again');
});

test('a stored token past its exp makes one login before the request; the stale token is never sent to the game', async () => {
  const now = Math.floor(Date.now() / 1000);
  // The token the demo gateway issued two hours ago (ttl 2h).
  const stale = signToken({ sub: 'o-expired', appid: app.appid, iat: now - 4 * 3600, exp: now - 2 * 3600 }, demoSessionSecret());
  const storage = new Map([[storageKey(gw.demoURL), { token: stale, expiresAt: (now - 2 * 3600) * 1000 }]]);
  const rt = fakeRuntime({ player: 'expired', storage });
  const answer = await createClient({ baseURL: gw.demoURL, runtime: rt }).request({ url: '/game/state' });
  assert.equal(answer.statusCode, 200);
  assert.ok(answer.data.openid);
  assert.equal(rt.logins, 1);
  assert.equal(rt.requests.length, 2, 'one login, one request: no 401 round trip');
  assert.equal(rt.requests[0].header.Authorization, 'Bearer ' + stale, 'the login carries the old token (charged to the player before WeChat)');
  assert.notEqual(rt.requests[1].header.Authorization, 'Bearer ' + stale);
});

test('a token within refreshMarginMs of its exp is renewed first; one further out is used', async () => {
  let clock = Date.now();
  const rt = fakeRuntime({ player: 'margin' });
  const client = createClient({ baseURL: gw.demoURL, runtime: rt, now: () => clock, refreshMarginMs: 60000 });
  const { expiresAt } = await client.login();
  assert.ok(expiresAt > clock, 'expiry read from the token');

  clock = expiresAt - 61000;
  await client.request({ url: '/game/state' });
  assert.equal(rt.logins, 1, 'outside the margin: no login');

  clock = expiresAt - 59000;
  await client.request({ url: '/game/state' });
  assert.equal(rt.logins, 2, 'inside the margin: one new login');
});

test('a device clock set hours ahead: the token still serves its lifetime, with no login before each request', async () => {
  const ahead = 5 * 3600 * 1000; // past the demo's ttl of 2h
  const rt = fakeRuntime({ player: 'clock-ahead' });
  const client = createClient({ baseURL: gw.demoURL, runtime: rt, now: () => Date.now() + ahead });
  for (let i = 0; i < 5; i++) await client.request({ url: '/game/state' });
  assert.equal(rt.logins, 1);
  const { expiresAt } = rt.storage.get(storageKey(gw.demoURL));
  assert.ok(Math.abs(expiresAt - (Date.now() + ahead + 2 * 3600 * 1000)) < 60000, 'two hours on the device\'s clock');
});

test('a token the gateway refuses (401 invalid_session) gets one new login and one retry', async () => {
  const now = Math.floor(Date.now() / 1000);
  // Signed with a key the gateway no longer has, as after a rotation.
  const rotated = signToken({ sub: 'o-rotated', appid: app.appid, iat: now, exp: now + 3600 }, 'a-key-rotated-out-long-ago-0123456789abcdef');
  const storage = new Map([[storageKey(gw.demoURL), { token: rotated, expiresAt: (now + 3600) * 1000 }]]);
  const rt = fakeRuntime({ player: 'rotated', storage });
  const answer = await createClient({ baseURL: gw.demoURL, runtime: rt }).request({ url: '/game/state' });
  assert.equal(answer.statusCode, 200);
  assert.equal(rt.logins, 1);
  assert.deepEqual(rt.requests.map((r) => [new URL(r.url).pathname, r.status]), [
    ['/game/state', 401], ['/wx/login', 200], ['/game/state', 200]
  ]);
  assert.equal(rt.requests[1].header.Authorization, 'Bearer ' + rotated, 'the login presents the refused token');
});

test('20 concurrent requests whose token the gateway refuses make one new login, and each retries once', async () => {
  const now = Math.floor(Date.now() / 1000);
  const rotated = signToken({ sub: 'o-rotated', appid: app.appid, iat: now, exp: now + 3600 }, 'a-key-rotated-out-long-ago-0123456789abcdef');
  const storage = new Map([[storageKey(gw.demoURL), { token: rotated, expiresAt: (now + 3600) * 1000 }]]);
  // Half of the refusals arrive only once the new login is done: they must
  // not drop its token and log in again.
  let loginDelivered;
  const afterLogin = new Promise((resolve) => { loginDelivered = resolve; });
  let refusals = 0;
  const hold = (seen) => {
    if (new URL(seen.url).pathname === '/wx/login') setTimeout(loginDelivered, 0);
    else if (seen.status === 401 && ++refusals > 10) return afterLogin;
    return undefined;
  };
  const rt = fakeRuntime({ player: 'rotated-many', storage, hold });
  const client = createClient({ baseURL: gw.demoURL, runtime: rt });
  const answers = await Promise.all(Array.from({ length: 20 }, () => client.request({ url: '/game/state' })));
  assert.ok(answers.every((a) => a.statusCode === 200 && a.data.openid === answers[0].data.openid));
  assert.equal(rt.logins, 1, 'wx.login calls');
  assert.equal(loginRequests(rt).length, 1, 'login requests');
  assert.equal(rt.requests.length, 41, '20 refused, one login, 20 retried');
});

test('a blocked player gets user_blocked, with no second login', async () => {
  const rt = fakeRuntime({ player: 'blocked' });
  const err = await createClient({ baseURL: gw.demoURL, runtime: rt }).request({ url: '/game/state' }).then(
    () => assert.fail('the request succeeded'), (e) => e);
  assert.ok(err instanceof GatewayError);
  assert.equal(err.code, 'user_blocked');
  assert.equal(err.status, 403);
  assert.equal(err.errcode, 40226);
  assert.equal(rt.logins, 1);
  assert.equal(rt.requests.length, 1, 'the game request was never sent');
});

test('a code already spent (401 code_used): the login asks the runtime for a new code', async () => {
  await spendCode(gw.wechatURL, 'spent.1');
  const rt = fakeRuntime({ player: 'spent' });
  const { data } = await createClient({ baseURL: gw.demoURL, runtime: rt }).login();
  assert.ok(data.openid);
  assert.equal(rt.logins, 2);
  assert.deepEqual(rt.requests.map((r) => [new URL(r.url).searchParams.get('code'), r.status]), [['spent.1', 401], ['spent.2', 200]]);
});

test('a failed login leaves no login in flight: the next call logs in afresh', async () => {
  await spendCode(gw.wechatURL, 'relogin.1');
  const rt = fakeRuntime({ player: 'relogin' });
  const client = createClient({ baseURL: gw.demoURL, runtime: rt, maxLoginAttempts: 1 });
  await assert.rejects(client.login(), (e) => e.code === 'code_used');
  const answer = await client.request({ url: '/game/state' });
  assert.equal(answer.statusCode, 200);
  assert.equal(rt.logins, 2);
});

test('WeChat busy (503): each attempt waits Retry-After and takes a new code, up to maxLoginAttempts', async () => {
  const rt = fakeRuntime({ player: 'busy' });
  const sleep = recordingSleep(rt);
  const err = await createClient({ baseURL: gw.demoURL, runtime: rt, sleep, maxLoginAttempts: 3 }).login().then(
    () => assert.fail('the login succeeded'), (e) => e);
  assert.equal(err.code, 'wechat_unavailable');
  assert.equal(err.status, 503);
  const retryAfter = Number(rt.requests[0].responseHeader['retry-after']);
  assert.ok(retryAfter >= 1);
  assert.equal(err.retryAfter, retryAfter);
  assert.deepEqual(rt.requests.map((r) => new URL(r.url).searchParams.get('code')), ['busy.1', 'busy.2', 'busy.3']);
  assert.deepEqual(sleep.waits, [{ ms: retryAfter * 1000, afterRequests: 1 }, { ms: retryAfter * 1000, afterRequests: 2 }]);
});

test('WeChat timed out (504): each attempt takes a new code, up to maxLoginAttempts, with no wait', async () => {
  const rt = fakeRuntime({ player: 'slow' });
  const sleep = recordingSleep(rt);
  const err = await createClient({ baseURL: gw.respondURL, loginPath: '/timeout/login', runtime: rt, sleep, maxLoginAttempts: 3 })
    .login().then(() => assert.fail('the login succeeded'), (e) => e);
  assert.equal(err.code, 'wechat_timeout');
  assert.equal(err.status, 504);
  assert.deepEqual(rt.requests.map((r) => new URL(r.url).searchParams.get('code')), ['slow.1', 'slow.2', 'slow.3']);
  assert.deepEqual(sleep.waits, []);
});

test('options given as undefined take their defaults: a busy WeChat still ends after maxLoginAttempts\' 3 codes', { timeout: 20000 }, async () => {
  const rt = fakeRuntime({ player: 'busy.defaults' }) // codes busy.defaults.1…: the simulator's busy player;
  const sleep = recordingSleep(rt);
  const err = await createClient({ baseURL: gw.demoURL, runtime: rt, sleep, maxLoginAttempts: undefined, maxRetryWaitMs: undefined })
    .login().then(() => assert.fail('the login succeeded'), (e) => e);
  assert.equal(err.code, 'wechat_unavailable');
  assert.equal(rt.logins, 3);
});

test('a bound or login path that cannot work is refused at createClient', () => {
  const rt = fakeRuntime({ player: 'options' });
  for (const bad of [{ maxRetryWaitMs: '5000' }, { maxRetryWaitMs: NaN }, { maxLoginAttempts: -1 }, { refreshMarginMs: Infinity }]) {
    assert.throws(() => createClient(Object.assign({ baseURL: gw.demoURL, runtime: rt }, bad)), /must be a number of 0 or more/, JSON.stringify(bad));
  }
  assert.throws(() => createClient({ baseURL: gw.demoURL, runtime: rt, loginPath: 'wx/login' }), /loginPath must be a path/);
});

test('a 429 waits its Retry-After, then the same code logs in (respond mode)', async () => {
  // The test gateway's budget is one exchange per player in any 5s (room
  // for a loaded machine): a second client of the player, with no token to
  // show, is refused after its exchange, whose result the gateway keeps for
  // the retry.
  await createClient({ baseURL: gw.respondURL, loginPath: '/tt/login', runtime: fakeRuntime({ player: 'limited' }) }).login();
  const rt = fakeRuntime({ player: 'limited' });
  const sleep = recordingSleep(rt, { real: true });
  const client = createClient({ baseURL: gw.respondURL, loginPath: '/tt/login', runtime: rt, sleep, maxRetryWaitMs: 10000 });
  const login = await client.login();
  assert.ok(login.token);
  assert.deepEqual(rt.requests.map((r) => r.status), [429, 200]);
  const retryAfter = Number(rt.requests[0].responseHeader['retry-after']);
  assert.ok(retryAfter >= 1);
  assert.deepEqual(sleep.waits, [{ ms: retryAfter * 1000, afterRequests: 1 }], 'waited Retry-After between the two');
  assert.equal(rt.logins, 1, 'the same code was sent again');
});

test('a busy game server (503 Retry-After 1): the request waits and retries while its waits stay within maxRetryWaitMs', async () => {
  const rt = fakeRuntime({ player: 'busy-server' });
  const sleep = recordingSleep(rt);
  const err = await createClient({ baseURL: gw.respondURL, loginPath: '/tt/login', runtime: rt, sleep, maxRetryWaitMs: 2500 })
    .request({ url: '/busy' }).then(() => assert.fail('the request succeeded'), (e) => e);
  assert.equal(err.code, 'busy', 'the backend\'s own error code');
  assert.equal(err.status, 503);
  assert.deepEqual(rt.requests.map((r) => [new URL(r.url).pathname, r.status]), [['/tt/login', 200], ['/busy', 503], ['/busy', 503], ['/busy', 503]]);
  assert.deepEqual(sleep.waits, [{ ms: 1000, afterRequests: 2 }, { ms: 1000, afterRequests: 3 }]);
});

test('Retry-After 0 (or a date past) still waits a second a retry, so maxRetryWaitMs ends the retries', { timeout: 20000 }, async () => {
  const rt = fakeRuntime({ player: 'busy-now' });
  const sleep = recordingSleep(rt);
  const err = await createClient({ baseURL: gw.respondURL, loginPath: '/tt/login', runtime: rt, sleep, maxRetryWaitMs: 2500 })
    .request({ url: '/busy-now' }).then(() => assert.fail('the request succeeded'), (e) => e);
  assert.equal(err.status, 503);
  assert.equal(err.retryAfter, 0);
  assert.deepEqual(sleep.waits.map((w) => w.ms), [1000, 1000]);
  assert.equal(rt.requests.length, 4, 'one login, three tries');
});

test('a Retry-After beyond maxRetryWaitMs rejects at once with rate_limited and retryAfter', async () => {
  await createClient({ baseURL: gw.respondURL, loginPath: '/tt/login', runtime: fakeRuntime({ player: 'impatient' }) }).login();
  const rt = fakeRuntime({ player: 'impatient' });
  const sleep = recordingSleep(rt);
  const err = await createClient({ baseURL: gw.respondURL, loginPath: '/tt/login', runtime: rt, sleep, maxRetryWaitMs: 500 })
    .request({ url: '/game/state' }).then(() => assert.fail('the request succeeded'), (e) => e);
  assert.equal(err.code, 'rate_limited');
  assert.equal(err.status, 429);
  assert.equal(err.retryAfter, Number(rt.requests[0].responseHeader['retry-after']));
  assert.deepEqual(sleep.waits, []);
  assert.equal(rt.requests.length, 1);
});

test('respond mode: login() gives the gateway answer; the token and expires_at are kept and used', async () => {
  const rt = fakeRuntime({ player: 'responded' });
  const client = createClient({ baseURL: gw.respondURL, loginPath: '/tt/login', runtime: rt });
  const login = await client.login();
  assert.equal(login.token, login.data.token);
  assert.ok(Math.abs(login.expiresAt - Date.parse(login.data.expires_at)) < 60000, 'expires_at, on a clock that is right');
  assert.deepEqual(rt.storage.get(storageKey(gw.respondURL, '/tt/login')), { token: login.token, expiresAt: login.expiresAt });
  const answer = await client.request({ url: '/game/state' });
  assert.equal(answer.data.openid, login.data.openid);
  assert.equal(rt.logins, 1);
});

test('runtime tt by name: a Douyin login at /tt/login, tt.login\'s code and anonymousCode sent as code and anonymous_code', async (t) => {
  const rt = fakeRuntime({ player: 'douyin', anonymousCode: 'anon-douyin' });
  globalThis.tt = rt;
  t.after(() => { delete globalThis.tt; });
  const answer = await createClient({ baseURL: gw.demoURL, runtime: 'tt' }).request({ url: '/game/state' });
  assert.equal(answer.statusCode, 200);
  assert.equal(answer.data.platform, 'douyin');
  const logins = loginRequests(rt, '/tt/login');
  assert.equal(logins.length, 1, 'logins at /tt/login');
  const query = new URL(logins[0].url).searchParams;
  assert.equal(query.get('code'), 'douyin.1');
  assert.equal(query.get('anonymous_code'), 'anon-douyin');
});

test('runtime: wx by default, qq by name, an absent global or unknown name refused', (t) => {
  assert.throws(() => createClient({ baseURL: gw.demoURL }), /no global `wx`/);
  assert.throws(() => createClient({ baseURL: gw.demoURL, runtime: 'swan' }), /runtime must be wx, tt, qq/);
  globalThis.qq = fakeRuntime({ player: 'qq' });
  t.after(() => { delete globalThis.qq; });
  assert.doesNotThrow(() => createClient({ baseURL: gw.demoURL, runtime: 'qq' }));
});

test('the token goes to baseURL only', async () => {
  const client = createClient({ baseURL: gw.demoURL, runtime: fakeRuntime({ player: 'origin' }) });
  await assert.rejects(client.request({ url: 'https://elsewhere.example/steal' }), /url must be a path, or start with/);
});

test('request refuses wx.request\'s callbacks, which it would never call as the game expects', async () => {
  const rt = fakeRuntime({ player: 'callbacks' });
  const client = createClient({ baseURL: gw.demoURL, runtime: rt });
  for (const name of ['success', 'fail', 'complete']) {
    await assert.rejects(client.request({ url: '/game/state', [name]: () => {} }), new RegExp(name + ' is not used; the answer is the promise'));
  }
  assert.equal(rt.requests.length, 0);
});

test('index.js stays ES2017 with no Node API (mini-game runtimes load it as is)', () => {
  const source = fs.readFileSync(path.join(__dirname, 'index.js'), 'utf8').replace(/\/\/.*$/gm, '');
  for (const [pattern, what] of [[/\?\./, 'optional chaining'], [/\?\?/, 'nullish coalescing'], [/\.\.\./, 'spread or rest'],
    [/\.finally\(/, 'Promise.prototype.finally'], [/catch\s*\{/, 'optional catch binding'], [/\brequire\(/, 'require'],
    [/\bprocess\./, 'process'], [/\bBuffer\b/, 'Buffer'], [/\batob\(/, 'atob'], [/async\s+function\s*\*/, 'async generator'],
    [/for\s+await/, 'for await']]) {
    assert.doesNotMatch(source, pattern, what);
  }
});
