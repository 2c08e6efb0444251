'use strict';
// fakeRuntime is a mini-game runtime (wx, tt or qq) for Node: login answers
// simulator codes for one player (<player>.1, <player>.2, …), request is real
// HTTP, storage is a Map that a test may share between clients. It records
// every login and request, and what each request was answered. hold(seen),
// when given, may return a promise that delays an answer's delivery, as a
// slow network would.
function fakeRuntime({ player, storage = new Map(), anonymousCode, hold = () => undefined } = {}) {
  const rt = {
    storage,
    logins: 0,
    requests: [], // { url, header, status, responseHeader }
    login({ success }) {
      rt.logins++;
      const answer = { code: `${player}.${rt.logins}`, errMsg: 'login:ok' };
      if (anonymousCode) Object.assign(answer, { anonymousCode, isLogin: true });
      setImmediate(() => success(answer));
    },
    request({ url, method = 'GET', header = {}, data, success, fail }) {
      const seen = { url, header };
      rt.requests.push(seen);
      const body = data === undefined || method === 'GET' ? undefined : JSON.stringify(data);
      fetch(url, { method, headers: header, body }).then(async (res) => {
        const text = await res.text();
        let parsed = text;
        try { parsed = JSON.parse(text); } catch (e) { /* wx.request leaves a non-JSON body a string */ }
        seen.status = res.status;
        seen.responseHeader = Object.fromEntries(res.headers);
        await hold(seen);
        success({ statusCode: res.status, header: seen.responseHeader, data: parsed, errMsg: 'request:ok' });
      }, (err) => fail({ errMsg: 'request:fail ' + err.message }));
    },
    getStorageSync(key) {
      return storage.has(key) ? structuredClone(storage.get(key)) : '';
    },
    setStorageSync(key, value) {
      storage.set(key, structuredClone(value));
    },
    removeStorageSync(key) {
      storage.delete(key);
    }
  };
  return rt;
}

// loginRequests are the requests a runtime sent to a login path.
function loginRequests(rt, loginPath = '/wx/login') {
  return rt.requests.filter((r) => new URL(r.url).pathname === loginPath);
}

// recordingSleep is a client's sleep that notes each wait and how many
// requests rt had sent by then; it really waits only when told to (a test
// that needs the gateway's window to pass).
function recordingSleep(rt, { real = false } = {}) {
  const waits = [];
  const sleep = (ms) => {
    waits.push({ ms, afterRequests: rt.requests.length });
    return new Promise((resolve) => setTimeout(resolve, real ? ms : 0));
  };
  sleep.waits = waits;
  return sleep;
}

module.exports = { fakeRuntime, loginRequests, recordingSleep };
