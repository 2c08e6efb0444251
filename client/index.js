'use strict';
// The mini-game side of caddy-wechat-login: logs in through the gateway, keeps
// the session token, sends it on every request, and retries as the gateway's
// README advises. ES2017, no dependencies, no Node APIs: it runs as is in
// WeChat's, QQ's and Douyin's mini-game runtimes.

var DEFAULTS = {
  codeField: 'code',
  maxRetryWaitMs: 5000,
  maxLoginAttempts: 3,
  refreshMarginMs: 60000
};

// GatewayError is how every failure reaches the game: code is the gateway's
// refusal code (rate_limited, user_blocked, invalid_session…), or the
// backend's own "error" field, or one of this module's: network_error,
// login_failed, no_session, http_error.
class GatewayError extends Error {
  constructor(code, message, fields) {
    super(message);
    this.name = 'GatewayError';
    this.code = code;
    this.status = 0;
    Object.assign(this, fields);
  }
}

// resolveRuntime takes the runtime object itself, or the name of its global.
// typeof on each name keeps an absent global from throwing.
function resolveRuntime(runtime) {
  if (runtime && typeof runtime === 'object') return runtime;
  var globals = {
    wx: typeof wx !== 'undefined' ? wx : undefined,
    tt: typeof tt !== 'undefined' ? tt : undefined,
    qq: typeof qq !== 'undefined' ? qq : undefined
  };
  var name = runtime || 'wx';
  if (!Object.prototype.hasOwnProperty.call(globals, name)) {
    throw new TypeError('runtime must be wx, tt, qq or the runtime object, got ' + String(runtime));
  }
  if (!globals[name]) throw new TypeError('runtime ' + name + ': no global `' + name + '` here');
  return globals[name];
}

function headerValue(headers, name) {
  if (!headers) return undefined;
  var wanted = name.toLowerCase();
  var keys = Object.keys(headers);
  for (var i = 0; i < keys.length; i++) {
    if (keys[i].toLowerCase() === wanted) return String(headers[keys[i]]);
  }
  return undefined;
}

function jsonBody(data) {
  if (typeof data !== 'string') return data;
  try {
    return JSON.parse(data);
  } catch (e) {
    return undefined;
  }
}

// retryAfterMs reads Retry-After (seconds, or an HTTP date) in milliseconds.
function retryAfterMs(value, now) {
  if (value === undefined) return undefined;
  if (/^\s*\d+\s*$/.test(value)) return parseInt(value, 10) * 1000;
  var at = Date.parse(value);
  return isNaN(at) ? undefined : Math.max(0, at - now);
}

function errorFromResponse(res, now) {
  var body = jsonBody(res.data);
  var ok = body && typeof body === 'object';
  var code = ok && typeof body.error === 'string' ? body.error : 'http_error';
  var message = ok && typeof body.message === 'string' ? body.message : 'HTTP ' + res.statusCode;
  var wait = retryAfterMs(headerValue(res.header, 'Retry-After'), now);
  return new GatewayError(code, message, {
    status: res.statusCode,
    errcode: ok && typeof body.errcode === 'number' ? body.errcode : undefined,
    retryAfter: wait === undefined ? undefined : Math.ceil(wait / 1000),
    data: res.data
  });
}

var BASE64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

// jwtClaims are a JWT's claims, read without verification (the gateway
// verifies; the client only wants to know when to log in again).
function jwtClaims(token) {
  var part = String(token).split('.')[1];
  if (!part) return undefined;
  var bytes = '';
  var bits = 0;
  var value = 0;
  for (var i = 0; i < part.length; i++) {
    var digit = BASE64URL.indexOf(part.charAt(i));
    if (digit < 0) return undefined;
    value = (value << 6) | digit;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      bytes += '%' + ('0' + ((value >> bits) & 0xff).toString(16)).slice(-2);
    }
  }
  try {
    var claims = JSON.parse(decodeURIComponent(bytes));
    return claims && typeof claims === 'object' ? claims : undefined;
  } catch (e) {
    return undefined;
  }
}

// SESSION_HEADERS are where the gateway puts a login's token, one per
// platform's header family (X-TT-SESSION on a Douyin login).
var SESSION_HEADERS = ['X-WX-SESSION', 'X-TT-SESSION', 'X-QQ-SESSION', 'X-TAP-SESSION', 'X-BILI-SESSION'];

// sessionFrom reads a successful login's token: the session header of a
// login answered by the upstream, or the body of one answered by the gateway
// itself (respond mode). Its expiry is the token's lifetime (exp - iat)
// counted on this device's clock from receivedAt: a device clock set hours
// ahead, as players do to skip a game's timers, would otherwise find every
// token expired and log in before every request. Without iat, the server's
// expires_at or exp is all there is.
function sessionFrom(res, receivedAt) {
  var body = jsonBody(res.data);
  var token;
  for (var i = 0; i < SESSION_HEADERS.length && !token; i++) token = headerValue(res.header, SESSION_HEADERS[i]);
  var expiresAt;
  if (!token && body && typeof body.token === 'string') {
    token = body.token;
    expiresAt = typeof body.expires_at === 'string' ? Date.parse(body.expires_at) : undefined;
  }
  if (!token) return null;
  var claims = jwtClaims(token) || {};
  var hasExp = typeof claims.exp === 'number';
  if (hasExp && typeof claims.iat === 'number') expiresAt = receivedAt + (claims.exp - claims.iat) * 1000;
  else if (expiresAt === undefined || isNaN(expiresAt)) expiresAt = hasExp ? claims.exp * 1000 : undefined;
  return { token: token, expiresAt: expiresAt };
}

function defaultSleep(ms) {
  return new Promise(function (resolve) {
    setTimeout(resolve, ms);
  });
}

// clientOptions is options over DEFAULTS, checked. An option given as
// undefined (a game's config without the field) takes its default: a bound
// that compared as undefined would never stop a retry.
function clientOptions(options) {
  var opts = Object.assign({}, DEFAULTS);
  Object.keys(options || {}).forEach(function (name) {
    if (options[name] !== undefined) opts[name] = options[name];
  });
  if (typeof opts.baseURL !== 'string' || !/^https?:\/\//.test(opts.baseURL)) {
    throw new TypeError('baseURL must be an http(s) URL, such as https://game.example.com');
  }
  if (opts.loginPath === undefined) opts.loginPath = defaultLoginPath(opts.runtime);
  if (typeof opts.loginPath !== 'string' || opts.loginPath.charAt(0) !== '/') {
    throw new TypeError('loginPath must be a path, such as /wx/login');
  }
  ['maxRetryWaitMs', 'maxLoginAttempts', 'refreshMarginMs'].forEach(function (name) {
    if (typeof opts[name] !== 'number' || !(opts[name] >= 0) || opts[name] === Infinity) {
      throw new TypeError(name + ' must be a number of 0 or more, got ' + String(opts[name]));
    }
  });
  return opts;
}

// defaultLoginPath is the gateway's default login_path for the platform
// whose runtime is named (/wx/login, /tt/login, /qq/login); a runtime given
// as an object is taken for WeChat's.
function defaultLoginPath(runtime) {
  return { tt: '/tt/login', qq: '/qq/login' }[runtime] || '/wx/login';
}

// playerStates holds, per runtime object and storage key, what every client
// of one gateway app shares: the session, the login in flight, and a count
// of logouts (a login that outlives one does not store its token). A game
// that creates a client in each of its scenes still runs one login at a time.
var playerStates = new WeakMap();

function playerState(rt, storageKey, load) {
  var byKey = playerStates.get(rt);
  if (!byKey) {
    byKey = {};
    playerStates.set(rt, byKey);
  }
  if (!byKey[storageKey]) byKey[storageKey] = { session: load(), loginInFlight: null, logouts: 0 };
  return byKey[storageKey];
}

function createClient(options) {
  var opts = clientOptions(options);
  var baseURL = opts.baseURL.replace(/\/+$/, '');
  var rt = resolveRuntime(opts.runtime);
  var now = opts.now || Date.now;
  var sleep = opts.sleep || defaultSleep;
  var storageKey = 'wechat_login:' + baseURL + opts.loginPath;
  var state = playerState(rt, storageKey, load);

  function load() {
    try {
      var stored = rt.getStorageSync(storageKey);
      return stored && typeof stored.token === 'string' ? stored : null;
    } catch (e) {
      return null; // unreadable storage: log in again
    }
  }

  function save(s) {
    state.session = s;
    try {
      if (s) rt.setStorageSync(storageKey, s);
      else rt.removeStorageSync(storageKey);
    } catch (e) {
      // Storage full or unavailable: the token still serves this run.
    }
  }

  // send is the runtime's request as a promise; any HTTP answer resolves.
  function send(request) {
    return new Promise(function (resolve, reject) {
      rt.request(Object.assign({}, request, {
        success: resolve,
        fail: function (err) {
          var message = (err && err.errMsg) || 'request failed';
          reject(new GatewayError('network_error', message, { cause: err }));
        }
      }));
    });
  }

  function platformLogin() {
    return new Promise(function (resolve, reject) {
      rt.login({
        success: resolve,
        fail: function (err) {
          var message = (err && err.errMsg) || 'login failed';
          reject(new GatewayError('login_failed', message, { cause: err }));
        }
      });
    });
  }

  // loginURL carries the code, and Douyin's anonymous code when there is one.
  function loginURL(answer) {
    var query = [];
    if (answer.code) query.push(encodeURIComponent(opts.codeField) + '=' + encodeURIComponent(answer.code));
    if (answer.anonymousCode) query.push('anonymous_code=' + encodeURIComponent(answer.anonymousCode));
    return baseURL + opts.loginPath + '?' + query.join('&');
  }

  // waiter bounds one call's waits on Retry-After to maxRetryWaitMs in all.
  // Each retry waits at least a second: a Retry-After of 0, or of a date
  // already past, would otherwise retry at once and without end.
  function waiter() {
    var waited = 0;
    return function (err) {
      if (err.retryAfter === undefined) return null;
      var ms = Math.max(1000, err.retryAfter * 1000);
      if (waited + ms > opts.maxRetryWaitMs) return null;
      waited += ms;
      return sleep(ms);
    };
  }

  function isRetryable(err) {
    return err.status === 429 || err.status === 503;
  }

  async function exchange() {
    var wait = waiter();
    var answer = null;
    var logoutsBefore = state.logouts;
    for (var attempt = 1; ; ) {
      if (!answer) answer = await platformLogin();
      var header = {};
      // A login that carries the player's token, even an expired one, is
      // charged to the player before any WeChat call.
      if (state.session) header.Authorization = 'Bearer ' + state.session.token;
      var res = await send({ url: loginURL(answer), method: 'GET', header: header });
      if (res.statusCode >= 200 && res.statusCode < 300) {
        var fresh = sessionFrom(res, now());
        if (!fresh) throw new GatewayError('no_session', 'the login answer carries no session token', { status: res.statusCode, data: res.data });
        if (state.logouts === logoutsBefore) save(fresh);
        return { token: fresh.token, expiresAt: fresh.expiresAt, data: res.data };
      }
      var err = errorFromResponse(res, now());
      // A code is single use, and after a 401, 503 or 504 WeChat may have
      // spent it: the next attempt needs a new one. After a 429 the gateway
      // keeps the exchange's result for the same code.
      var needsCode = err.status === 401 || err.status === 503 || err.status === 504;
      if (!needsCode && err.status !== 429) throw err;
      if (needsCode) {
        if (attempt >= opts.maxLoginAttempts) throw err;
        attempt++;
        answer = null;
      }
      if (isRetryable(err)) {
        var pause = wait(err);
        if (!pause) throw err;
        await pause;
      }
    }
  }

  // login runs one exchange at a time: every caller while one is in flight
  // shares it, so a player never has two codes in flight.
  function login() {
    if (!state.loginInFlight) {
      var done = function () {
        state.loginInFlight = null;
      };
      state.loginInFlight = exchange();
      state.loginInFlight.then(done, done);
    }
    return state.loginInFlight;
  }

  function currentToken() {
    if (state.session && (state.session.expiresAt === undefined || state.session.expiresAt - opts.refreshMarginMs > now())) {
      return Promise.resolve(state.session.token);
    }
    return login().then(function (s) {
      return s.token;
    });
  }

  function requestURL(url) {
    if (typeof url !== 'string') throw new TypeError('request: url must be a string');
    if (url.charAt(0) === '/') return baseURL + url;
    // The token goes to the gateway only, never to another origin.
    if (url === baseURL || url.indexOf(baseURL + '/') === 0) return url;
    throw new TypeError('request: url must be a path, or start with ' + baseURL);
  }

  async function request(options) {
    var url = requestURL(options && options.url);
    // The runtime would call them once per attempt, with refusals the client
    // itself handles; the promise is the one answer.
    ['success', 'fail', 'complete'].forEach(function (name) {
      if (options[name] !== undefined) throw new TypeError('request: ' + name + ' is not used; the answer is the promise');
    });
    var wait = waiter();
    var renewed = false;
    for (;;) {
      var token = await currentToken();
      var header = Object.assign({}, options.header, { Authorization: 'Bearer ' + token });
      var res = await send(Object.assign({}, options, { url: url, header: header }));
      if (res.statusCode < 400) return res;
      var err = errorFromResponse(res, now());
      if (err.status === 401 && err.code === 'invalid_session' && !renewed) {
        renewed = true;
        // Only the token this request sent is given up: another request may
        // already have logged in again. It is kept, expired, for the login
        // to present (the gateway charges the player before WeChat).
        if (state.session && state.session.token === token) save({ token: token, expiresAt: 0 });
        continue;
      }
      var pause = isRetryable(err) && wait(err);
      if (!pause) throw err;
      await pause;
    }
  }

  function logout() {
    state.logouts++;
    save(null);
  }

  return { request: request, login: login, logout: logout };
}

module.exports = { createClient: createClient, GatewayError: GatewayError };
